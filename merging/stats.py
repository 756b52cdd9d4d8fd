"""Bootstrap intervals for probe accuracies and their averages, resampling test clips by clip set.

Tasks that label the same clips (keyword and speaker label one set of spoken clips; instrument family and pitch
class one set of notes) are resampled together: one draw of that set's clips serves all its tasks, so an average
or a difference over tasks sees how they err together. The draw is seeded by (seed, the set's clips), so two
encoders scored on the same clips get the same resampled clips (a paired bootstrap), and a set's draws do not
depend on which other tasks are present. An interval is the percentile interval of the statistic recomputed on
every resample.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

RESAMPLES = 2000
Correct = Mapping[str, Sequence[bool]]  # task -> whether each of its test clips was classified correctly
Clips = Mapping[str, Sequence[int]]  # task -> its test clips (ids shared by the tasks that label the same clips)


def _indices(clips: tuple[int, ...], resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(np.asarray(clips, dtype=np.int64).tobytes()), len(clips)])
    return rng.integers(0, len(clips), size=(resamples, len(clips)))


def clip_sets(clips: Clips) -> dict[tuple[int, ...], list[str]]:
    """Tasks grouped by the clips they label (each group is resampled as one); ValueError for tasks that share some
    clips but not all (no draw of one set could serve both)."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for task, ids in clips.items():
        groups.setdefault(tuple(int(i) for i in ids), []).append(task)
    sets = list(groups)
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            if set(a) & set(b):
                raise ValueError(f"tasks {groups[a]} and {groups[b]} share some test clips but not all")
    return groups


def resampled_accuracies(correct: Correct, clips: Clips, *, resamples: int = RESAMPLES,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """Per task, `resamples` accuracies (percent) of its test clips drawn with replacement, jointly per clip set."""
    out = {}
    for ids, tasks in clip_sets({task: clips[task] for task in correct}).items():
        draws = _indices(ids, resamples, seed) if ids else None
        for task in tasks:
            values = np.asarray(correct[task], dtype=bool)
            if values.ndim != 1 or values.size == 0 or values.size != len(ids):
                raise ValueError(f"task '{task}' needs a non-empty 1-D array of per-clip correctness, one per clip")
            out[task] = 100.0 * values[draws].mean(1)
    return out


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def average_interval(correct: Correct, clips: Clips, *, level: float = 0.95, resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """Interval of the mean accuracy over the given tasks (one task: that task's accuracy)."""
    if not correct:
        raise ValueError("an interval needs at least one task")
    samples = resampled_accuracies(correct, clips, resamples=resamples, seed=seed)
    return _percentiles(np.mean(list(samples.values()), axis=0), level)


def difference_interval(first: Correct, second: Correct, clips: Clips, *, level: float = 0.95,
                        resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Interval of (first's average − second's average) over the same tasks and clips, resampled in pairs."""
    if set(first) != set(second) or any(len(first[t]) != len(second[t]) for t in first):
        raise ValueError("a paired difference needs the same tasks with the same number of clips")
    a = resampled_accuracies(first, clips, resamples=resamples, seed=seed)
    b = resampled_accuracies(second, clips, resamples=resamples, seed=seed)
    return _percentiles(np.mean([a[t] - b[t] for t in first], axis=0), level)
