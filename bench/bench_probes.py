"""Re-scoring a newly merged encoder on every probe task, against the model's own forward in the same run.

    python bench/bench_probes.py [--threads 2] [--repeats 3] [--max-train N --max-test N]

Loads the built-in speech and music encoders and the shipped probe suite (all of it unless limited),
then, per repeat, merges them anew (`linear` at a fresh α, so no cached features apply) and times
features and probe fitting + scoring: once with `merging.features.hidden_states` (what the library
uses) and once with `HubertModel.forward` (the baseline). Prints medians and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import merging.probes as probes  # noqa: E402
from merging.catalogue import MODELS_DIR, MODEL_NAMES  # noqa: E402
from merging.pipeline import merged_encoder  # noqa: E402
from merging.encoders import load_encoder  # noqa: E402


def models_forward(model, audio):
    return model(audio, output_hidden_states=True).hidden_states


def rescore(suite: probes.ProbeSuite, encoder) -> tuple[float, float]:
    start = time.perf_counter()
    suite.features(encoder)
    features_done = time.perf_counter()
    suite.score(encoder)
    return features_done - start, time.perf_counter() - features_done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-train", type=int)
    parser.add_argument("--max-test", type=int)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair = {role: load_encoder(MODELS_DIR / MODEL_NAMES[role]) for role in ("speech", "music")}
    suite = probes.builtin_suite(max_train=args.max_train, max_test=args.max_test)
    print(f"{len(suite.clips)} clips, {len(suite.tasks)} tasks, batch {suite.batch_size}, {args.threads} threads, "
          f"{suite.fit_iterations} L-BFGS steps per probe")
    library = probes.hidden_states
    times: dict[str, list[tuple[float, float]]] = {"baseline (HubertModel.forward)": [], "merging.features": []}
    for repeat in range(args.repeats):  # alternate, so drifting machine load hits both alike
        for path, forward in zip(times, (models_forward, library)):
            probes.hidden_states = forward
            encoder = merged_encoder("linear", pair, alpha=0.3 + 0.01 * repeat + 0.1 * (forward is library))
            times[path].append(rescore(suite, encoder))
    probes.hidden_states = library
    totals = {}
    for path, runs in times.items():
        features, fit = (statistics.median(r[i] for r in runs) for i in (0, 1))
        totals[path] = features + fit
        print(f"{path:<32} features {features:6.2f} s ({1e3 * features / len(suite.clips):.2f} ms/clip)  "
              f"fit+score {fit:5.2f} s  total {features + fit:6.2f} s")
    base, fast = totals.values()
    print(f"ratio merging.features / baseline: {fast / base:.2f}")


if __name__ == "__main__":
    main()
