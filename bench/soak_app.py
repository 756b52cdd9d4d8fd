"""Soak test of the app under a crowd: ordinary visitors and the attacks of issue 18 mixed, on a loopback server
started here (`python app.py` with its own Gradio cache folder and MERGE_LAB_DISK_MB=--disk-mb), for --seconds or
until --requests ordinary requests, whichever comes first.

Ordinary visitors (--visitors gradio_client sessions) align and merge once, then merge, probe an uploaded example
clip, look at a group and a unit's traces, and build and fetch an export, a second or so apart. One attacker cycles
through the attacks: 20 parallel 19 MB uploads from 20 addresses, 11 such uploads from one address, eight exports
from one session, 30 releases in 5 s (the last must be the one that finishes), Range and legacy-route downloads, a 1 MB group name,
bad unit indices, file values that are not uploads, too few values, an unknown fn_index, a stalled and a broken-off
upload, non-boolean flags, components as a string, and 50 files in one request. Gradio's cache and the result store
are measured together every 0.1 s.

Printed at the end: their high-water mark against the cap, the server's RSS at start and end (and its peak),
outcomes by kind (what was refused, how; anything unexpected), the tracebacks in the server's log, and whether every
ordinary request succeeded.

    python bench/soak_app.py [--seconds 600] [--requests 5000] [--disk-mb 200] [--visitors 3]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
from bench_app import ROOT, connect, free_loopback_port  # noqa: E402
from load_app import load_average, memory_kb  # noqa: E402

from merging.service.exports import folder_bytes  # noqa: E402

EXAMPLE = ROOT / "assets" / "audio" / "examples" / "speech_yes_en-us-m1.ogg"
BIG = 19 * 2**20  # the uploads: just under the 20 MB limit
FILE = {"_type": "gradio.FileData"}


class Tally:
    """Outcomes by kind, from every thread; the ordinary requests that failed, with their message."""

    def __init__(self) -> None:
        self.kinds, self.failed, self.ordinary, self.lock = Counter(), [], 0, threading.Lock()

    def add(self, kind: str) -> None:
        with self.lock:
            self.kinds[kind] += 1

    def ordinary_request(self, name: str, call) -> object:
        with self.lock:
            self.ordinary += 1
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - every failure of an ordinary request is reported
            with self.lock:
                self.failed.append(f"{name}: {' '.join(str(error).split())[:200]}")
            return None


def refused(kind: str, message: str) -> str:
    """An outcome: a one-line refusal of under 400 characters is expected; anything else is not."""
    tidy = "\n" not in message.strip() and 0 < len(message) < 400
    return f"{kind}: refused in one line" if tidy else f"{kind}: UNEXPECTED ({len(message)} characters)"


class Page:
    """Raw events as the page sends them (POST …/queue/join, then the session's event stream), values by elem_id,
    the others at the page's starting values. tests/test_app_crowd.py drives the app with it too."""

    def __init__(self, url: str) -> None:
        self.url, self.api = url, f"{url}gradio_api"
        config = httpx.get(f"{url}config").json()
        self.dependencies = {d["api_name"]: d for d in config["dependencies"] if d.get("api_name")}
        self.components = {c["id"]: c for c in config["components"]}

    def data(self, api_name: str, **values) -> list:
        props = [self.components[i].get("props", {}) for i in self.dependencies[api_name]["inputs"]]
        return [values.get(p.get("elem_id"), p.get("value")) for p in props]

    def join(self, api_name: str, session: str, data: list) -> httpx.Response:
        return httpx.post(f"{self.api}/queue/join", json={"data": data, "fn_index": self.dependencies[api_name]["id"],
                                                          "session_hash": session}, timeout=60)

    def results(self, session: str, events: list[str], timeout: float = 300) -> dict[str, list[dict]]:
        """Every message of `events` until each has completed: {event_id: [message, …]}."""
        messages = {event: [] for event in events}
        with httpx.stream("GET", f"{self.api}/queue/data", params={"session_hash": session}, timeout=timeout) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("event_id") in messages:
                    messages[message["event_id"]].append(message)
                if all(m and m[-1].get("msg") == "process_completed" for m in messages.values()):
                    break
        return messages

    def call(self, api_name: str, session: str, **values) -> dict:
        """The completion message of one event."""
        event = self.join(api_name, session, self.data(api_name, **values)).json()["event_id"]
        return self.results(session, [event])[event][-1]


def error_of(page: Page, api_name: str, **values) -> str:
    """The error message of one event ('' when it succeeded)."""
    done = page.call(api_name, f"soak-{uuid.uuid4().hex}", **values)
    return "" if done.get("success") else str((done.get("output") or {}).get("error"))


def upload(url: str, name: str, data: bytes, visitor: str | None = None) -> httpx.Response:
    headers = {"x-forwarded-for": visitor} if visitor else {}
    return httpx.post(f"{url}gradio_api/upload", files={"files": (name, data)}, headers=headers, timeout=300)


# ordinary visitors


def visitor(url: str, seed: int, deadline: float, budget: list[int], tally: Tally) -> None:
    from gradio_client import Client, handle_file

    rng = random.Random(seed)
    client = Client(url, verbose=False, download_files=False)
    aligned = tally.ordinary_request("/align", lambda: client.predict(api_name="/align"))
    group = aligned[1]["value"] if aligned and isinstance(aligned[1], dict) else aligned[1] if aligned else None
    actions = {
        "/merge": lambda: client.predict(method=rng.choice(["linear", "permute"]), alpha=rng.choice([0.1, 0.3, 0.5, 0.7]),
                                         api_name="/merge"),
        "/probe_clip": lambda: client.predict(handle_file(str(EXAMPLE)), api_name="/probe_clip"),
        "/show_group": lambda: client.predict(name=group, api_name="/show_group"),
        "/unit_traces": lambda: client.predict(group=group, unit=rng.choice(["best", "worst", "3"]),
                                               api_name="/unit_traces"),
        "/export + download": lambda: fetched(url, client.predict(api_name="/export")["path"]),
    }
    tally.ordinary_request("/merge", actions["/merge"])  # a page exports what it merged
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        name = rng.choice(list(actions))
        tally.ordinary_request(name, actions[name])
        time.sleep(rng.uniform(0.5, 1.5))


def fetched(url: str, path: str) -> int:
    whole = httpx.get(f"{url}gradio_api/file={path}", timeout=120)
    whole.raise_for_status()
    return len(zipfile.ZipFile(io.BytesIO(whole.content)).namelist())


# the attacks


def parallel_uploads(url: str, tally: Tally) -> None:
    with ThreadPoolExecutor(20) as pool:
        for answer in pool.map(lambda i: upload(url, f"race{i}.bin", os.urandom(BIG), f"10.8.0.{i}"), range(20)):
            tally.add(f"20 parallel 19 MB uploads: HTTP {answer.status_code}")


def one_visitor_floods(url: str, tally: Tally) -> None:
    for i in range(11):
        answer = upload(url, f"flood{i}.bin", os.urandom(BIG), "10.9.0.1")
        tally.add(f"11 uploads of 19 MB from one address: HTTP {answer.status_code}")


def eight_exports(url: str, tally: Tally) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    client.predict(method="linear", alpha=0.4, api_name="/merge")
    for _ in range(8):
        client.predict(api_name="/export")
        tally.add("eight exports from one session: built")


def burst_of_releases(page: Page, tally: Tally) -> None:
    session, alphas = f"soak-{uuid.uuid4().hex}", [round(0.05 + i * 0.03, 2) for i in range(30)]
    events = []
    for alpha in alphas:
        data = page.data("merge", method="linear", **{"param-alpha": alpha})
        events.append(page.join("merge", session, data).json()["event_id"])
        time.sleep(5 / 30)
    done = page.results(session, events)[events[-1]][-1]
    summary = ((done.get("output") or {}).get("data") or [None])[-1]
    position = summary.get("position") if isinstance(summary, dict) else None
    position = position.get("value") if isinstance(position, dict) else position
    won = isinstance(summary, dict) and summary.get("stage") == "full" and position == alphas[-1]
    outcome = "the last finished on the full suite" if won else "UNEXPECTED: the last did not win"
    tally.add(f"30 releases in 5 s: {outcome}")


def downloads(url: str, tally: Tally) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    client.predict(method="linear", alpha=0.6, api_name="/merge")
    for route, headers in (("file={}", {"Range": "bytes=0-"}), ("file/{}", {})):
        path = client.predict(api_name="/export")["path"]
        first = httpx.get(f"{url}gradio_api/" + route.format(path), headers=headers, timeout=120)
        time.sleep(0.5)
        second = httpx.get(f"{url}gradio_api/file={path}", timeout=60)
        tally.add(f"download by {route.format('…')} {headers or ''}: HTTP {first.status_code} then {second.status_code}")


def bad_values(url: str, page: Page, tally: Tally) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    group = client.predict(api_name="/align")[1]
    group = group["value"] if isinstance(group, dict) else group
    calls = {
        "1 MB group name to /show_group": lambda: client.predict(name="x" * 2**20, api_name="/show_group"),
        "1 MB group name to /unit_traces": lambda: client.predict(group="x" * 2**20, api_name="/unit_traces"),
        "allow_rates='yes'": lambda: client.predict(method="linear", allow_rates="yes", api_name="/merge"),
        "signed={...}": lambda: client.predict(signed={"a": 1}, api_name="/align"),
        "components='ffn'": lambda: client.predict(components="ffn", api_name="/align"),
        **{f"unit {unit!r}": (lambda unit=unit: client.predict(group=group, unit=unit, api_name="/unit_traces"))
           for unit in ("²", {"a": 1}, [1], 3.7)},
    }
    for kind, call in calls.items():
        try:
            call()
            tally.add(f"{kind}: UNEXPECTED: accepted")
        except Exception as error:  # noqa: BLE001 - the refusal is what is measured
            tally.add(refused(kind, str(error)))
    for kind, clip in (("file outside the cache", {"path": "/etc/hostname", "meta": FILE}),
                       ("a URL", {"path": "https://example.com/a.wav", "meta": FILE}), ("a plain string", "clip.wav")):
        tally.add(refused(kind, error_of(page, "probe_clip", clip=clip)))
    session = f"soak-{uuid.uuid4().hex}"
    short = page.join("probe_clip", session, [None]).json()["event_id"]
    done = page.results(session, [short])[short][-1]
    tally.add(refused("too short an input list", str((done.get("output") or {}).get("error"))))
    bogus = httpx.post(f"{page.api}/queue/join", json={"data": [], "fn_index": 9999, "session_hash": session})
    tally.add(f"unknown fn_index: HTTP {bogus.status_code}")
    many = httpx.post(f"{url}gradio_api/upload", files=[("files", (f"m{i}.bin", os.urandom(4000))) for i in range(50)])
    tally.add(f"50 files in one request: HTTP {many.status_code}")


def broken_uploads(url: str, tally: Tally) -> None:
    """An upload that stalls (sends half, then nothing) and one broken off half way."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    head = (b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XYZ\r\n"
            b"Content-Length: 2000000\r\n\r\n--XYZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"s.bin\""
            b"\r\n\r\n" + os.urandom(1_000_000))
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head)
        sock.settimeout(120)
        status = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
        tally.add(f"stalled upload: {status or 'no answer'}")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head)
    tally.add("upload broken off half way: sent")


def attacker(url: str, deadline: float, rounds: int, tally: Tally) -> None:
    page = Page(url)
    attacks = [lambda: parallel_uploads(url, tally), lambda: one_visitor_floods(url, tally),
               lambda: eight_exports(url, tally), lambda: burst_of_releases(page, tally), lambda: downloads(url, tally),
               lambda: bad_values(url, page, tally), lambda: broken_uploads(url, tally)]
    for attack in (attacks * rounds):
        if time.monotonic() > deadline:
            return
        try:
            attack()
        except Exception as error:  # noqa: BLE001 - an attack that breaks is an outcome too
            tally.add(f"attack failed: UNEXPECTED {type(error).__name__}: {' '.join(str(error).split())[:120]}")
        time.sleep(2)


class DiskWatch(threading.Thread):
    """The high-water mark of some folders' bytes together, measured every 0.1 s."""

    def __init__(self, *folders: Path) -> None:
        super().__init__(daemon=True)
        self.folders, self.high, self.stop = folders, 0, threading.Event()

    def bytes(self) -> int:
        return sum(map(folder_bytes, self.folders))

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.high = max(self.high, self.bytes())


def serve(cache: Path, disk_mb: int, log) -> tuple[str, subprocess.Popen]:
    port = free_loopback_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "MERGE_LAB_DISK_MB": str(disk_mb), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}/", server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="how long the crowd runs (default 600)")
    parser.add_argument("--requests", type=int, default=5000, help="at most this many ordinary requests (default 5000)")
    parser.add_argument("--disk-mb", type=int, default=200, help="the server's MERGE_LAB_DISK_MB (default 200)")
    parser.add_argument("--visitors", type=int, default=3, help="ordinary sessions at once (default 3)")
    parser.add_argument("--rounds", type=int, default=50, help="at most this many rounds of the attacks (default 50)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="soak-app-"))
    cache, tally = work / "cache", Tally()
    with (work / "server.log").open("w") as log:
        url, server = serve(cache, args.disk_mb, log)
        try:
            connect(url)
            store = work / "merge-lab-cache"  # the result store, beside Gradio's cache
            start_kb, watch = memory_kb(server.pid), DiskWatch(cache, store)
            watch.start()
            print(f"server {url} (pid {server.pid}), cache {cache}, cap {args.disk_mb} MB; load {load_average()}",
                  flush=True)
            deadline, budget, started = time.monotonic() + args.seconds, [args.requests], time.monotonic()
            threads = [threading.Thread(target=visitor, args=(url, seed, deadline, budget, tally), daemon=True)
                       for seed in range(args.visitors)]
            threads.append(threading.Thread(target=attacker, args=(url, deadline, args.rounds, tally), daemon=True))
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=max(1.0, deadline - time.monotonic()) + 600)
            end_kb = memory_kb(server.pid)
            watch.stop.set()
            watch.join()
        finally:
            server.terminate()
            server.wait(timeout=60)
    tracebacks = (work / "server.log").read_text(errors="replace").count("Traceback")
    report(args, tally, watch, start_kb, end_kb, tracebacks, time.monotonic() - started)


