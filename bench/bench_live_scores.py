"""Decision quality of the live stages against the full probe suite, on a spread set of merges of the built-in encoders.

    python bench/bench_live_scores.py [--per-class 4] [--budget 2] [--threads 2] [--json OUT]

Scores every merge of `live_encoders.SETTINGS` (30: both inputs, linear and permute over the α grid, task arithmetic
over its λ grid, TIES, DARE and DRM at two λ pairs, the multi-teacher student, speech_ft at α 0.25 and 0.5) on the
full suite and on every ladder stage's subset (from the same features). A stage's estimates are corrected, as in the
app, by the references the app has after start-up (the five inputs and the linear/permute merges over the α grid),
never by the merge itself (leave one out). For each stage below the full suite, at a fixed clips-per-class
(`--per-class` and the refined stage the app plans after it) and at the stages the budget chooses on this machine,
it prints against the full suite: coverage of the 95 % intervals (tasks, and the three averages), mean width,
Spearman of the overall averages, and over every pair of merges, for the overall, speech and music averages: wrong
calls (the paired interval excludes 0 and the full suite's difference has the other sign, as a share of the calls)
and power (the share of pairs whose full-suite difference exceeds 5 points that the stage calls with the right sign).
The full suite's own calls (paired bootstrap over its test clips) are given too. JSON keys per stage: coverage,
average_coverage, mean_width, spearman, wrong_calls, power_5.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from live_encoders import (INPUT_ROWS, INPUTS, SETTINGS, STARTUP, build, load_models,  # noqa: E402
                            speech_music_alignment)
from merging.estimate import (AVERAGES, Reference, bootstrapped, corrected, draws, full_difference,  # noqa: E402
                              inflation, tasks_of)
from merging.estimate import t_quantile as quantile  # noqa: E402
from merging.live import LiveProbes, full_subset, score_subset  # noqa: E402
from merging.probes import builtin_suite  # noqa: E402

TARGETS = {"coverage": 0.93, "average_coverage": 0.93, "wrong_calls": 0.05}
POWER_TARGETS = {"quick": 0.5, "refined": 0.8, "full": 0.95}


def spearman(a, b) -> float:
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def score_everything(suite, live, models, alignment, scored: dict) -> dict[str, dict]:
    """Per setting (and input): full-suite results, results on every ladder stage's subset, and the seconds its
    features took; those in `scored` already are kept."""
    for setting in (*SETTINGS, *INPUT_ROWS):
        if setting.name in scored:
            continue
        start = time.perf_counter()
        rows = suite.features(build(setting, models, alignment))
        features_s = time.perf_counter() - start
        take = lambda idx, rows=rows: rows[list(idx)]  # noqa: E731
        full = score_subset(suite, full_subset(suite), take, seed=live.seed)
        ladder = {k: score_subset(suite, live.subset(k), take, seed=live.seed, iterations=live.quick_iterations)
                  for k in live.ladder}
        scored[setting.name] = {"full": without_probes(full), "features_s": features_s,
                                "ladder": {k: without_probes(results) for k, results in ladder.items()}}
        print(f"  {setting.name:<26} full avg {np.mean([r.accuracy for r in full.values()]):5.1f}  "
              f"({features_s:.1f} s features)", flush=True)
    return scored


def without_probes(results: dict) -> dict:
    return {task: replace(r, probe=None) for task, r in results.items()}


def pool_keys() -> list[str]:
    names = {s.role: s.name for s in SETTINGS if s.method is None}
    return [names.get(role, role) for role in INPUTS] + list(STARTUP)


def stage_estimates(scored: dict, k: int, domains: dict, pool: dict) -> dict[str, dict]:
    """Per merge: its estimates at stage k from the pool's references without itself (leave one out)."""
    out = {}
    for name, merge in scored.items():
        references = [r for key, r in pool.items() if key != name]
        tasks, averages, _ = corrected(merge["ladder"][k], references, domains)
        out[name] = {"tasks": tasks, "averages": averages}
    return out


def stage_calls(scored, estimates, k, domains, pool) -> dict[str, list[tuple[float, float, float]]]:
    """Per average: (estimated difference, low, high, full-suite difference) of every pair of merges at stage k."""
    models = corrected(next(iter(scored.values()))["ladder"][k], list(pool.values()), domains)[2]
    calls = {}
    for name, domain in AVERAGES.items():
        tasks = tasks_of(domains, domain)
        factor = inflation(list(pool.values()), models, tasks)
        q = quantile(len(pool))
        sampled = {m: draws(scored[m]["ladder"][k], tasks) for m in scored}
        calls[name] = []
        for a, b in itertools.combinations(scored, 2):
            value = estimates[a]["averages"][name].score - estimates[b]["averages"][name].score
            half = q * np.sqrt(factor * np.var(sampled[a] - sampled[b], ddof=1))
            truth = np.mean([scored[a]["full"][t].accuracy - scored[b]["full"][t].accuracy for t in tasks])
            calls[name].append((value, value - half, value + half, truth))
    return calls


def full_calls(scored, domains) -> dict[str, list]:
    calls = {}
    for name, domain in AVERAGES.items():
        tasks = tasks_of(domains, domain)
        calls[name] = [(*full_difference(scored[a]["full"], scored[b]["full"], tasks),
                        np.mean([scored[a]["full"][t].accuracy - scored[b]["full"][t].accuracy for t in tasks]))
                       for a, b in itertools.combinations(scored, 2)]
    return calls


