"""The app at full size, as a person meets it: HuBERT-base and MERT-v0-public stand-ins (random weights, the hub
layouts of scripts/make_standins.py) offered as extra encoders, then /align, a first slider release and later ones,
each timed to its first answer (the quick stage) and to the full suite, with the server's resident memory.

    python bench/bench_app_fullsize.py [--releases 2] [--standins runs/standins]

Scores of random weights mean nothing; the times and the memory are what this measures.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "scripts")]
from bench_app import connect, free_loopback_port, staged  # noqa: E402
from make_standins import write_standin  # noqa: E402

from merging.catalogue import MODELS_DIR  # noqa: E402

PAIR = ("hubert-base-ls960", "MERT-v0-public")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--standins", type=Path, default=ROOT / "runs" / "standins")
    parser.add_argument("--releases", type=int, default=2, help="slider releases after the first")
    args = parser.parse_args()
    folders = []
    for seed, name in enumerate(PAIR):
        folder = args.standins / name
        if not (folder / "config.json").is_file():
            write_standin(name, args.standins, seed=seed)
        folders.append(str(folder.resolve()))
    port = free_loopback_port()
    env = {**os.environ, "MERGE_LAB_MODELS": str(MODELS_DIR), "MERGE_LAB_ENCODERS": ",".join(folders),
           "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    try:
        client = connect(f"http://127.0.0.1:{port}/")
        print(f"merge lab at full size: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}; idle server {rss_mb(server.pid):.0f} MB")
        speech, music = folders
        start = time.perf_counter()
        client.predict(speech=speech, music=music, api_name="/align")
        print(f"/align: {time.perf_counter() - start:.1f} s; server {rss_mb(server.pid):.0f} MB")
        for release in range(args.releases + 1):
            alpha = round(0.1 + 0.2 * release, 2)
            first, total, stage, last = staged(client, method="permute", alpha=alpha, speech=speech, music=music)
            which = "first release" if release == 0 else "later release"
            print(f"{which} (permute α={alpha}): first answer ({stage}) {first:.1f} s, {last} {total:.1f} s; "
                  f"server {rss_mb(server.pid):.0f} MB")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
