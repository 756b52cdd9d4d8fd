"""Load test of the app: several concurrent gradio_client sessions mixing merges, clip uploads and alignments.

Starts `python app.py` on a free loopback port (the built-in encoders of assets/models, or --models), or
uses --url. After a warm-up (one alignment and one merge per method, so that every input encoder's
probes are fitted), --clients sessions run at once for --seconds or --requests each, whichever ends
first. Each session aligns once, then loops: mostly /merge with a random method, α and λs (on the
sliders' steps), often /probe_clip with an uploaded example clip, sometimes /align (cached), pausing
--think seconds between requests on average (uniform from 0 to twice that; the default 8 s models a
person who reads the scores and plots, or listens, before the next slider release). A /merge is timed to its
first streamed answer (the quick stage); its refinement goes on in the server meanwhile, as on the page, until
that session's next release supersedes it. Prints latency
percentiles and errors per endpoint, and the server's memory (VmRSS and its peak VmHWM from /proc)
before, during and after the run.

    python bench/load_app.py [--clients 8] [--seconds 120] [--requests 1000] [--think 8] [--url URL --pid PID]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_app import ROOT, answers, connect, running_app  # noqa: E402

from merging.methods import METHODS  # noqa: E402

EXAMPLES = sorted((ROOT / "assets" / "audio" / "examples").glob("*.ogg"))
REQUEST_TIMEOUT_S = 120.0
MIX = (("/merge", 0.6), ("/probe_clip", 0.3), ("/align", 0.1))  # share of requests per endpoint
TARGET_P95_MERGE_S = 5.0  # the target for the built-in encoders on 2 CPU cores, with 0 errors


@dataclass
class Tally:
    """Latencies and errors per endpoint, from every client thread."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    inside: list[float] = field(default_factory=list)  # merge + probe time inside the server
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, endpoint: str, seconds: float, error: str | None = None, inside: float | None = None) -> None:
        with self.lock:
            self.seconds[endpoint].append(seconds)
            if error:
                self.errors[endpoint].append(error)
            if inside is not None:
                self.inside.append(inside)


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


