"""Latency of the app as a person meets it, from a cold start: slider release -> merged -> probe scores and plots back.

Starts `python app.py` on a loopback port twice on one result store (MERGE_LAB_CACHE): first on an empty store (a
fresh clone: only the warm results shipped in assets/warm), then again after a restart with the store kept. Each
time it prints, from start-up (the server's first answer): /align, the page's first release (permute α=0.1: its
first answer and its full suite), when the server went idle (its CPU below 15 % of a core over 2 s), then a release
of a setting no one scored (α=0.3). Then, on the restarted server, `--repeats` releases per method (round trips of
/merge after one warm-up merge) and /probe_clip. With no --models it serves assets/models; if the built-in encoders
are missing there it says so and uses random stand-ins of the built-in size in a temporary folder (the shipped warm
results then do not apply). With --url it only times releases on an app already running.

    python bench/bench_app.py [--models DIR] [--repeats 10] [--url http://127.0.0.1:7860/]

Targets (2 CPU threads): first answer <= 5 s and full suite <= 25 s after start-up, idle within 30 s of start-up,
from a fresh clone and after a restart.
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


def start_app(models: Path, port: int, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "MERGE_LAB_MODELS": str(models), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    return subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_app(models: Path | None, env: dict | None = None) -> tuple[str, subprocess.Popen, str]:
    """Start the app on a free loopback port on `models` (default assets/models; random stand-ins of the
    built-in size when encoders are missing there), with `env` added to its environment. Returns (url, server
    process, what it serves)."""
    folder = models or MODELS_DIR
    note = str(folder)
    missing = [name for name in MODEL_NAMES.values() if not (folder / name).is_dir()]
    if missing:
        folder = stand_in_models(Path(tempfile.mkdtemp(prefix="bench-app-models-")))
        note = f"random stand-ins of the built-in size ({', '.join(missing)} missing from {models or MODELS_DIR})"
    port = free_loopback_port()
    return f"http://127.0.0.1:{port}/", start_app(folder, port, env), note


@contextmanager
def running_app(url: str | None, models: Path | None = None,
                env: dict | None = None) -> Iterator[tuple[str, subprocess.Popen | None, str]]:
    """(url, server process or None, what it serves): the app at `url`, or one started here by `serve_app`
    and stopped on the way out."""
    if url:
        yield url, None, "those of the app at --url"
        return
    url, server, note = serve_app(models, env)
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


def cpu_seconds(pid: int) -> float:
    """CPU seconds a process has used, all its threads (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_after(pid: int, start: float, window: float = 2.0, share: float = 0.15, limit: float = 600.0) -> float:
    """Seconds from `start` (perf_counter) to the end of the first `window` in which the process used under `share`
    of a core: when the server went idle (an idle server's polling takes about 6 % of a core; computing, 100 % or
    more)."""
    while time.perf_counter() - start < limit:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < share * window:
            return time.perf_counter() - start
    return float("inf")


def cold_start(models: Path | None, store: Path, label: str) -> None:
    """One start of the app on `store`: /align, the page's first release, a new setting's release, idle; each
    from start-up (the server's first answer)."""
    began = time.perf_counter()
    with running_app(None, models, {"MERGE_LAB_CACHE": str(store)}) as (url, server, note):
        client = connect(url)
        up = time.perf_counter()
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{label}: server up {up - began:.1f} s after launch (load average {load}); models: {note}")
        seconds, _ = timed(lambda: client.predict(api_name="/align"))
        print(f"  /align: {seconds:.2f} s (done {time.perf_counter() - up:.1f} s after start-up)")
        release(client, up, 0.1, "the page's first release")
        print(f"  idle {idle_after(server.pid, up):.1f} s after start-up (its own work done: warm-up, that release); "
              f"store {folder_mb(store):.1f} MB; load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
        release(client, up, 0.3, "then a setting no one scored")


def release(client, up: float, alpha: float, what: str) -> None:
    """A permute release timed to its first answer and its full suite, from the release and from start-up."""
    released = time.perf_counter() - up
    first, total, stage, last = staged(client, method="permute", alpha=alpha)
    print(f"  {what} (permute α={alpha}): first answer ({stage}) {first:.2f} s, {last} {total:.2f} s after the "
          f"release; {released + first:.1f} s and {released + total:.1f} s after start-up")


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def releases(client, repeats: int) -> None:
    """`repeats` releases per method (after the alignment and one warm-up merge), and /probe_clip."""
    from gradio_client import handle_file

    client.predict(api_name="/align")
    staged(client, method="permute", alpha=0.15)
    for method in ("permute", "linear", "task_arithmetic"):
        firsts, totals = [], []
        for i in range(repeats):
            alpha = round(0.05 + 0.9 * (i + 1) / (repeats + 1), 3)
            first, total, _, _ = staged(client, method=method, alpha=alpha, lambda_music=alpha)
            firsts.append(first)
            totals.append(total)
        print(f"slider release -> first scores and plots ({method}, gradio_client): {describe(firsts)}; "
              f"to the full suite: {describe(totals)}")
    clip = handle_file(str(ROOT / "assets" / "audio" / "examples" / "speech_over_music_yes_synth_lead.ogg"))
    times = [timed(lambda: client.predict(clip, api_name="/probe_clip"))[0] for _ in range(3)]
    print(f"/probe_clip (3 s clip, three encoders): {describe(times)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="folder of the built-in encoders (default: assets/models)")
    parser.add_argument("--url", help="an app already running (its own models): only the releases are timed")
    parser.add_argument("--repeats", type=int, default=10, help="releases per method on the restarted server (0: none)")
    args = parser.parse_args()
    print(f"merge lab app benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {os.environ.get('MERGE_LAB_THREADS', 'default')}")
    if args.url:
        releases(connect(args.url), args.repeats)
        return
    with tempfile.TemporaryDirectory(prefix="bench-app-store-") as store:
        cold_start(args.models, Path(store), "fresh clone (empty store)")
        cold_start(args.models, Path(store), "restart (store kept)")
        if args.repeats:
            with running_app(None, args.models, {"MERGE_LAB_CACHE": store}) as (url, _, _):
                releases(connect(url), args.repeats)
    print(f"load average after: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
