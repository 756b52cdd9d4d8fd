"""Bootstrap intervals for probe accuracies and their averages, resampling test clips.

Each task's test clips are resampled independently (with replacement), with a generator seeded by
(seed, task name): a task's resamples do not depend on which other tasks are present, and two
encoders scored on the same clips get the same resampled indices (a paired bootstrap). An average's
interval recomputes the average over tasks on every resample and takes the percentile interval.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

RESAMPLES = 2000


def _indices(task: str, n: int, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    return rng.integers(0, n, size=(resamples, n))


def resampled_accuracies(correct: Mapping[str, Sequence[bool]], *, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    """Per task, `resamples` accuracies (percent) of its test clips drawn with replacement."""
    out = {}
    for task, values in correct.items():
        values = np.asarray(values, dtype=bool)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"task '{task}' needs a non-empty 1-D array of per-clip correctness")
        out[task] = 100.0 * values[_indices(task, values.size, resamples, seed)].mean(1)
    return out


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def average_interval(correct: Mapping[str, Sequence[bool]], *, level: float = 0.95, resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """Interval of the mean accuracy over the given tasks (one task: that task's accuracy)."""
    if not correct:
        raise ValueError("an interval needs at least one task")
    samples = resampled_accuracies(correct, resamples=resamples, seed=seed)
    return _percentiles(np.mean(list(samples.values()), axis=0), level)


def difference_interval(first: Mapping[str, Sequence[bool]], second: Mapping[str, Sequence[bool]], *,
                        level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Interval of (first's average − second's average) over the same tasks and clips, resampled in pairs."""
    if set(first) != set(second) or any(len(first[t]) != len(second[t]) for t in first):
        raise ValueError("a paired difference needs the same tasks with the same number of clips")
    a = resampled_accuracies(first, resamples=resamples, seed=seed)
    b = resampled_accuracies(second, resamples=resamples, seed=seed)
    return _percentiles(np.mean([a[t] - b[t] for t in first], axis=0), level)
