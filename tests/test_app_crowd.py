"""The running app under a crowd of careless or hostile visitors: disk caps that cannot be raced, no visitor blocking
another, one download per export whatever the route or range, every value checked with a one-line message, nothing
left behind by a stalled upload, a session's end or a stop, and the newest release always winning."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file

from app_disk import EXPORTS_FOLDER
from app_limits import CrowdLimits
from conftest import UPLOAD_LIMIT, free_port, served
from merging.service import LabConfig, Service

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from soak_app import Page, upload  # noqa: E402  (raw events as the page sends them, an upload from an address)

SPEECH_CLIP = ROOT / "assets" / "audio" / "examples" / "speech_yes_en-us-m1.ogg"
DISK_CAP = 24 * 2**20  # half for exports, half (12 MB) for uploads and Gradio's copies
CLIP_BYTES = int(0.95 * UPLOAD_LIMIT)


def small_service(lab_models: Path, **config) -> Service:
    return Service.start(LabConfig(models_dir=lab_models, calibration_limit=16, fit_iterations=5,
                                   max_upload_bytes=UPLOAD_LIMIT, **config), budget_seconds=0.25)


@pytest.fixture(scope="module")
def disk_server(lab_models):
    """A server whose uploads may take 12 MB; an upload stalled for 1 s is cut off; a session is over 0.3 s after
    its page went. Yields (url, service)."""
    service = small_service(lab_models, max_disk_bytes=DISK_CAP)
    with served(service, limits=CrowdLimits(session_grace_seconds=0.3, stall_seconds=1.0)) as url:
        yield url, service


@pytest.fixture(scope="module")
def export_server(lab_models):
    service = small_service(lab_models)
    with served(service, limits=CrowdLimits()) as url:
        yield url, service


def cache_of(service: Service) -> Path:
    """Gradio's file cache of the app serving `service` (its exports live in <cache>/merge-lab-exports/<root>)."""
    return service.lab.exports.root.parent.parent


def stored(cache: Path, name: str) -> list[Path]:
    """The files named `name` that Gradio stored from uploads (cache/<checksum>/<name>)."""
    return list(cache.glob(f"*/{name}"))


def temporary_with(cache: Path, *contents: bytes) -> list[Path]:
    """Temporary files of uploads in progress (cache/tmp…) that begin with one of `contents` (64 bytes or more)."""
    starts, found = {content[:64] for content in contents}, []
    for path in cache.glob("tmp*"):
        with contextlib.suppress(OSError), path.open("rb") as file:
            if file.read(64) in starts:
                found.append(path)
    return found


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # removed meanwhile
        return 0


def distinct_bytes(size: int) -> bytes:
    return os.urandom(size)


@contextlib.contextmanager
def page_open(url: str, session: str):
    """A page's heartbeat for `session` while the block runs (closing it is the page going away)."""
    stop, opened = threading.Event(), threading.Event()

    def hold():
        with httpx.stream("GET", f"{url}gradio_api/heartbeat/{session}", timeout=60) as stream:
            opened.set()
            for _ in stream.iter_lines():
                if stop.is_set():
                    return

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert opened.wait(30)
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)  # the stream closes at its next line (Gradio's heartbeat period)


# 1. the cap holds against parallel uploads


def test_parallel_uploads_never_take_more_than_the_cap(disk_server):
    url, service = disk_server
    cache, run = cache_of(service), uuid.uuid4().hex[:8]
    cap = DISK_CAP - service.lab.exports.max_bytes
    names = [f"race-{run}-{i}.bin" for i in range(20)]
    payloads = [distinct_bytes(CLIP_BYTES) for _ in names]
    peak, stop = [0], threading.Event()

    def watch():  # these uploads, stored or in progress (a temporary file that begins with one of them), sampled
        while not stop.is_set():
            files = [p for name in names for p in stored(cache, name)]
            files += temporary_with(cache, *payloads)
            peak[0] = max(peak[0], sum(size_of(p) for p in files))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(20) as pool:  # twenty visitors at once, 1.9 MB of distinct bytes each
        answers = list(pool.map(lambda i: upload(url, names[i], payloads[i], f"10.1.0.{i}"), range(20)))
    stop.set()
    watcher.join()
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 507} and 200 in codes, codes
    assert peak[0] <= cap, f"{peak[0] / 2**20:.1f} MB on disk against a cap of {cap / 2**20:.0f} MB ({codes})"
    assert all("\n" not in a.text and len(a.text) < 300 for a in answers if a.status_code == 507)


