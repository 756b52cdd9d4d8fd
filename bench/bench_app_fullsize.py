"""The app at full size, from a cold start: HuBERT-base and MERT-v0-public stand-ins (random weights, the hub layouts of
scripts/make_standins.py) offered as extra encoders, served twice on one result store (MERGE_LAB_CACHE): first on an
empty store (a new pair), then after a restart with the store kept. Each time: /align, then slider releases, each timed
to its first answer and (with --full) to the full suite, with the server's resident memory.

    python bench/bench_app_fullsize.py [--releases 1] [--full] [--idle-limit 3600] [--standins runs/standins]

On the empty store the first release answers from its subset alone (uncorrected) while the inputs' full-suite
features are computed in the background; the bench then waits (at most --idle-limit seconds) until the server is idle,
its inputs' features and scores kept in the store, and restarts it. After the restart the same release is answered
from the store when it reached its full suite (--full), else its quick stage is corrected at once by the stored inputs;
a new setting's first answer follows. Targets (2 CPU threads): first answer <= 60 s for a new pair, <= 20 s after a
restart. Scores of random weights mean nothing; the times and the memory are what this measures.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "scripts")]
from bench_app import answers, connect, free_loopback_port, idle_after, staged  # noqa: E402
from make_standins import write_standin  # noqa: E402

from merging.catalogue import MODELS_DIR  # noqa: E402

PAIR = ("hubert-base-ls960", "MERT-v0-public")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def first_answer(client, **inputs) -> tuple[float, str]:
    """Seconds to a release's first streamed answer and its stage; the rest of its work is cancelled."""
    start = time.perf_counter()
    job = client.submit(api_name="/merge", **inputs)
    while not answers(job):
        if job.done():
            job.result()  # raises the app's message if the merge failed
            break
        time.sleep(0.05)
    seconds, stage = time.perf_counter() - start, answers(job)[0][3]["stage"]
    job.cancel()
    return seconds, stage


def serve(folders: list[str], store: Path) -> tuple[subprocess.Popen, str]:
    port = free_loopback_port()
    env = {**os.environ, "MERGE_LAB_MODELS": str(MODELS_DIR), "MERGE_LAB_ENCODERS": ",".join(folders),
           "MERGE_LAB_CACHE": str(store), "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}/"


def run(label: str, folders: list[str], store: Path, alphas: list[float], full: bool, idle_limit: float) -> None:
    server, url = serve(folders, store)
    try:
        client = connect(url)
        up = time.perf_counter()
        print(f"{label}: load {os.getloadavg()[0]:.1f}; idle server {rss_mb(server.pid):.0f} MB")
        speech, music = folders
        start = time.perf_counter()
        client.predict(speech=speech, music=music, api_name="/align")
        print(f"  /align: {time.perf_counter() - start:.1f} s; server {rss_mb(server.pid):.0f} MB")
        for alpha in alphas:
            inputs = dict(method="permute", alpha=alpha, speech=speech, music=music)
            if full:
                first, total, stage, last = staged(client, **inputs)
                timing = f"first answer ({stage}) {first:.1f} s, {last} {total:.1f} s"
            else:
                first, stage = first_answer(client, **inputs)
                timing = f"first answer ({stage}) {first:.1f} s"
            print(f"  release permute α={alpha}: {timing}; server {rss_mb(server.pid):.0f} MB, "
                  f"load {os.getloadavg()[0]:.1f}")
        idle = idle_after(server.pid, up, limit=idle_limit)
        said = (f"idle {idle:.0f} s after start-up (the inputs' scores done and kept)" if idle < float("inf") else
                f"not idle within {idle_limit:.0f} s of start-up (the inputs' scores not all kept)")
        print(f"  {said}; server {rss_mb(server.pid):.0f} MB; load {os.getloadavg()[0]:.1f}")
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standins", type=Path, default=ROOT / "runs" / "standins")
    parser.add_argument("--releases", type=int, default=1, help="releases after the first, each a new setting")
    parser.add_argument("--full", action="store_true", help="wait for each release's full suite")
    parser.add_argument("--idle-limit", type=float, default=3600, help="seconds to wait for the server to go idle")
    parser.add_argument("--store", type=Path, help="the result store's folder (default: a new empty one)")
    args = parser.parse_args()
    folders = []
    for seed, name in enumerate(PAIR):
        folder = args.standins / name
        if not (folder / "config.json").is_file():
            write_standin(name, args.standins, seed=seed)
        folders.append(str(folder.resolve()))
    print(f"merge lab at full size: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"device {os.environ.get('MERGE_LAB_DEVICE', 'auto')}")
    with tempfile.TemporaryDirectory(prefix="bench-fullsize-store-") as empty:
        store = args.store or Path(empty)
        first = [0.1, *(round(0.2 + 0.1 * i, 2) for i in range(args.releases))]
        run("new pair (empty store)", folders, store, first, args.full, args.idle_limit)
        run("restart (store kept)", folders, store, [0.1, round(0.25 + 0.1 * args.releases, 2)], args.full,
            args.idle_limit)


if __name__ == "__main__":
    main()