def report(args, tally: Tally, watch: DiskWatch, start_kb: dict, end_kb: dict, tracebacks: int, wall: float) -> None:
    high, left = watch.high, folder_bytes(watch.folders[0])
    print(f"\nran {wall:.0f} s; load average {load_average()}")
    print(f"disk: high-water {high / 2**20:.1f} MB against a cap of {args.disk_mb} MB "
          f"({'within' if high <= args.disk_mb * 2**20 else 'OVER'} the cap, the result store included); "
          f"{left / 2**20:.1f} MB left in Gradio's cache after SIGTERM")
    print(f"server RSS: {start_kb['VmRSS'] / 1024:.0f} MB at start, {end_kb['VmRSS'] / 1024:.0f} MB at the end "
          f"(peak {end_kb['VmHWM'] / 1024:.0f} MB)")
    print("outcomes by kind:")
    for kind, count in sorted(tally.kinds.items()):
        print(f"  {count:5d}  {kind}")
    print(f"tracebacks in the server's log: {tracebacks}")
    ok = tally.ordinary - len(tally.failed)
    print(f"ordinary requests: {ok} of {tally.ordinary} succeeded"
          f" ({'every one' if not tally.failed else 'NOT every one'})")
    for failure in tally.failed[:20]:
        print(f"  failed: {failure}")


if __name__ == "__main__":
    main()
