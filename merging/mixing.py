"""Speech over music: mixing two clips at a music level relative to the speech (pure numpy), and the
built-in keyword and instrument clips to mix."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .state import MergeError

LEVEL_RANGE_DB = (-30.0, 30.0)  # music level relative to the speech
SWEEP_LEVELS_DB = tuple(range(-30, 31, 5))
MIX_PEAK = 0.9  # the built-in clips' peak
MAX_MIX_SECONDS = 10.0


def rms(clip: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(clip, dtype=np.float64))))


def mix(speech: np.ndarray, music: np.ndarray, level_db: float, sample_rate: int, *,
        max_seconds: float = MAX_MIX_SECONDS) -> np.ndarray:
    """`speech` plus `music` scaled so that its RMS is `level_db` above the speech's (each clip's RMS over its
    own samples), both from time 0, the shorter padded with silence, each cut to `max_seconds`; the sum
    is scaled to a peak of MIX_PEAK, so it never clips. Inputs are left unchanged."""
    low, high = LEVEL_RANGE_DB
    if not isinstance(level_db, (int, float)) or not math.isfinite(level_db) or not low <= level_db <= high:
        raise MergeError(f"music level must be a number of dB from {low:g} to {high:g}, got {level_db!r}")
    limit = int(max_seconds * sample_rate)
    clips = []
    for name, clip in (("speech", speech), ("music", music)):
        clip = np.asarray(clip, dtype=np.float32)[:limit]
        if clip.ndim != 1 or rms(clip) < 1e-6:
            raise MergeError(f"the {name} clip must be mono and not silent")
        clips.append(clip)
    speech, music = clips
    gain = rms(speech) / rms(music) * 10 ** (level_db / 20)
    out = np.zeros(max(len(speech), len(music)), dtype=np.float32)
    out[: len(speech)] += speech
    out[: len(music)] += np.float32(gain) * music
    return out * np.float32(MIX_PEAK / np.abs(out).max())


@dataclass(frozen=True)
class BuiltinClip:
    label: str  # what the menu shows
    path: Path
    truth: dict[str, str]  # task -> label


def builtin_clips(kind: str, root: str | Path | None = None) -> list[BuiltinClip]:
    """The first test clip of every keyword (kind 'speech') or every instrument family (kind 'music')."""
    from .synth.assets import ASSETS_DIR, load_manifest

    task, probe_set = {"speech": ("keyword", "speech"), "music": ("instrument_family", "notes")}[kind]
    root = Path(root or ASSETS_DIR).resolve()
    manifest = load_manifest(root)
    seen, out = set(), []
    for row in manifest["files"]:
        labels = row["labels"]
        if row["split"] != "test" or row["probe_set"] != probe_set or labels[task] in seen:
            continue
        seen.add(labels[task])
        other = labels.get("speaker") if kind == "speech" else labels.get("pitch_class")
        label = f"“{labels[task]}” ({other})" if kind == "speech" else f"{labels[task]} ({other})"
        out.append(BuiltinClip(label, root / row["path"], {k: v for k, v in labels.items() if k != "domain"}))
    order = manifest["tasks"][task]["labels"]
    return sorted(out, key=lambda clip: order.index(clip.truth[task]))