# 2. one visitor cannot lock out the others


def test_a_visitor_who_fills_the_space_only_evicts_their_own_uploads(disk_server):
    url, service = disk_server
    cache, run = cache_of(service), uuid.uuid4().hex[:8]
    names = [f"flood-{run}-{i}.bin" for i in range(11)]
    answers = [upload(url, name, distinct_bytes(CLIP_BYTES), "10.2.0.1") for name in names]
    assert [a.status_code for a in answers] == [200] * 11  # never blocked: their own oldest go
    kept = [name for name in names if stored(cache, name)]
    share = 0.25 * (DISK_CAP - service.lab.exports.max_bytes)
    assert 1 <= len(kept) <= share // CLIP_BYTES and kept[-1] == names[-1]
    client = Client(url, verbose=False)  # the README's /probe_clip example, from another address
    table, status = client.predict(handle_file(str(SPEECH_CLIP)), api_name="/probe_clip")
    assert table["data"] and SPEECH_CLIP.name in status


class SlowUpload:
    """An upload from `visitor` that sends its form's head and a first part, then a byte every 0.2 s (alive, never
    done) until the server answers or it is closed; `answer` is what the server said."""

    def __init__(self, url: str, visitor: str, size: int) -> None:
        host, port = url.split("//")[1].rstrip("/").split(":")
        head = (b'--XYZ\r\nContent-Disposition: form-data; name="files"; filename="slow.bin"\r\n'
                b"Content-Type: application/octet-stream\r\n\r\n")
        self.sock = socket.create_connection((host, int(port)))
        self.sock.sendall(b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: " + visitor.encode()
                          + b"\r\nContent-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: "
                          + str(size).encode() + b"\r\n\r\n" + head + os.urandom(64_000))
        self.sock.settimeout(0.2)
        self.answer, self.closed = b"", threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        while not self.closed.is_set() and not self.answer:
            with contextlib.suppress(TimeoutError, OSError):
                self.sock.sendall(os.urandom(1))
                self.answer = self.sock.recv(4096)
        with contextlib.suppress(TimeoutError, OSError):
            while chunk := self.sock.recv(4096):  # the rest of the answer
                self.answer += chunk

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        self.sock.close()


