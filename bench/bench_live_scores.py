"""The live scores' quick estimate against the full probe suite, on a fixed set of merges of the built-in encoders.

    python bench/bench_live_scores.py [--budget 2] [--threads 2] [--json OUT]

For each setting (both parents; linear and permute at α 0.1, 0.5, 0.9; task arithmetic; TIES; DRM;
speech_ft), merges, then runs `merging.live.LiveProbes.stages` to the end: its first stage is the
quick estimate, its last the full suite (2,150 clips, the benchmark's probes and seed). Prints, against the
full suite: Spearman rank correlation of the overall averages, mean absolute error of the averages (overall,
speech, music) and per task, the share of (merge, task) pairs whose 95 % interval contains the full-suite
score, for every stage below the full one; and the quick stage's wall time beside the full suite's from
scratch (a fresh merge scored on every clip, `--full-timing` of them), measured in the same run.
Figures are also given without the two parent rows, whose quick estimates are exact by construction.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from live_encoders import PARENT_ROLES, SETTINGS, build, load_models, speech_music_alignment  # noqa: E402
from merging.live import LiveProbes  # noqa: E402
from merging.probes import builtin_suite  # noqa: E402


def spearman(a, b) -> float:
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def figures(rows: list[dict], stage: str, tasks: list[str], domains: dict[str, str]) -> dict:
    def avg(scores, domain=None):
        return float(np.mean([scores[t] for t in tasks if domain is None or domains[t] == domain]))

    est = [r["stages"][stage]["scores"] for r in rows]
    full = [r["stages"]["full"]["scores"] for r in rows]
    intervals = [r["stages"][stage]["intervals"] for r in rows]
    return {
        "spearman": spearman([avg(e) for e in est], [avg(f) for f in full]),
        "avg_mae": {name: float(np.mean([abs(avg(e, d) - avg(f, d)) for e, f in zip(est, full)]))
                    for name, d in (("overall", None), ("speech", "speech"), ("music", "music"))},
        "task_mae": {t: float(np.mean([abs(e[t] - f[t]) for e, f in zip(est, full)])) for t in tasks},
        "coverage": float(np.mean([i[t][0] <= f[t] <= i[t][1] for i, f in zip(intervals, full) for t in tasks])),
        "average_coverage": float(np.mean([i["avg"][0] <= avg(f) <= i["avg"][1] for i, f in zip(intervals, full)])),
        "mean_width": float(np.mean([i[t][1] - i[t][0] for i in intervals for t in tasks])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds for the quick stage")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full-timing", type=int, default=2, help="merges also scored on the full suite from scratch")
    parser.add_argument("--per-class", type=int, help="fix the quick stage's clips per class (default: fit the budget)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = load_models()
    alignment = speech_music_alignment(models)
    suite = builtin_suite()
    live = LiveProbes(suite, budget_seconds=args.budget)
    start = time.perf_counter()
    parents = {role: live.parent(models[role]) for role in PARENT_ROLES}
    plan = live.plan()
    if args.per_class:
        plan = [args.per_class, *[k for k in plan if k == 0 or k > args.per_class]]
    for setting in SETTINGS:
        live.prepare(parents[setting.parents[0]], parents[setting.parents[1]], plan=plan)
    print(f"parents scored and calibrated in {time.perf_counter() - start:.0f} s; {live.clip_seconds * 1e3:.1f} ms per clip; "
          f"plan (clips per class, 0 = full suite): {plan}, quick stage {len(live.subset(plan[0]).clips()) if plan[0] else len(suite.clips)} clips")
    rows, quick_seconds, full_seconds = [], [], []
    for number, setting in enumerate(SETTINGS):
        encoder = build(setting, models, alignment)
        first, second = (parents[role] for role in setting.parents)
        stages, clock = {}, time.perf_counter()
        for scores in live.stages(encoder, first, second, setting.position, plan=plan):
            stages[scores.stage] = scores.summary()
            if len(stages) == 1:
                quick_seconds.append(time.perf_counter() - clock)
        if number < args.full_timing:
            clock = time.perf_counter()
            fresh = build(setting, models, alignment)
            list(live.stages(fresh, first, second, setting.position, plan=[0]))
            full_seconds.append(time.perf_counter() - clock)
        rows.append({"name": setting.name, "stages": stages})
        quick = next(iter(stages.values()))
        print(f"  {setting.name:<26} quick avg {quick['avg']:5.1f} [{quick['intervals']['avg'][0]:.1f}, "
              f"{quick['intervals']['avg'][1]:.1f}]  full avg {stages['full']['avg']:5.1f}  ({quick_seconds[-1]:.2f} s)")
    tasks = [t.name for t in suite.tasks]
    domains = {t.name: t.domain for t in suite.tasks}
    stage_names = [s for s in rows[0]["stages"] if s != "full"]
    report = {}
    for stage in stage_names:
        for label, chosen in (("", rows), (" (merges only)", [r for r in rows if "encoder" not in r["name"]])):
            f = figures(chosen, stage, tasks, domains)
            report[stage + label] = f
            print(f"{stage}{label}: Spearman {f['spearman']:.2f} · MAE of averages {f['avg_mae']['overall']:.1f} "
                  f"(speech {f['avg_mae']['speech']:.1f}, music {f['avg_mae']['music']:.1f}) · per task "
                  + ", ".join(f"{t} {v:.1f}" for t, v in f["task_mae"].items())
                  + f" · 95 % interval coverage {f['coverage']:.2f} (averages {f['average_coverage']:.2f}), "
                  f"mean width {f['mean_width']:.1f}")
    quick_s, full_s = statistics.median(quick_seconds), statistics.median(full_seconds) if full_seconds else float("nan")
    print(f"quick stage {quick_s:.2f} s (median over {len(quick_seconds)} merges) against the full suite from scratch "
          f"{full_s:.2f} s: ratio {quick_s / full_s:.2f}; {args.threads} torch threads")
    if args.json:
        quick = report[stage_names[0]] if stage_names else None
        Path(args.json).write_text(json.dumps({
            "spearman": quick and quick["spearman"], "avg_mae": quick and quick["avg_mae"],
            "task_mae": quick and quick["task_mae"], "coverage": quick and quick["coverage"],
            "quick_seconds": quick_s, "full_seconds": full_s, "merges": rows, "stages": report, "plan": plan,
        }, indent=2))


if __name__ == "__main__":
    main()
