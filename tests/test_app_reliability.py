"""The running app under careless or hostile clients: several sessions at once, paths it must not open,
values outside the controls' ranges, and unusual but valid uploads."""
from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file

from merging.catalogue import MODEL_NAMES
from merging.methods import METHODS
from merging.state import state_checksum

ROOT = Path(__file__).resolve().parent.parent
SPEECH_CLIP = ROOT / "assets" / "audio" / "examples" / "speech_yes_en-us-m1.ogg"


def new_client(url: str) -> Client:
    return Client(url, verbose=False)  # a client is one session


def raw_call(url: str, endpoint: str, clip: dict) -> str:
    """Call `endpoint` with a hand-made clip value, as a script could without gradio_client (which uploads
    every local path it is given); the other inputs keep their defaults. Returns the event stream."""
    api = f"{url}gradio_api"
    parameters = httpx.get(f"{api}/info").json()["named_endpoints"][f"/{endpoint}"]["parameters"]
    data = [clip] + [p.get("parameter_default") for p in parameters[1:]]
    event = httpx.post(f"{api}/call/{endpoint}", json={"data": data}).json()["event_id"]
    return httpx.get(f"{api}/call/{endpoint}/{event}", timeout=120).text


def uploaded(url: str, path: Path) -> str:
    with path.open("rb") as file:
        return httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, file)}).json()[0]


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def paths_probed(teaching, monkeypatch) -> list[str]:
    """The clip paths the app hands to `teaching.probe_clip` from now on (the test's end restores it)."""
    probed, real_probe_clip = [], teaching.probe_clip

    def probe_clip(session, sources, path, *rest):
        probed.append(str(path))
        return real_probe_clip(session, sources, path, *rest)

    monkeypatch.setattr(teaching, "probe_clip", probe_clip)
    return probed


def test_a_clip_path_that_was_not_uploaded_never_reaches_the_lab(app_server, monkeypatch):
    url, service = app_server
    opened = paths_probed(service.teaching, monkeypatch)
    for outside in ("/etc/passwd", "../../../../../../etc/passwd", str(SPEECH_CLIP), str(ROOT / "app.py")):
        assert "event: error" in raw_call(url, "probe_clip", file_data(outside))
    assert opened == []
    legit = uploaded(url, SPEECH_CLIP)  # the same call with an uploaded file goes through
    assert "event: complete" in raw_call(url, "probe_clip", file_data(legit))
    assert opened == [legit]


@pytest.mark.parametrize("setting, message", [
    ({"alpha": 1.5}, "greater than maximum"),
    ({"alpha": -0.2}, "less than minimum"),
    ({"method": "task_arithmetic", "lambda_speech": 2.5}, "greater than maximum"),
    ({"method": "ties", "lambda_music": -1.5}, "less than minimum"),
    ({"method": "ties", "lambda_music": -0.5}, r"lambda_music must be a number in \[0, 2\]"),  # in the slider, not in TIES
])
def test_values_outside_a_sliders_range_are_refused_and_change_nothing(app_server, setting, message):
    client = new_client(app_server[0])
    kept = client.predict(method="linear", alpha=0.35, api_name="/merge")[3]
    with pytest.raises(Exception, match=message):
        client.predict(**{"method": "linear", **setting}, api_name="/merge")
    record = json.loads(zipfile.ZipFile(client.predict(api_name="/export")).read("merged-linear/merge_config.json"))
    assert record["arguments"] == kept["params"] == {"alpha": 0.35}


def write_clip(path: Path, rate: int, channels: int, subtype: str) -> Path:
    t = np.arange(rate) / rate
    mono = 0.4 * np.sin(2 * np.pi * 330 * t) * (t < 0.8)
    sf.write(path, np.repeat(mono[:, None], channels, axis=1), rate, subtype=subtype)
    return path


@pytest.mark.parametrize("name, rate, channels, subtype", [
    ("stereo-24bit-44k.flac", 44100, 2, "PCM_24"), ("mono-8bit-11k.wav", 11025, 1, "PCM_U8"),
    ("float-odd-rate.wav", 12345, 3, "FLOAT"),
])
def test_unusual_but_valid_uploads_are_converted_and_probed(app_server, tmp_path, name, rate, channels, subtype):
    table, status = new_client(app_server[0]).predict(handle_file(str(write_clip(tmp_path / name, rate, channels, subtype))),
                                                      api_name="/probe_clip")
    assert status.startswith(f"{name}: 1.0 s") and len(table["data"]) == 5