def test_uploads_in_progress_are_cut_off_for_a_visitor_holding_less(disk_server):
    url, service = disk_server
    cap = DISK_CAP - service.lab.exports.max_bytes
    crowd = [SlowUpload(url, f"10.3.0.{i}", (cap - 600_000) // 6) for i in range(6)]  # together: all but 0.6 MB
    try:
        time.sleep(1.5)  # longer than the stall time: they are alive
        assert not any(slow.answer for slow in crowd), [slow.answer for slow in crowd]
        newcomer = upload(url, f"newcomer-{uuid.uuid4().hex}.bin", distinct_bytes(2**20), "10.3.1.1")
        assert newcomer.status_code == 200, newcomer.text
        time.sleep(1.0)
        cut = [slow.answer for slow in crowd if slow.answer]
        assert len(cut) == 1 and cut[0].startswith(b"HTTP/1.1 507") and b"cut off" in cut[0], cut
    finally:
        for slow in crowd:
            slow.close()


# uploads go when their session ends, or when unused for an idle time


def test_a_sessions_uploads_and_export_go_when_it_ends(disk_server):
    url, service = disk_server
    cache, page, session = cache_of(service), Page(url), f"crowd-{uuid.uuid4().hex}"
    name = f"ends-{session}.ogg"
    with page_open(url, session):
        path = upload(url, name, SPEECH_CLIP.read_bytes()).json()[0]
        probed = page.call("probe_clip", session, clip={"path": path, "meta": {"_type": "gradio.FileData"}})
        merged = page.call("merge", session, method="linear")
        exported = page.call("export", session)
        assert probed["success"] and merged["success"] and exported["success"], (probed, merged, exported)
        export = Path(exported["output"]["data"][0]["path"])
        time.sleep(1.0)  # longer than the grace: the page is still open
        assert Path(path).exists() and export.exists()
    deadline = time.monotonic() + 10
    while (Path(path).exists() or export.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(path).exists() and not stored(cache, name) and not export.parent.exists()


def test_an_upload_nobody_uses_goes_after_the_idle_time(lab_models):
    with served(small_service(lab_models), limits=CrowdLimits(idle_seconds=1.0)) as url:
        path = Path(upload(url, f"idle-{uuid.uuid4().hex}.bin", distinct_bytes(1000)).json()[0])
        assert path.exists()
        deadline = time.monotonic() + 10
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not path.exists()


# 3. a session's waiting export is its own


def export_link(client: Client, alpha: float) -> str:
    client.predict(method="linear", alpha=alpha, api_name="/merge")
    return client.predict(api_name="/export")["path"]


def test_another_sessions_exports_never_remove_a_waiting_one(export_server):
    url, service = export_server
    owner = Client(url, verbose=False, download_files=False)  # a page still open, its export not fetched yet
    waiting = export_link(owner, 0.3)
    other = Client(url, verbose=False, download_files=False)
    for step in range(8):  # the eight exports of another session
        export_link(other, 0.1 + 0.05 * step)
    assert Path(waiting).is_file()
    crowd = [Client(url, verbose=False, download_files=False) for _ in range(7)]
    for index, client in enumerate(crowd[:6]):  # 8 exports wait, one per session
        export_link(client, 0.2 + 0.05 * index)
    with pytest.raises(Exception, match="downloads are waiting to be fetched") as refused:
        export_link(crowd[6], 0.6)
    assert "\n" not in str(refused.value).strip()
    whole = httpx.get(f"{url}gradio_api/file={waiting}")
    assert whole.status_code == 200 and zipfile.ZipFile(io.BytesIO(whole.content)).namelist()


# 5. one download means one, whatever the route or range


@pytest.mark.parametrize("route, headers", [
    ("file={path}", {"Range": "bytes=0-"}),
    ("file={path}", {"Range": "bytes=0-999999999"}),
    ("file={path}", {"Range": "bytes=0-99, 50-"}),
    ("file/{path}", {}),
])
def test_an_export_is_downloaded_once_whatever_the_route_or_range(export_server, route, headers):
    url, _ = export_server
    path = export_link(Client(url, verbose=False, download_files=False), 0.4)
    link = f"{url}gradio_api/" + route.format(path=path)
    assert httpx.head(f"{url}gradio_api/file={path}").status_code == 200 and Path(path).is_file()
    first = httpx.get(link, headers=headers)
    assert first.status_code in (200, 206) and zipfile.ZipFile(io.BytesIO(first.content)).namelist()
    deadline = time.monotonic() + 10
    while Path(path).parent.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(path).parent.exists()
    for again in (f"{url}gradio_api/file={path}", f"{url}gradio_api/file/{path}"):
        second = httpx.get(again, headers=headers)
        assert second.status_code == 410 and "one download per build" in second.json()["detail"]


def test_a_range_short_of_the_end_leaves_the_export_for_the_rest(export_server):
    url, _ = export_server
    path = export_link(Client(url, verbose=False, download_files=False), 0.45)
    link = f"{url}gradio_api/file/{path}"
    head = httpx.get(link, headers={"Range": "bytes=0-99"})
    assert head.status_code == 206 and len(head.content) == 100 and Path(path).is_file()
    rest = httpx.get(link, headers={"Range": "bytes=100-"})  # a browser resuming
    assert rest.status_code == 206 and zipfile.ZipFile(io.BytesIO(head.content + rest.content)).namelist()
    deadline = time.monotonic() + 10
    while Path(path).parent.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(path).parent.exists() and httpx.get(link).status_code == 410


# 6.-8. every value is checked, with a one-line message and no traceback


@pytest.fixture(scope="module")
def aligned(app_server):
    """(client, a group name) of a session that has run the alignment."""
    client = Client(app_server[0], verbose=False)
    group = client.predict(api_name="/align")[1]
    return client, group["value"] if isinstance(group, dict) else group


def refusal(call) -> str:
    with pytest.raises(Exception) as refused:
        call()
    message = str(refused.value).strip()
    assert "\n" not in message and len(message) < 400, message[:500]
    return message


@pytest.mark.parametrize("api_name, name", [("/show_group", "name"), ("/unit_traces", "group")])
def test_a_megabyte_group_name_in_an_aligned_session_is_not_echoed_or_logged(aligned, capfd, api_name, name):
    capfd.readouterr()
    message = refusal(lambda: aligned[0].predict(**{name: "x" * 2**20}, api_name=api_name))
    assert "x" * 50 not in message
    logged = capfd.readouterr()
    assert "Traceback" not in logged.err + logged.out and len(logged.err + logged.out) < 10_000


@pytest.mark.parametrize("unit", ["²", {"a": 1}, [1], 3.7])
def test_a_bad_unit_index_is_refused_in_one_line(aligned, capfd, unit):
    client, group = aligned
    capfd.readouterr()
    message = refusal(lambda: client.predict(group=group, unit=unit, api_name="/unit_traces"))
    assert "unexpected error" not in message and ("unit" in message or "speech unit" in message), message
    assert "Traceback" not in "".join(capfd.readouterr())


@pytest.mark.parametrize("clip, expected", [
    ({"path": "/etc/hostname", "meta": {"_type": "gradio.FileData"}}, "was not uploaded to this server"),
    ({"path": "https://example.com/clip.wav", "meta": {"_type": "gradio.FileData"}}, "a URL is not accepted"),
    ("clip.wav", "a file uploaded to this server"),
])
def test_a_file_value_that_is_not_an_upload_gets_a_message(app_server, capfd, clip, expected):
    page, session = Page(app_server[0]), f"crowd-{uuid.uuid4().hex}"
    capfd.readouterr()
    done = page.call("probe_clip", session, clip=clip)
    assert not done["success"] and expected in done["output"]["error"]
    assert "\n" not in done["output"]["error"] and "Traceback" not in "".join(capfd.readouterr())


def test_too_few_values_and_an_unknown_event_get_a_message(app_server):
    page, session = Page(app_server[0]), f"crowd-{uuid.uuid4().hex}"
    event = page.join("probe_clip", session, [None]).json()["event_id"]
    done = page.results(session, [event])[event][-1]
    assert not done["success"] and "values expected, not 1" in done["output"]["error"]
    bogus = httpx.post(f"{page.api}/queue/join", json={"data": [], "fn_index": 9999, "session_hash": session})
    assert bogus.status_code == 422 and "no event 9999" in bogus.json()["detail"]


@pytest.mark.parametrize("api_name, kwargs, expected", [
    ("/merge", {"method": "linear", "allow_rates": "yes"}, "true or false, not 'yes'"),
    ("/align", {"signed": {"yes": True}}, "true or false"),
    ("/align", {"components": "ffn"}, "a list of cnn, res, ffn, attn, not str 'ffn'"),
])
def test_flags_and_components_of_the_wrong_type_are_refused(app_server, api_name, kwargs, expected):
    message = refusal(lambda: Client(app_server[0], verbose=False).predict(**kwargs, api_name=api_name))
    assert expected in message and "'f'" not in message


# 9. nothing left behind


def test_a_stalled_upload_is_cut_off_and_leaves_no_temporary_file(disk_server):
    url, service = disk_server
    cache, content = cache_of(service), distinct_bytes(200_000)
    head = (b'--XYZ\r\nContent-Disposition: form-data; name="files"; filename="stalled.bin"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XYZ\r\n"
                     b"Content-Length: 1000000\r\n\r\n" + head + content)
        deadline = time.monotonic() + 5
        while not temporary_with(cache, content) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert temporary_with(cache, content), "the upload never started"
        sock.settimeout(30)
        answer = sock.recv(4096)  # nothing more is sent: the server cuts it off
        with contextlib.suppress(OSError):
            while b"}" not in answer and (chunk := sock.recv(4096)):  # the rest of the answer, its body
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer
    deadline = time.monotonic() + 5  # removed once Gradio's parser has let go of it
    while temporary_with(cache, content) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not temporary_with(cache, content)


def test_one_request_with_fifty_files_stores_none(disk_server):
    url, service = disk_server
    cache, run = cache_of(service), uuid.uuid4().hex[:8]
    files = [("files", (f"many-{run}-{i}.bin", distinct_bytes(4000))) for i in range(50)]
    answer = httpx.post(f"{url}gradio_api/upload", files=files, timeout=60)
    assert answer.status_code == 413 and "one file" in answer.json()["detail"]
    time.sleep(1.0)  # time to remove a partial file
    assert not any(stored(cache, name) for _, (name, _) in files)
    assert not temporary_with(cache, *(data for _, (_, data) in files))


def start_app(models: Path, cache: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MERGE_LAB_MODELS": str(models), "GRADIO_SERVER_PORT": str(port), "GRADIO_TEMP_DIR": str(cache),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False", "MERGE_LAB_CALIBRATION_LIMIT": "16"}
    return subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_start_up_removes_earlier_runs_leftovers_and_sigterm_leaves_no_export(lab_models, tmp_path):
    cache, port = tmp_path / "cache", free_port()
    dead = cache / EXPORTS_FOLDER / "merge-lab-exports-999999999-abcd" / "export-x"  # a pid no process can have
    unnamed = cache / EXPORTS_FOLDER / "merge-lab-exports-abcd1234"  # named before roots carried their pid
    for folder in (dead, unnamed):
        folder.mkdir(parents=True)
        (folder / "merged-linear.zip").write_bytes(b"left over")
    stale = cache / "tmpleftover"  # an upload in progress when an earlier run was killed
    stale.write_bytes(b"partial")
    for old in (stale, unnamed):
        os.utime(old, (time.time() - 7200, time.time() - 7200))
    server = start_app(lab_models, cache, port)
    try:
        client = None
        for _ in range(240):
            with contextlib.suppress(Exception):
                client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
                break
            time.sleep(0.5)
        assert client is not None, "app.py did not start"
        assert not dead.parent.exists() and not unnamed.exists() and not stale.exists()
        export = Path(export_link(client, 0.3))
        assert export.is_file() and cache in export.parents
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert not list(cache.rglob("*.zip")) and not export.parent.exists()


# 4. the newest release wins


def test_the_last_of_a_burst_of_releases_is_the_one_that_finishes(app_server):
    page, session = Page(app_server[0]), f"crowd-{uuid.uuid4().hex}"
    alphas = [round(0.05 + i * (0.92 - 0.05) / 29, 2) for i in range(30)]
    data = [page.data("merge", **{"method": "linear", "param-alpha": alpha}) for alpha in alphas]
    events = [page.join("merge", session, values).json()["event_id"]
              for values in data]  # each join answered before the next is sent: they arrive in this order
    messages = page.results(session, events)
    done = messages[events[-1]][-1]
    assert done["success"] and done["output"]["data"], "the newest release ended with no output"
    summary = done["output"]["data"][-1]
    position = summary["position"]["value"] if isinstance(summary["position"], dict) else summary["position"]
    assert summary["stage"] == "full" and position == pytest.approx(0.92)