def decision_quality(calls: dict[str, list]) -> tuple[dict, dict]:
    """(wrong calls as a share of calls, power for > 5-point differences) per average."""
    wrong, power = {}, {}
    for name, rows in calls.items():
        made = [(low, high, truth) for _, low, high, truth in rows if low > 0 or high < 0]
        wrong[name] = float(np.mean([(low > 0 and truth < 0) or (high < 0 and truth > 0) for low, high, truth in made])) \
            if made else 0.0
        large = [(low, high, truth) for _, low, high, truth in rows if abs(truth) > 5]
        power[name] = float(np.mean([(low > 0 and truth > 0) or (high < 0 and truth < 0) for low, high, truth in large])) \
            if large else float("nan")
    return wrong, power


def figures(scored, estimates, calls, domains) -> dict:
    tasks = list(domains)
    names = list(scored)
    full = {m: {t: scored[m]["full"][t].accuracy for t in tasks} for m in names}
    full_avg = {m: {n: np.mean([full[m][t] for t in tasks_of(domains, d)]) for n, d in AVERAGES.items()} for m in names}
    covered = [e["tasks"][t].low <= full[m][t] <= e["tasks"][t].high for m, e in estimates.items() for t in tasks]
    averages = [e["averages"][n].low <= full_avg[m][n] <= e["averages"][n].high for m, e in estimates.items()
                for n in AVERAGES]
    wrong, power = decision_quality(calls)
    return {
        "coverage": float(np.mean(covered)), "average_coverage": float(np.mean(averages)),
        "mean_width": float(np.mean([e["tasks"][t].high - e["tasks"][t].low for e in estimates.values() for t in tasks])),
        "average_width": float(np.mean([e["averages"]["avg"].high - e["averages"]["avg"].low for e in estimates.values()])),
        "spearman": spearman([estimates[m]["averages"]["avg"].score for m in names], [full_avg[m]["avg"] for m in names]),
        "mae": float(np.mean([abs(estimates[m]["averages"]["avg"].score - full_avg[m]["avg"]) for m in names])),
        "wrong_calls": wrong, "power_5": power,
        "calls": {n: int(sum(low > 0 or high < 0 for _, low, high, _ in rows)) for n, rows in calls.items()},
    }


def report(label: str, f: dict) -> None:
    print(f"{label}: coverage {f['coverage']:.3f} tasks / {f['average_coverage']:.3f} averages · mean width "
          f"{f['mean_width']:.1f} (overall average {f['average_width']:.1f}) · Spearman {f['spearman']:.3f} · MAE "
          f"{f['mae']:.2f} · wrong calls " + ", ".join(f"{n} {v:.3f}" for n, v in f["wrong_calls"].items())
          + " · power (>5 pts) " + ", ".join(f"{n} {v:.2f}" for n, v in f["power_5"].items())
          + " · calls " + ", ".join(f"{n} {v}" for n, v in f["calls"].items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=4, help="the fixed quick stage's clips per class")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds for the quick stage the app would choose")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--results", type=Path, help="keep the merges' per-clip results in this file and reuse them")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = load_models()
    alignment = speech_music_alignment(models)
    suite = builtin_suite()
    live = LiveProbes(suite, budget_seconds=args.budget)
    domains = live.domains
    start = time.perf_counter()
    scored = pickle.loads(args.results.read_bytes()) if args.results and args.results.exists() else {}
    scored = score_everything(suite, live, models, alignment, scored)
    if args.results:
        args.results.write_bytes(pickle.dumps(scored))
    spread = {setting.name: scored[setting.name] for setting in SETTINGS}
    live.clip_seconds = sum(m["features_s"] for m in scored.values()) / (len(scored) * len(suite.clips))
    print(f"{len(spread)} merges (and {len(scored) - len(spread)} more inputs) scored in {time.perf_counter() - start:.0f} s "
          f"({live.clip_seconds * 1e3:.1f} ms of features per clip)")
    refined = next(k for k in live.ladder if len(live.subset(k).clips()) >= 3 * len(live.subset(args.per_class).clips()))
    chosen = [k for k in live.plan() if k]
    stages = {f"quick, {args.per_class} per class": args.per_class, f"refined, {refined} per class": refined,
              **{f"budget: {'quick' if i == 0 else 'refined'}, {k} per class": k for i, k in enumerate(chosen)}}
    out = {"plan_budget": live.plan(), "clip_ms": live.clip_seconds * 1e3, "merges": list(spread), "stages": {}}
    for label, k in stages.items():
        pool = {key: Reference(key, scored[key]["full"], scored[key]["ladder"][k]) for key in pool_keys()}
        estimates = stage_estimates(spread, k, domains, pool)
        f = figures(spread, estimates, stage_calls(spread, estimates, k, domains, pool), domains)
        out["stages"][label] = {"per_class": k, **f}
        report(label, f)
    full_estimates = {m: dict(zip(("tasks", "averages"), bootstrapped(spread[m]["full"], domains)))
                      for m in spread}
    f = figures(spread, full_estimates, full_calls(spread, domains), domains)
    out["stages"]["full"] = {"per_class": 0, **f}
    report("full suite", f)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
