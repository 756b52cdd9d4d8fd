"""What an encoder hears: its probes' class probabilities for many clips at once, over sliding windows
of a long clip, and the confidence in one label across a set of clips (e.g. mixes at rising levels)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .probes import LinearProbe, ProbeTask, class_probabilities, layer_features

Reading = dict[str, dict[str, float]]  # task -> label -> probability
WINDOW_SECONDS = 1.0  # the probe clips' length
MAX_WINDOWS = 48


def read(encoder, probes: Mapping[str, LinearProbe], tasks: Sequence[ProbeTask], clips: Sequence[np.ndarray],
         sample_rate: int, batch_size: int = 8) -> list[Reading]:
    """Each probe's class probabilities for each clip (mean-pooled features, as the probes were fitted)."""
    return class_probabilities(dict(probes), tasks, layer_features(encoder, clips, sample_rate, batch_size))


def windows(clip: np.ndarray, sample_rate: int, *, seconds: float = WINDOW_SECONDS,
            max_windows: int = MAX_WINDOWS) -> tuple[np.ndarray, list[np.ndarray]]:
    """(start times, windows) of `seconds` each, evenly spread from the clip's start to its end, a quarter
    window apart or sparser so that there are at most `max_windows`; one window for a short clip."""
    size = int(seconds * sample_rate)
    if len(clip) <= size:
        return np.zeros(1), [clip]
    count = min(max_windows, int(np.ceil((len(clip) - size) / (size / 4))) + 1)
    starts = np.linspace(0, len(clip) - size, count).round().astype(int)
    return starts / sample_rate, [clip[s : s + size] for s in starts]


def top_labels(readings: Sequence[Reading]) -> dict[str, list[tuple[str, float]]]:
    """Per task, each reading's most probable label and its probability."""
    tasks = readings[0].keys() if readings else ()
    return {task: [max(r[task].items(), key=lambda item: item[1]) for r in readings] for task in tasks}


def confidence(readings: Sequence[Reading], task: str, label: str) -> list[float]:
    return [r[task][label] for r in readings]
