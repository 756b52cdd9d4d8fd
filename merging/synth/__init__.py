"""Labelled synthetic audio at 16 kHz: spoken keywords from espeak-ng, notes, chords and phrases from
fluidsynth with a General MIDI soundfont, and the shipped clip sets in assets/audio built from them.

Every clip is fixed length, peak-normalised to 0.9, and a pure function of (seed, index): its random
choices come from its own generator and its labels from a per-block shuffle (so every label set is
balanced), which makes results independent of how many workers render them. Each clip is one
espeak-ng or fluidsynth process, so a thread pool renders them in parallel.

The shipped sets (assets/audio) and their manifest: `merging.synth.assets`, rebuilt with
    python -m merging.synth build-assets [--out assets/audio] [--workers N]
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from ..audio import resample
from ..state import MergeError

SAMPLE_RATE = 16000
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
            "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEAKERS = ("en-us+m1", "en-us+f1", "en-gb+m3", "en-gb+f2", "en-gb-scotland+m2", "en-gb-scotland+f3",
            "en-029+m4", "en-gb-x-rp+f4", "en-us-nyc+m5", "en-gb-x-gbclan+m6", "en-gb-x-gbcwmd+f5", "en-us+m7")
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CHORD_INTERVALS = {"major": (0, 4, 7), "minor": (0, 3, 7), "diminished": (0, 3, 6),
                   "augmented": (0, 4, 8), "dominant7": (0, 4, 7, 10)}
CHORD_QUALITIES = tuple(CHORD_INTERVALS)
# General MIDI families: programs (0-based) that TimGM6mb renders clearly pitched and in tune (its
# celesta and accordion are up to 50 cents off, so left out), and a comfortable MIDI note range
FAMILY_PROGRAMS = {
    "piano": ((0, 1, 2, 4, 5), (48, 84)),
    "chromatic_percussion": ((10, 11, 12, 13), (60, 84)),
    "organ": ((16, 17, 18, 19, 20), (48, 79)),
    "guitar": ((24, 25, 26, 27), (45, 76)),
    "bass": ((32, 33, 34, 35, 38), (36, 59)),
    "strings": ((40, 41, 42, 44, 45, 46), (55, 84)),
    "brass": ((56, 57, 60, 61), (50, 77)),
    "reed": ((64, 65, 66, 68, 71), (52, 81)),
    "pipe": ((73, 74, 75, 79), (62, 89)),
    "synth_lead": ((80, 81, 82), (48, 79)),
}
INSTRUMENT_FAMILIES = tuple(FAMILY_PROGRAMS)
CHORD_FAMILIES = ("piano", "organ", "guitar", "strings", "brass", "synth_lead")
MUSIC_KINDS = ("note", "chord", "phrase")
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
PEAK = 0.9
_SPEECH, _OVERLAY = 0, 1  # random streams; music kind k uses stream 2 + k


@dataclass(frozen=True)
class Clip:
    audio: np.ndarray  # float32 mono at SAMPLE_RATE, fixed length, peak PEAK
    labels: dict[str, str]


# ---------------------------------------------------------------- external tools
def require_tools(*tools: str) -> None:
    """Raise MergeError naming the Debian package for each missing tool (and the soundfont)."""
    packages = {"espeak-ng": "espeak-ng", "fluidsynth": "fluidsynth"}
    missing = [f"{tool} (apt-get install {packages[tool]})" for tool in tools if shutil.which(tool) is None]
    if "fluidsynth" in tools and not SOUNDFONT.is_file():
        missing.append(f"{SOUNDFONT} (apt-get install timgm6mb-soundfont)")
    if missing:
        raise MergeError(f"synthetic audio needs {', '.join(missing)}")


def tool_versions() -> dict[str, str]:
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]  # noqa: E731
    return {"espeak-ng": run("espeak-ng", "--version").split("  Data at")[0], "fluidsynth": run("fluidsynth", "--version"),
            "soundfont": f"{SOUNDFONT.name} (sha256 {hashlib.sha256(SOUNDFONT.read_bytes()).hexdigest()[:16]})",
            "libsndfile": sf.__libsndfile_version__}


def _run(cmd: Sequence[str]) -> bytes:
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode}): {result.stderr.decode(errors='replace').strip()[:300]}")
    return result.stdout


def _espeak(word: str, speaker: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's WAV on stdout (its header claims an unknown length) as float32 at SAMPLE_RATE."""
    wav = _run(["espeak-ng", "-v", speaker, "-s", str(speed), "-p", str(pitch), "--stdout", word])
    rate = struct.unpack_from("<I", wav, wav.index(b"fmt ") + 12)[0]
    samples = np.frombuffer(wav[wav.index(b"data") + 8:], dtype="<i2", count=(len(wav) - wav.index(b"data") - 8) // 2)
    return resample(samples.astype(np.float32) / 32768.0, rate, SAMPLE_RATE)


def _midi(program: int, notes: Sequence[tuple[float, float, int, int]], end: float) -> bytes:
    """A one-track standard MIDI file: (start s, length s, pitch, velocity) notes on channel 0 and
    'all sound off' at `end` s. 480 ticks per quarter at 120 bpm: 960 ticks per second."""
    def varlen(value: int) -> bytes:
        out = [value & 0x7F]
        while value := value >> 7:
            out.append(0x80 | (value & 0x7F))
        return bytes(reversed(out))

    events = [(0, 0, bytes([0xC0, program]))]
    for start, length, pitch, velocity in notes:
        events += [(round(start * 960), 2, bytes([0x90, pitch, velocity])),
                   (round((start + length) * 960), 1, bytes([0x80, pitch, 0]))]
    events.append((round(end * 960), 3, bytes([0xB0, 120, 0])))
    track, now = b"", 0
    for tick, _, message in sorted(events):
        track += varlen(tick - now) + message
        now = tick
    track += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track


def _fluidsynth(midi: bytes, seconds: float) -> np.ndarray:
    """Render MIDI (reverb and chorus off) to float32 mono at SAMPLE_RATE, exactly `seconds` long."""
    with tempfile.NamedTemporaryFile(suffix=".mid") as file:
        file.write(midi)
        file.flush()
        raw = _run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "1.0", "-r", str(SAMPLE_RATE),
                    "-T", "raw", "-O", "s16", "-F", "-", str(SOUNDFONT), file.name])
    stereo = np.frombuffer(raw, dtype="<i2", count=len(raw) // 4 * 2).reshape(-1, 2)
    mono = stereo.astype(np.float32).mean(1) / 32768.0
    n = round(seconds * SAMPLE_RATE)
    return np.pad(mono[:n], (0, max(0, n - len(mono))))


# ---------------------------------------------------------------- one clip
def _check(what: str, value: str | None, allowed: Sequence[str]) -> str | None:
    if value is not None and value not in allowed:
        raise MergeError(f"unknown {what} '{value}': one of {', '.join(allowed)}")
    return value


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def _balanced(labels: Sequence[str], seed: int, tag: int, index: int) -> str:
    """labels[...] for clip `index`: each consecutive block of len(labels) clips holds every label once."""
    block, slot = divmod(index, len(labels))
    return labels[np.random.default_rng([seed, 100 + tag, block]).permutation(len(labels))[slot]]


def _finish(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A faint noise floor (-60 to -45 dB under the peak), then peak-normalise to PEAK."""
    peak = np.abs(audio).max()
    if peak == 0:
        raise RuntimeError("a synthesiser rendered silence")
    audio = audio + rng.standard_normal(len(audio)) * peak * 10 ** (rng.uniform(-60, -45) / 20)
    return (PEAK * audio / np.abs(audio).max()).astype(np.float32)


def _trim(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold * np.abs(audio).max())
    return audio[loud[0]:loud[-1] + 1]


def _spoken_word(rng: np.random.Generator, keyword: str, speaker: str, samples: int) -> np.ndarray:
    """The word with random speed and pitch, trimmed, re-spoken faster if it would not fit (espeak-ng
    tops out near 450 words per minute; a word still too long for a very short clip is cut)."""
    speed, pitch = int(rng.integers(130, 211)), int(rng.integers(30, 71))
    word = _trim(_espeak(keyword, speaker, speed, pitch))
    while len(word) > 0.9 * samples and speed < 450:
        speed = min(450, int(speed * len(word) / (0.8 * samples)) + 10)
        word = _trim(_espeak(keyword, speaker, speed, pitch))
    return word[:samples]


def speech_clip(seed: int, index: int = 0, *, duration: float = 1.0, keyword: str | None = None,
                speaker: str | None = None) -> Clip:
    """One spoken keyword at a random offset; keyword and speaker default to the balanced schedule."""
    rng, samples = _rng(seed, _SPEECH, index), round(duration * SAMPLE_RATE)
    keyword = _check("keyword", keyword, KEYWORDS) or _balanced(KEYWORDS, seed, 0, index)
    speaker = _check("speaker", speaker, SPEAKERS) or _balanced(SPEAKERS, seed, 1, index)
    word = _spoken_word(rng, keyword, speaker, samples)
    offset = int(rng.integers(0, samples - len(word) + 1))
    audio = np.zeros(samples, dtype=np.float32)
    audio[offset:offset + len(word)] = word
    return Clip(_finish(audio, rng), {"domain": "speech", "keyword": keyword, "speaker": speaker})


def _pitch(rng: np.random.Generator, family: str, pitch_class: int, top_margin: int = 0) -> int:
    low, high = FAMILY_PROGRAMS[family][1]
    return int(rng.choice([p for p in range(low, high - top_margin + 1) if p % 12 == pitch_class]))


def music_clip(seed: int, index: int = 0, *, duration: float = 1.0, kind: str = "note",
               family: str | None = None, pitch_class: str | None = None, chord_quality: str | None = None) -> Clip:
    """One note, chord (root position, slightly strummed) or phrase (arpeggio or scale walk in a major
    or minor key); unspecified labels follow the balanced schedule, everything else is random."""
    if kind not in MUSIC_KINDS:
        raise MergeError(f"music kind must be one of {MUSIC_KINDS}, got '{kind}'")
    _check("instrument family", family, CHORD_FAMILIES if kind == "chord" else INSTRUMENT_FAMILIES)
    _check("pitch class", pitch_class, PITCH_CLASSES)
    _check("chord quality", chord_quality, CHORD_QUALITIES)
    stream = 2 + MUSIC_KINDS.index(kind)
    rng = _rng(seed, stream, index)
    family = family or _balanced(CHORD_FAMILIES if kind == "chord" else INSTRUMENT_FAMILIES, seed, 10 * stream, index)
    pitch_class = pitch_class or _balanced(PITCH_CLASSES, seed, 10 * stream + 1, index)
    programs = FAMILY_PROGRAMS[family][0]
    program = programs[int(rng.integers(len(programs)))]
    labels = {"domain": "music", "kind": kind, "instrument_family": family, "pitch_class": pitch_class}
    start = rng.uniform(0.0, 0.15) * duration
    velocity = lambda: int(rng.integers(70, 121))  # noqa: E731
    if kind == "note":
        pitch = _pitch(rng, family, PITCH_CLASSES.index(pitch_class))
        notes = [(start, rng.uniform(0.45, 0.8) * duration, pitch, velocity())]
    elif kind == "chord":
        quality = labels["chord_quality"] = chord_quality or _balanced(CHORD_QUALITIES, seed, 10 * stream + 2, index)
        root = _pitch(rng, family, PITCH_CLASSES.index(pitch_class), top_margin=12)
        length = rng.uniform(0.5, 0.8) * duration
        strum = rng.uniform(0.0, 0.03)
        notes = [(start + k * strum, length, root + step, velocity()) for k, step in enumerate(CHORD_INTERVALS[quality])]
    else:
        tonic = _pitch(rng, family, PITCH_CLASSES.index(pitch_class), top_margin=12)
        scale = (0, 2, 4, 5, 7, 9, 11, 12) if rng.random() < 0.5 else (0, 2, 3, 5, 7, 8, 10, 12)
        count = int(rng.integers(4, 7))
        if rng.random() < 0.5:  # arpeggio of the tonic triad, up or down
            steps = [scale[(2 * k) % 6] + 12 * (2 * k // 6) for k in range(count)]
            steps = steps if rng.random() < 0.5 else steps[::-1]
        else:  # a walk through the scale that starts and ends on the tonic
            walk = np.clip(np.cumsum(rng.choice([-1, 1, 2], size=count - 2)), 0, len(scale) - 1)
            steps = [0, *(scale[i] for i in walk), 0]
        step = (0.9 * duration - start) / len(steps)
        notes = [(start + k * step, 0.9 * step, tonic + s, velocity()) for k, s in enumerate(steps)]
    return Clip(_finish(_fluidsynth(_midi(program, notes, duration), duration), rng), labels)


def speech_over_music(seed: int, duration: float = 2.0) -> Clip:
    """A keyword spoken over a music phrase, the music 6-12 dB under the voice (for app examples)."""
    rng, samples = _rng(seed, _OVERLAY, 0), round(duration * SAMPLE_RATE)
    speech = speech_clip(seed, 0, duration=duration)
    music = music_clip(seed, 0, duration=duration, kind="phrase")
    mix = speech.audio + music.audio * 10 ** (-rng.uniform(6, 12) / 20)
    labels = {**speech.labels, **{k: v for k, v in music.labels.items() if k != "domain"}, "domain": "speech+music"}
    return Clip((PEAK * mix / np.abs(mix).max()).astype(np.float32), labels)


# ---------------------------------------------------------------- many clips
# A job list is what a clip list will be, each entry a zero-argument function rendering one clip.
Jobs = list[Callable[[], Clip]]


def speech_jobs(n: int, seed: int, duration: float = 1.0) -> Jobs:
    return [partial(speech_clip, seed, i, duration=duration) for i in range(n)]


def music_jobs(n: int, seed: int, duration: float = 1.0, kinds: Sequence[str] = MUSIC_KINDS) -> Jobs:
    """Kinds in turn; clip i is the (i // len(kinds))-th of its kind, so each kind's labels stay balanced."""
    kinds = tuple(kinds)
    return [partial(music_clip, seed, i // len(kinds), duration=duration, kind=kinds[i % len(kinds)]) for i in range(n)]


def mixed_jobs(n: int, seed: int, duration: float = 1.0, kinds: Sequence[str] = MUSIC_KINDS) -> Jobs:
    """Speech and music alternating (speech first): clip 2i is speech clip i, clip 2i+1 music clip i."""
    speech, music = speech_jobs((n + 1) // 2, seed, duration), music_jobs(n // 2, seed, duration, kinds)
    return [(speech if i % 2 == 0 else music)[i // 2] for i in range(n)]


def render(jobs: Jobs, workers: int | None = None, progress: bool = True, what: str = "clips") -> list[Clip]:
    """Run the jobs in parallel, in order; workers default to two per CPU core, since a render is
    mostly a synthesiser process starting up, half of that time waiting."""
    workers = max(1, workers or 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(lambda job: job(), jobs), total=len(jobs), desc=what, disable=not progress, unit="clip"))


def speech_clips(n: int, seed: int, *, duration: float = 1.0, workers: int | None = None, progress: bool = True) -> list[Clip]:
    """n spoken keywords (balanced keywords and speakers), rendered in parallel."""
    require_tools("espeak-ng")
    return render(speech_jobs(n, seed, duration), workers, progress, "speech")


def music_clips(n: int, seed: int, *, duration: float = 1.0, kinds: Sequence[str] = MUSIC_KINDS,
                workers: int | None = None, progress: bool = True) -> list[Clip]:
    """n notes/chords/phrases (the given kinds in turn), rendered in parallel."""
    require_tools("fluidsynth")
    return render(music_jobs(n, seed, duration, kinds), workers, progress, "music")


def mixed_clips(n: int, seed: int, *, duration: float = 1.0, kinds: Sequence[str] = MUSIC_KINDS,
                workers: int | None = None, progress: bool = True) -> list[Clip]:
    """Speech and music alternating, speech first (see mixed_jobs), rendered in parallel."""
    require_tools("espeak-ng", "fluidsynth")
    return render(mixed_jobs(n, seed, duration, kinds), workers, progress, "speech+music")


from .assets import ASSETS_DIR, TASKS, build_assets, load_manifest, probe_split  # noqa: E402  (needs the above)
