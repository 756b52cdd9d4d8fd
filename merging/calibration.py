"""Calibration audio for correlation alignment: the built-in clips, a user's folder, or test signals."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .state import MergeError

SAMPLE_RATE = 16000
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "assets" / "audio" / "calibration"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


def synthetic_signals(n: int = 64, seconds: float = 1.0, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> list[np.ndarray]:
    """Deterministic chirps, harmonic tones and noise: a stand-in when no recorded calibration exists."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    clips = []
    for i in range(n):
        f0, f1 = rng.uniform(60, 3000, size=2)
        if i % 3 == 0:
            clip = np.sin(2 * np.pi * (f0 + (f1 - f0) * t / (2 * seconds)) * t)
        elif i % 3 == 1:
            clip = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * np.exp(-3 * t)
        else:
            clip = rng.standard_normal(len(t)) * np.hanning(len(t))
        clip = clip + 0.05 * rng.standard_normal(len(t))
        clips.append((0.9 * clip / np.abs(clip).max()).astype(np.float32))
    return clips


def load_calibration_dir(directory: str | Path, sample_rate: int = SAMPLE_RATE, limit: int | None = None) -> list[np.ndarray]:
    """Every audio file in `directory` (sorted, recursively), mono at `sample_rate`."""
    from .audio import load_audio

    directory = Path(directory)
    if not directory.is_dir():
        raise MergeError(f"calibration folder '{directory}' does not exist")
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)[:limit]
    if not paths:
        raise MergeError(f"calibration folder '{directory}' holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return [load_audio(path, sample_rate)[0] for path in paths]


def builtin_calibration(sample_rate: int = SAMPLE_RATE, limit: int | None = None) -> tuple[list[np.ndarray], str]:
    """The project's shipped calibration clips, or generated test signals until those exist."""
    if BUILTIN_DIR.is_dir() and any(BUILTIN_DIR.iterdir()):
        return load_calibration_dir(BUILTIN_DIR, sample_rate, limit), "built-in calibration clips"
    return synthetic_signals(limit or 64, sample_rate=sample_rate), "generated test signals"