def test_concurrent_sessions_get_their_own_results_and_leave_the_encoders_alone(app_server):
    url, service = app_server
    lab = service.lab
    keys = [MODEL_NAMES[role] for role in ("speech", "music", "student_base", "student_speech", "student_music")]
    before = {key: state_checksum(lab.encoders.get(key).state_dict()) for key in keys}
    plans = [("linear", {"alpha": 0.15}), ("ties", {"lambda_speech": 0.6, "lambda_music": 0.3}),
             ("task_arithmetic", {"lambda_speech": 0.2, "lambda_music": 0.7}), ("linear", {"alpha": 0.85})]
    recorded, errors = {}, []

    def session(index: int, method: str, params: dict) -> None:
        try:
            client = new_client(url)
            client.predict(method=method, **params, api_name="/merge")
            client.predict(handle_file(str(SPEECH_CLIP)), api_name="/probe_clip")
            archive = zipfile.ZipFile(client.predict(api_name="/export"))
            recorded[index] = json.loads(archive.read(f"merged-{method}/merge_config.json"))["arguments"]
        except Exception as error:  # reported below, with the others
            errors.append(f"session {index}: {error!r}")

    threads = [threading.Thread(target=session, args=(i, *plan)) for i, plan in enumerate(plans)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and set(recorded) == set(range(len(plans)))
    for index, (method, params) in enumerate(plans):  # each its own (with the page's values of its other parameters)
        assert recorded[index] == {**{name: recorded[index][name] for name in METHODS[method].parameters
                                      if name in recorded[index]}, **params}
    assert {key: state_checksum(lab.encoders.get(key).state_dict()) for key in keys} == before


def test_uploads_and_downloads_are_deleted_once_no_session_can_use_them(app_server, monkeypatch):
    import datetime
    import gc
    import time

    import gradio as gr
    from gradio import route_utils

    import app

    url, service = app_server
    lab = service.lab
    demo = next(b for b in gc.get_objects() if isinstance(b, gr.Blocks) and getattr(b, "local_url", None) == url)
    frequency, age = demo.delete_cache
    assert 0 < frequency <= age == app.SESSION_SECONDS
    client = Client(url, verbose=False, download_files=False)  # an export nobody downloads
    client.predict(method="linear", alpha=0.2, api_name="/merge")
    client.predict(api_name="/export")
    export = max(lab.exports.root.rglob("*.zip"), key=lambda p: p.stat().st_mtime)
    assert Path(demo.GRADIO_CACHE) in export.parents  # served from Gradio's cache as it is: no second copy
    upload = Path(uploaded(url, SPEECH_CLIP))
    route_utils.delete_files_created_by_app(demo, age)  # the hourly clean-up, while a session may still use them
    assert upload.exists() and export.exists()

    class Later(datetime.datetime):  # the same clean-up once a session's lifetime has passed
        @classmethod
        def now(cls, tz=None):
            return datetime.datetime.fromtimestamp(time.time() + age + 1, tz)

    monkeypatch.setattr(route_utils, "datetime", Later)
    route_utils.delete_files_created_by_app(demo, age)
    assert not upload.exists() and not export.exists()


def test_an_export_is_deleted_once_it_has_been_downloaded_whole(app_server):
    url, service = app_server
    lab = service.lab
    client = Client(url, verbose=False, download_files=False)
    client.predict(method="linear", alpha=0.3, api_name="/merge")
    served = client.predict(api_name="/export")
    export = Path(served["path"])
    assert lab.exports.root in export.parents and export.is_file()
    link = f"{url}gradio_api/file={export}"
    assert httpx.head(link).status_code == 200 and export.is_file()
    partial = httpx.get(link, headers={"Range": "bytes=0-99"})
    assert partial.status_code == 206 and len(partial.content) == 100 and export.is_file()
    whole = httpx.get(link)
    assert whole.status_code == 200 and zipfile.ZipFile(io.BytesIO(whole.content)).namelist()
    deadline = time.monotonic() + 10  # removed just after the last byte went out
    while export.parent.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not export.parent.exists()  # its whole export folder, not only the zip
    assert httpx.get(link).status_code != 200