class MemoryWatch(threading.Thread):
    """Samples the server's VmRSS once a second while the load runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.samples.append(memory_kb(self.pid)["VmRSS"])


def merge_settings(rng: random.Random) -> dict:
    """A random slider release: α on 0.01 steps, λs on 0.05 steps (the app's sliders)."""
    return {"method": rng.choice(list(METHODS)), "alpha": rng.randint(0, 100) / 100,
            "lambda_speech": rng.randint(0, 20) / 20, "lambda_music": rng.randint(0, 20) / 20}


def call(client, endpoint: str, rng: random.Random):
    """One request as a person's page would send it. A /merge counts until its first streamed answer (the quick
    stage, what a person reads after a slider release); its refinement goes on in the server until the session's
    next release supersedes it. Returns the seconds its weights took inside the server, if any."""
    from gradio_client import handle_file

    if endpoint == "/merge":
        job = client.submit(**merge_settings(rng), api_name="/merge")
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        while not answers(job):
            if job.done():
                job.result()  # raises the app's message
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer within {REQUEST_TIMEOUT_S:g} s")
            time.sleep(0.02)
        return answers(job)[0][3]["merge_seconds"]
    if endpoint == "/probe_clip":
        client.submit(handle_file(str(rng.choice(EXAMPLES))), api_name="/probe_clip").result(timeout=REQUEST_TIMEOUT_S)
    else:
        client.submit(api_name="/align").result(timeout=REQUEST_TIMEOUT_S)
    return None


def timed_call(client, endpoint: str, rng: random.Random, tally: Tally) -> None:
    start = time.perf_counter()
    try:
        inside = call(client, endpoint, rng)
        tally.add(endpoint, time.perf_counter() - start, inside=inside)
    except Exception as error:  # counted and reported: the load goes on
        tally.add(endpoint, time.perf_counter() - start, error=f"{type(error).__name__}: {error}"[:200])


def session(url: str, seed: int, deadline: float, requests: int, think: float, tally: Tally) -> None:
    rng = random.Random(seed)
    client = connect(url)
    timed_call(client, "/align", rng, tally)  # so that this session can merge with permute
    endpoints, weights = zip(*MIX)
    for _ in range(requests - 1):
        if time.monotonic() > deadline:
            break
        time.sleep(rng.uniform(0, 2 * think))
        timed_call(client, rng.choices(endpoints, weights)[0], rng, tally)


def warm_up(url: str) -> float:
    """One alignment and one merge per method: every input encoder's probes fitted before the load."""
    start = time.perf_counter()
    client = connect(url)
    client.predict(api_name="/align")
    for method in METHODS:
        client.predict(method=method, api_name="/merge")
    return time.perf_counter() - start


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def report(tally: Tally, wall: float) -> None:
    total = sum(len(v) for v in tally.seconds.values())
    print(f"{total} requests in {wall:.0f} s ({total / wall:.2f}/s), "
          f"{sum(len(v) for v in tally.errors.values())} errors")
    print(f"{'endpoint':<12} {'count':>6} {'errors':>6} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'max s':>7}")
    for endpoint, times in sorted(tally.seconds.items()):
        ordered = sorted(times)
        print(f"{endpoint:<12} {len(ordered):>6} {len(tally.errors[endpoint]):>6} "
              + " ".join(f"{percentile(ordered, q):>7.2f}" for q in (50, 95, 99)) + f" {ordered[-1]:>7.2f}")
    if tally.inside:
        inside = sorted(tally.inside)
        print(f"/merge weights written inside the server: p50 {percentile(inside, 50):.2f} s, "
              f"p95 {percentile(inside, 95):.2f} s")
    for endpoint, errors in tally.errors.items():
        for error in errors[:3]:
            print(f"error on {endpoint}: {error}")
    merges = sorted(tally.seconds.get("/merge", [])) or [float("inf")]
    met = percentile(merges, 95) < TARGET_P95_MERGE_S and not any(tally.errors.values())
    print(f"target (0 errors, p95 /merge under {TARGET_P95_MERGE_S:g} s): {'met' if met else 'NOT met'}")


def report_memory(before: dict[str, int], after: dict[str, int], samples: list[int]) -> None:
    mb = 1024
    print(f"server memory: RSS before {before['VmRSS'] / mb:.0f} MB, after {after['VmRSS'] / mb:.0f} MB; "
          f"peak RSS (VmHWM) before {before['VmHWM'] / mb:.0f} MB, after {after['VmHWM'] / mb:.0f} MB")
    if len(samples) >= 4:
        quarters = [samples[min(len(samples) - 1, len(samples) * k // 4)] / mb for k in range(4)] + [samples[-1] / mb]
        print("RSS across the run (start, 1/4, 1/2, 3/4, end): " + ", ".join(f"{q:.0f}" for q in quarters) + " MB")


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent sessions (default 8)")
    parser.add_argument("--seconds", type=float, default=120, help="stop starting requests after this (default 120)")
    parser.add_argument("--requests", type=int, default=1000, help="at most this many requests per client")
    parser.add_argument("--think", type=float, default=8.0,
                        help="mean pause between a client's requests, s (default 8: a person reading the result)")
    parser.add_argument("--models", type=Path, help="folder of the built-in encoders (default: assets/models)")
    parser.add_argument("--url", help="an app already running (its own models)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its memory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with running_app(args.url, args.models) as (args.url, server, note):
        args.pid = server.pid if server else args.pid
        connect(args.url)
        print(f"merge lab load test: {os.cpu_count()} CPUs, load average before {load_average()}; models: {note}")
        print(f"warm-up (one alignment, one merge per method): {warm_up(args.url):.1f} s")
        before = memory_kb(args.pid) if args.pid else None
        watch = MemoryWatch(args.pid) if args.pid else None
        if watch:
            watch.start()
        tally, start = Tally(), time.monotonic()
        deadline = start + args.seconds
        threads = [threading.Thread(target=session, args=(args.url, args.seed * 1000 + i, deadline, args.requests,
                                                          args.think, tally)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - start
        print(f"{args.clients} clients, think time {args.think:g} s mean, {args.seconds:g} s of new requests")
        report(tally, wall)
        if watch:
            watch.stop.set()
            report_memory(before, memory_kb(args.pid), watch.samples)
        print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
