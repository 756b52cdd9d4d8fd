"""Latency of the app as a person meets it: slider release -> merged -> probe scores and plots back.

Starts `python app.py` on a loopback port (or uses --url), drives it through gradio_client and prints
round-trip times of /merge (what a slider release triggers) after one warm-up merge, plus /align and
/probe_clip. With no --models it serves assets/models; if the built-in encoders are missing there it
says so and uses random stand-ins of the built-in size in a temporary folder.

    python bench/bench_app.py [--models DIR] [--repeats 10] [--url http://127.0.0.1:7860/]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from merging.catalogue import MODEL_NAMES, MODELS_DIR  # noqa: E402

def stand_in_models(root: Path) -> Path:
    """Random encoders of the built-in size (merging.train's recipe) under the built-in names: for timing
    only, their scores mean nothing."""
    import torch
    from transformers import HubertModel

    from merging.train import encoder_config

    for seed, (role, name) in enumerate(MODEL_NAMES.items()):
        torch.manual_seed(seed)
        layers = 2 if role.startswith("student") else 4
        HubertModel(encoder_config(layers)).save_pretrained(root / name)
        (root / name / "preprocessor_config.json").write_text(json.dumps(
            {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "do_normalize": False}))
    return root


def start_app(models: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MERGE_LAB_MODELS": str(models), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_app(models: Path | None) -> tuple[str, subprocess.Popen, str]:
    """Start the app on a free loopback port on `models` (default assets/models; random stand-ins of the
    built-in size when encoders are missing there). Returns (url, server process, what it serves)."""
    folder = models or MODELS_DIR
    note = str(folder)
    missing = [name for name in MODEL_NAMES.values() if not (folder / name).is_dir()]
    if missing:
        folder = stand_in_models(Path(tempfile.mkdtemp(prefix="bench-app-models-")))
        note = f"random stand-ins of the built-in size ({', '.join(missing)} missing from {models or MODELS_DIR})"
    port = free_loopback_port()
    return f"http://127.0.0.1:{port}/", start_app(folder, port), note


@contextmanager
def running_app(url: str | None, models: Path | None = None) -> Iterator[tuple[str, subprocess.Popen | None, str]]:
    """(url, server process or None, what it serves): the app at `url`, or one started here by `serve_app`
    and stopped on the way out."""
    if url:
        yield url, None, "those of the app at --url"
        return
    url, server, note = serve_app(models)
    try:
        yield url, server, note
    finally:
        server.terminate()
        server.wait(timeout=30)


def connect(url: str, timeout: float = 180):
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(url, verbose=False)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def answers(job) -> list:
    """A /merge job's streamed answers: its stages (the progress lines between them left out)."""
    return [output for output in job.outputs() if isinstance(output[3], dict) and "stage" in output[3]]


def staged(client, **inputs) -> tuple[float, float, str, str]:
    """Seconds to the first streamed answer and to the last, and the stages of both."""
    start = time.perf_counter()
    job = client.submit(api_name="/merge", **inputs)
    first = None
    while not job.done():
        if first is None and answers(job):
            first = time.perf_counter() - start, answers(job)[0][3]["stage"]
        time.sleep(0.02)
    job.result()  # raises the app's message if the merge failed
    total, stages = time.perf_counter() - start, answers(job)
    first = first or (total, stages[0][3]["stage"])
    return first[0], total, first[1], stages[-1][3]["stage"]


def describe(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"median {statistics.median(ordered):.2f} s, p90 {p90:.2f} s, max {ordered[-1]:.2f} s over {len(ordered)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="folder of the built-in encoders (default: assets/models)")
    parser.add_argument("--url", help="an app already running (its own models)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    with running_app(args.url, args.models) as (url, _, note):
        from gradio_client import handle_file

        client = connect(url)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"merge lab app benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
              f"(load average before: {load}); models: {note}")
        seconds, _ = timed(lambda: client.predict(api_name="/align"))
        print(f"/align (calibration clips, cold): {seconds:.2f} s")
        first, total, stage, last = staged(client, method="permute", alpha=0.1)
        print(f"first /merge (the inputs' full-suite scores unless warm-up already did): first answer ({stage}) "
              f"{first:.2f} s, {last} {total:.2f} s")
        for method in ("permute", "linear", "task_arithmetic"):
            firsts, totals = [], []
            for i in range(args.repeats):
                alpha = round(0.05 + 0.9 * (i + 1) / (args.repeats + 1), 3)
                first, total, _, _ = staged(client, method=method, alpha=alpha, lambda_music=alpha)
                firsts.append(first)
                totals.append(total)
            print(f"slider release -> first scores and plots ({method}, gradio_client): {describe(firsts)}; "
                  f"to the full suite: {describe(totals)}")
        clip = handle_file(str(ROOT / "assets" / "audio" / "examples" / "speech_over_music_yes_synth_lead.ogg"))
        times = [timed(lambda: client.predict(clip, api_name="/probe_clip"))[0] for _ in range(3)]
        print(f"/probe_clip (3 s clip, three encoders): {describe(times)}")
        print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
