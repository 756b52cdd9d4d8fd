"""The running app driven through gradio_client: every named endpoint, good and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from gradio_client import Client, handle_file
from transformers import HubertModel

from conftest import UPLOAD_LIMIT, free_port
from merging.catalogue import MODEL_NAMES
from merging.methods import METHODS
from merging.state import state_checksum

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "assets" / "audio" / "examples"
SPEECH_CLIP = EXAMPLES / "speech_yes_en-us-m1.ogg"
TASKS = ["keyword", "speaker", "instrument_family", "pitch_class", "chord_quality"]


def plot(output) -> dict:
    """The plotly figure JSON inside a gr.Plot output."""
    assert output["type"] == "plotly"
    return json.loads(output["plot"])


def new_client(url: str) -> Client:
    return Client(url, verbose=False)  # a client is one session


@pytest.fixture(scope="module")
def aligned(app_server):
    """A session that has run the alignment and one permute merge."""
    url, _ = app_server
    client = new_client(url)
    alignment = client.predict(api_name="/align")
    merge = client.predict(api_name="/merge")
    return client, alignment, merge


def test_encoders_lists_every_role_with_size_rate_and_device(app_server):
    table, problems = new_client(app_server[0]).predict(api_name="/encoders")
    rows = {row[0]: row for row in table["data"]}
    assert len(rows) == 6 and problems == ""
    assert rows["speech encoder"][1] == MODEL_NAMES["speech"] and rows["music encoder"][1] == MODEL_NAMES["music"]
    for row in rows.values():
        assert row[2].endswith(" M") and row[3] == "16000 Hz" and row[4].startswith("cpu")


def test_align_shows_heatmaps_on_one_scale_the_diagonal_and_the_permutation(aligned):
    _, (status, groups, heatmap, diagonal, permutation), _ = aligned
    assert "→" in status and "calibration" in status
    names = [value for _, value in groups["choices"]]
    assert {"conv0", "ffn0", "attn1.qk", "attn1.vo"} <= set(names) and groups["value"] in names
    maps = [trace for trace in plot(heatmap)["data"] if trace["type"] == "heatmap"]
    assert len(maps) == 2 and maps[0]["zmin"] == maps[1]["zmin"] and maps[0]["zmax"] == maps[1]["zmax"]
    bars = plot(diagonal)["data"]
    assert [b["name"] for b in bars] == ["before", "after"] and list(bars[0]["x"]) == names
    assert "units move" in plot(permutation)["layout"]["title"]["text"]
    assert plot(heatmap)["layout"]["title"]["text"].startswith(groups["value"] + ":")


def test_show_group_switches_the_heatmap_and_refuses_unknown_groups(aligned):
    client = aligned[0]
    heatmap, permutation = client.predict("ffn1", api_name="/show_group")
    assert plot(heatmap)["layout"]["title"]["text"].startswith("ffn1:")
    assert "ffn1" in plot(permutation)["layout"]["title"]["text"]
    with pytest.raises(Exception, match="not in the list of choices|no group"):
        client.predict("layer99", api_name="/show_group")


def test_merge_reports_time_device_scores_bars_and_the_tradeoff_point(aligned):
    status, bars, curve, summary = aligned[2]
    assert "merged in" in status and "on **cpu**" in status and "stage: full suite" in status
    assert summary["method"] == "permute" and summary["params"] == {"alpha": 0.1} and summary["device"] == "cpu"
    assert set(summary["scores"]) == set(TASKS) and all(0 <= v <= 100 for v in summary["scores"].values())
    traces = plot(bars)["data"]
    assert [t["name"] for t in traces] == ["speech", "merged", "music"]
    assert list(traces[1]["y"]) == [summary["scores"][task] for task in TASKS]
    star = [t for t in plot(curve)["data"] if t["name"] == "this merge"]
    assert star and star[0]["y"] == [pytest.approx(summary["speech_avg"], abs=0.01)]


def test_every_method_merges_and_the_alpha_corners_are_the_inputs(app_server, aligned):
    client = aligned[0]
    for method in METHODS:
        summary = client.predict(method=method, alpha=0.3, api_name="/merge")[3]
        assert summary["method"] == method and set(summary["scores"]) == set(TASKS)
    _, bars, _, corner = client.predict(method="linear", alpha=0.0, api_name="/merge")  # the last stage: full suite
    speech_bars = next(t for t in plot(bars)["data"] if t["name"] == "speech")  # the speech encoder's full-suite scores
    assert list(corner["scores"].values()) == [round(v, 2) for v in speech_bars["y"]]
    per_layer = client.predict(method="linear", alpha=0.2, layer_alphas="0.1, 0.9", api_name="/merge")[3]
    assert per_layer["params"] == {"alpha": 0.2, "layer_alphas": [0.1, 0.9]}


@pytest.mark.parametrize("kwargs, message", [
    ({"layer_alphas": "0.1, abc"}, "not a number"),
    ({"layer_alphas": "0.1, 0.2, 0.3"}, "transformer layers"),
    ({"method": "ties", "layer_alphas": "0.1, 0.2"}, "per-layer"),
    ({"method": "no_such_method"}, "not in the list of choices"),
    ({"speech": "/etc"}, "not in the list of choices"),
    ({"method": "linear", "music": MODEL_NAMES["student_music"]}, "incompatible encoders"),
])
def test_bad_merge_input_is_refused_with_a_message_and_changes_nothing(aligned, kwargs, message):
    client = aligned[0]
    before = client.predict(method="linear", alpha=0.4, api_name="/merge")[3]
    with pytest.raises(Exception, match=message):
        client.predict(**{"method": "linear", **kwargs}, api_name="/merge")
    export = client.predict(api_name="/export")  # the session still holds the last good merge
    record = json.loads(zipfile.ZipFile(export).read("merged-linear/merge_config.json"))
    assert record["arguments"] == before["params"]


def test_permute_needs_an_alignment_first(app_server):
    client = new_client(app_server[0])
    with pytest.raises(Exception, match="run the alignment first"):
        client.predict(method="permute", api_name="/merge")
    with pytest.raises(Exception, match="merge first"):
        client.predict(api_name="/export")


def test_align_refuses_an_incompatible_pair_and_no_components(app_server):
    client = new_client(app_server[0])
    with pytest.raises(Exception, match="incompatible encoders: num_hidden_layers"):
        client.predict(music=MODEL_NAMES["student_music"], api_name="/align")
    with pytest.raises(Exception, match="at least one component"):
        client.predict(components=[], api_name="/align")


def test_probe_clip_predicts_with_the_merged_encoder_beside_its_inputs(aligned):
    client = aligned[0]
    client.predict(method="permute", alpha=0.1, api_name="/merge")
    table, status = client.predict(handle_file(str(SPEECH_CLIP)), api_name="/probe_clip")
    assert table["headers"] == ["task", "speech", "merged", "music"]
    assert [row[0] for row in table["data"]] == TASKS
    labels = json.loads((ROOT / "assets" / "audio" / "manifest.json").read_text())["tasks"]
    for task, *cells in table["data"]:
        for cell in cells:
            label, confidence = cell.rsplit(" (", 1)
            assert label in labels[task]["labels"] and confidence.endswith("%)")
    assert status.startswith(f"speech_yes_en-us-m1.ogg: 2.0 s · speech = {MODEL_NAMES['speech']} · music = {MODEL_NAMES['music']}")


def test_probe_clip_before_any_merge_shows_the_inputs_and_asks_for_a_merge(app_server):
    table, _ = new_client(app_server[0]).predict(handle_file(str(SPEECH_CLIP)), api_name="/probe_clip")
    assert all(row[2] == "merge first (step 3)" and "(" in row[1] for row in table["data"])


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000) -> Path:
    sf.write(path, audio, rate)
    return path


def test_bad_clips_get_a_message_and_the_server_keeps_serving(app_server, tmp_path):
    client = new_client(app_server[0])
    rng = np.random.default_rng(0)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    cases = [
        (not_audio, "not a readable audio file"),
        (write_wav(tmp_path / "silence.wav", np.zeros(16000, dtype=np.float32)), "silent"),
        (write_wav(tmp_path / "click.wav", 0.5 * rng.standard_normal(800).astype(np.float32)), "too short"),
    ]
    for path, message in cases:
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(str(path)), api_name="/probe_clip")
    big = write_wav(tmp_path / "big.wav", 0.1 * rng.standard_normal(UPLOAD_LIMIT, dtype=np.float32))
    with pytest.raises(Exception, match=f"big.wav exceeds the maximum file size of {UPLOAD_LIMIT} bytes"):  # no handler runs
        client.predict(handle_file(str(big)), api_name="/probe_clip")
    assert new_client(app_server[0]).predict(api_name="/encoders")[1] == ""


def test_a_clip_over_30_s_is_trimmed_with_a_warning(app_server, tmp_path):
    clip = (0.3 * np.sin(2 * np.pi * 440 * np.arange(31 * 8000) / 8000)).astype(np.float32)  # 31 s at 8 kHz: small file
    table, status = new_client(app_server[0]).predict(handle_file(str(write_wav(tmp_path / "long.wav", clip, 8000))),
                                                      api_name="/probe_clip")
    assert "only the first 30 s are used" in status and "30.0 s" in status and len(table["data"]) == len(TASKS)


def test_export_is_a_loadable_transformers_model_with_its_merge_record(aligned, tmp_path):
    client = aligned[0]
    summary = client.predict(method="permute", alpha=0.25, api_name="/merge")[3]
    archive = zipfile.ZipFile(client.predict(api_name="/export"))
    assert {"merged-permute/config.json", "merged-permute/model.safetensors", "merged-permute/merge_config.json",
            "merged-permute/preprocessor_config.json"} <= set(archive.namelist())
    archive.extractall(tmp_path)
    record = json.loads((tmp_path / "merged-permute" / "merge_config.json").read_text())
    assert record["method"] == "permute" and record["arguments"] == {"alpha": 0.25}
    assert record["alignments"]["music"]["groups"]["conv0"]["perm"]
    assert record["probe_scores"]["scores"] == summary["scores"]
    model = HubertModel.from_pretrained(tmp_path / "merged-permute").eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 8000)).last_hidden_state).all()


def test_sweep_fills_the_tradeoff_curve(aligned):
    client = aligned[0]
    client.predict(method="permute", alpha=0.1, api_name="/merge")
    curve = plot(client.predict("permute", api_name="/sweep"))
    line = next(t for t in curve["data"] if t["name"] == "permute")
    assert {"α=0", "α=0.1", "α=0.25", "α=0.5", "α=0.75", "α=1"} <= set(line["text"])
    assert line["text"][0] == "α=0" and line["text"][-1] == "α=1"  # in order of α


def test_sessions_are_separate_and_shared_encoders_are_never_mutated(app_server, aligned):
    url, service = app_server
    lab = service.lab
    keys = [MODEL_NAMES[role] for role in ("speech", "music", "student_base")]
    before = {key: state_checksum(lab.encoders.get(key).state_dict()) for key in keys}
    first, second = new_client(url), new_client(url)
    first.predict(method="linear", alpha=0.9, api_name="/merge")
    second.predict(method="ties", api_name="/merge")
    assert "merged-linear/" in zipfile.ZipFile(first.predict(api_name="/export")).namelist()[0]
    assert "merged-ties/" in zipfile.ZipFile(second.predict(api_name="/export")).namelist()[0]
    assert {key: state_checksum(lab.encoders.get(key).state_dict()) for key in keys} == before
    assert len(lab.runner.pool) <= 2  # one model per architecture (full encoders, students), however many merges


def test_python_app_py_starts_and_names_missing_models(tmp_path):
    port = free_port()
    env = {**os.environ, "MERGE_LAB_MODELS": str(tmp_path), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        client = None
        for _ in range(120):
            try:
                client = new_client(f"http://127.0.0.1:{port}/")
                break
            except Exception:
                time.sleep(0.5)
        assert client is not None, "app.py did not start"
        table, problems = client.predict(api_name="/encoders")
        assert f"built-in encoder '{MODEL_NAMES['speech']}' is not in {tmp_path}" in problems
        assert "MERGE_LAB_MODELS" in problems and all(row[4] == "not loaded" for row in table["data"])
        with pytest.raises(Exception, match="is not in"):
            client.predict(api_name="/align")
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": "0.5"}, "str value '0.5' is not accepted"),
    ({"alpha": [0.5]}, "list value .* is not accepted"),
    ({"method": 3}, "not in the list of choices"),
    ({"layer_alphas": "x" * 2**20}, "per-layer α: 'x{40}…' is not a number"),
])
def test_values_of_the_wrong_type_get_a_one_line_message(app_server, kwargs, message):
    client = new_client(app_server[0])
    with pytest.raises(Exception, match=message) as refused:
        client.predict(**{"method": "linear", **kwargs}, api_name="/merge")
    assert len(str(refused.value)) < 400 and "\n" not in str(refused.value).strip()


def test_one_upload_request_cannot_store_several_files(app_server, tmp_path):
    import httpx

    rng = np.random.default_rng(1)
    samples = int(0.45 * UPLOAD_LIMIT) // 2  # 16-bit: each file under the limit, the three together over it
    files = [("files", (f"clip{i}.wav", write_wav(tmp_path / f"clip{i}.wav", 0.1 * rng.standard_normal(
        samples, dtype=np.float32)).read_bytes())) for i in range(3)]
    response = httpx.post(f"{app_server[0]}gradio_api/upload", files=files)
    assert response.status_code == 413 and "one file of at most 2 MB" in response.json()["detail"]
