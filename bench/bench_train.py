"""How long each built-in encoder's recipe takes on this machine, against the 30-minute budget.

    python bench/bench_train.py [--steps 6] [--device cpu]

Times (CPU time per thread, robust to other jobs on the machine) the data preparation (decoding the training set, k-means targets) once per domain and a few
steps of every model's own loop at its own batch size, then prints the full schedule's estimated
wall time. Needs the rendered training audio (python -m merging.train data).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import merging.train as recipe  # noqa: E402
from merging.train import RECIPES, TEACHER_LAYERS  # noqa: E402
from merging.train.loops import distill, finetune_classifier, masked_prediction  # noqa: E402
from merging.train.targets import pitch_distributions  # noqa: E402

BUDGET_MINUTES = 30


def timed(fn, threads: int = 1):
    """(result, seconds): the process's CPU time over the `threads` it keeps busy, so that other jobs on
    a shared machine do not inflate it (on an idle machine it is the wall time; 1 over-estimates)."""
    start = time.process_time()
    result = fn()
    return result, (time.process_time() - start) / threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per model (after one warm-up step)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    prep, audio, labels = {}, {}, {}
    for kind in ("speech", "music"):
        (clips, _), decode = timed(lambda: recipe.load_training_set(kind))
        audio[kind] = clips.to(device)
        labels[kind], cluster = timed(lambda: recipe._labels(audio[kind], kind, 0))
        prep[kind] = decode + cluster
        print(f"{kind} data: decode {decode:.1f}s, k-means targets {cluster:.1f}s", flush=True)
    distributions, pitch_s = timed(lambda: pitch_distributions(audio["music"]))
    teachers = {k: recipe._fresh_model(4, 0, device) for k in ("speech", "music")}
    base_labels = torch.cat([labels["speech"], labels["music"] + recipe.CLUSTERS])
    both = torch.cat([audio["speech"], audio["music"]])

    def run(key: str, steps: int) -> None:
        schedule = dataclasses.replace(RECIPES[key].schedule, steps=steps)
        if key in ("speech", "music"):
            masked_prediction(recipe._fresh_model(4, 0, device), audio[key], labels[key], recipe.CLUSTERS, schedule, seed=0,
                              distributions=distributions if key == "music" else (), frontend_lr=recipe.FRONTEND_LR)
        elif key == "student_base":
            masked_prediction(recipe._fresh_model(2, 0, device), both, base_labels, 2 * recipe.CLUSTERS, schedule, seed=0)
        elif key == "speech_ft":
            finetune_classifier(recipe._fresh_model(4, 0, device), audio["speech"], labels["speech"][:, 0] % 20, 20,
                                schedule, seed=0)
        else:
            names = RECIPES[key].data  # the teachers of the student's own audio
            data = both if len(names) == 2 else audio[names[0]]
            distill(recipe._fresh_model(2, 0, device), [(teachers[n], TEACHER_LAYERS) for n in names], data, schedule, seed=0)

    print(f"\n| model | s/step | steps | data prep s | estimated total min | within {BUDGET_MINUTES} min |\n|---|---|---|---|---|---|")
    for key, spec in RECIPES.items():
        run(key, 1)  # warm-up
        _, seconds = timed(lambda: run(key, args.steps), torch.get_num_threads())
        per_step = seconds / args.steps
        data_s = sum(prep[kind] for kind in spec.data) + (pitch_s if key == "music" else 0)
        total = (per_step * spec.schedule.steps + data_s) / 60
        print(f"| {spec.name} | {per_step:.2f} | {spec.schedule.steps} | {data_s:.0f} | {total:.1f} | "
              f"{'yes' if total <= BUDGET_MINUTES else 'NO'} |", flush=True)
    print(f"\n{device}, {torch.get_num_threads()} threads, torch {torch.__version__}")


if __name__ == "__main__":
    main()
