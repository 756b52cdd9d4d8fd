"""The shipped audio in assets/audio: calibration clips, probe train/test splits, app examples, and a
manifest of every file's labels. `build_assets` rebuilds all of it, byte for byte, from fixed seeds."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ..audio import save_audio
from ..state import MergeError
from . import (CHORD_FAMILIES, CHORD_QUALITIES, INSTRUMENT_FAMILIES, KEYWORDS, PITCH_CLASSES, SAMPLE_RATE, SPEAKERS,
               Clip, Jobs, mixed_jobs, music_clip, music_jobs, render, require_tools, speech_clip, speech_jobs,
               speech_over_music, tool_versions)

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets" / "audio"
# Opus in Ogg at libsndfile's level 0.95: about 25 kbit/s, 3-3.5 kB a clip. As faithful as Vorbis at
# twice the size (SNR 16-20 dB either way, pitch intact), and each clip fits one 4 KiB disk block.
CODEC, COMPRESSION_LEVEL = "OPUS", 0.95
FOLDERS = ("calibration", "probes", "examples")
# task -> (domain, probe set whose clips carry it, label set)
TASKS = {
    "keyword": ("speech", "speech", KEYWORDS),
    "speaker": ("speech", "speech", SPEAKERS),
    "instrument_family": ("music", "notes", INSTRUMENT_FAMILIES),
    "pitch_class": ("music", "notes", PITCH_CLASSES),
    "chord_quality": ("music", "chords", CHORD_QUALITIES),
}


@dataclass(frozen=True)
class ClipSet:
    name: str  # file-name prefix
    folder: str
    split: str  # calibration | train | test
    probe_set: str | None
    count: int
    seed: int

    def jobs(self) -> Jobs:
        if self.probe_set == "speech":
            return speech_jobs(self.count, self.seed)
        if self.probe_set in ("notes", "chords"):
            return music_jobs(self.count, self.seed, kinds=(self.probe_set[:-1],))
        return mixed_jobs(self.count, self.seed)


CLIP_SETS = (
    ClipSet("calibration", "calibration", "calibration", None, 256, 1000),
    ClipSet("speech-train", "probes/speech/train", "train", "speech", 600, 2000),
    ClipSet("speech-test", "probes/speech/test", "test", "speech", 200, 2001),
    ClipSet("notes-train", "probes/notes/train", "train", "notes", 600, 3000),
    ClipSet("notes-test", "probes/notes/test", "test", "notes", 200, 3001),
    ClipSet("chords-train", "probes/chords/train", "train", "chords", 400, 4000),
    ClipSet("chords-test", "probes/chords/test", "test", "chords", 150, 4001),
)


def example_clips() -> dict[str, Clip]:
    """A few longer clips for the app, named after what they hold."""
    clips = [
        speech_clip(5000, duration=2.0, keyword="yes", speaker="en-us+m1"),
        speech_clip(5001, duration=2.0, keyword="seven", speaker="en-gb-scotland+f3"),
        music_clip(5002, duration=3.0, kind="phrase", family="piano", pitch_class="C"),
        music_clip(5003, duration=2.5, kind="chord", family="strings", pitch_class="A", chord_quality="minor"),
        music_clip(5004, duration=2.0, kind="note", family="guitar", pitch_class="E"),
        speech_over_music(5005, duration=3.0),
        speech_over_music(5006, duration=4.0),
    ]
    return {_example_name(clip): clip for clip in clips}


def _example_name(clip: Clip) -> str:
    labels = clip.labels
    if labels["domain"] == "speech":
        parts = ["speech", labels["keyword"], labels["speaker"]]
    elif labels["domain"] == "music":
        parts = ["music", labels["instrument_family"], labels["kind"], labels["pitch_class"], labels.get("chord_quality", "")]
    else:
        parts = ["speech_over_music", labels["keyword"], labels["instrument_family"]]
    return "_".join(p for p in parts if p).replace("+", "-").replace("#", "sharp") + ".ogg"


def save_clip(path: Path, clip: Clip) -> Path:
    return save_audio(path, clip.audio, SAMPLE_RATE, subtype=CODEC, compression_level=COMPRESSION_LEVEL)


def _render_and_save(job: Callable[[], Clip], path: Path) -> Clip:
    clip = job()
    save_clip(path, clip)  # the Opus encoder is slower than the synthesisers, so it runs in the pool too
    return clip


def _entry(path: Path, root: Path, split: str, probe_set: str | None, clip: Clip) -> dict:
    return {"path": path.relative_to(root).as_posix(), "split": split, "probe_set": probe_set,
            "labels": clip.labels, "duration": len(clip.audio) / SAMPLE_RATE, "sample_rate": SAMPLE_RATE}


def build_assets(out: str | Path = ASSETS_DIR, workers: int | None = None) -> dict:
    """Render and write every shipped clip, manifest.json and README.md under `out`; returns the manifest."""
    require_tools("espeak-ng", "fluidsynth")
    out = Path(out)
    for folder in FOLDERS:
        for stale in sorted((out / folder).rglob("*.ogg")):
            stale.unlink()
    files, timings = [], {}
    for clip_set in CLIP_SETS:
        start = time.perf_counter()
        paths = [out / clip_set.folder / f"{clip_set.name}-{i:04d}.ogg" for i in range(clip_set.count)]
        clips = render([partial(_render_and_save, job, path) for job, path in zip(clip_set.jobs(), paths)],
                       workers, what=clip_set.name)
        timings[clip_set.name] = len(clips) / (time.perf_counter() - start)
        files += [_entry(path, out, clip_set.split, clip_set.probe_set, clip) for path, clip in zip(paths, clips)]
    for name, clip in example_clips().items():
        path = save_clip(out / "examples" / name, clip)
        files.append(_entry(path, out, "example", None, clip))
    manifest = {
        "sample_rate": SAMPLE_RATE,
        "tasks": {name: {"domain": domain, "probe_set": probe_set, "labels": list(labels)}
                  for name, (domain, probe_set, labels) in TASKS.items()},
        "recipe": {"command": "python -m merging.synth build-assets", "tools": tool_versions(),
                   "codec": f"Ogg {CODEC.title()}", "compression_level": COMPRESSION_LEVEL,
                   "sets": {s.name: {"folder": s.folder, "split": s.split, "probe_set": s.probe_set,
                                     "count": s.count, "seed": s.seed} for s in CLIP_SETS}},
        "files": files,
    }
    (out / "manifest.json").write_text(_manifest_json(manifest))
    (out / "README.md").write_text(_card(manifest, out))
    for name, rate in timings.items():
        print(f"{name}: {rate:.1f} clips/s rendered and encoded")
    return manifest


def _manifest_json(manifest: dict) -> str:
    """Indented JSON with one line per file: compact, and a rebuild's diff shows which files changed."""
    head = json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=1)[:-2]
    return head + ',\n "files": [\n' + ",\n".join("  " + json.dumps(f) for f in manifest["files"]) + "\n ]\n}\n"


def load_manifest(root: str | Path = ASSETS_DIR) -> dict:
    """The parsed manifest.json of an assets folder."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise MergeError(f"no audio manifest at {path}: run `python -m merging.synth build-assets`")
    return json.loads(path.read_text())


def probe_split(task: str, split: str, root: str | Path = ASSETS_DIR) -> tuple[list[Path], list[str]]:
    """(absolute paths, labels) of the probe clips for `task` ('keyword', 'speaker', 'instrument_family',
    'pitch_class', 'chord_quality') in `split` ('train' or 'test'), in manifest order."""
    manifest = load_manifest(root)
    if task not in manifest["tasks"]:
        raise MergeError(f"unknown probe task '{task}': one of {', '.join(manifest['tasks'])}")
    if split not in ("train", "test"):
        raise MergeError(f"probe split must be 'train' or 'test', got '{split}'")
    probe_set = manifest["tasks"][task]["probe_set"]
    rows = [f for f in manifest["files"] if f["split"] == split and f["probe_set"] == probe_set]
    return [Path(root).resolve() / f["path"] for f in rows], [f["labels"][task] for f in rows]


def _card(manifest: dict, out: Path) -> str:
    recipe, files = manifest["recipe"], manifest["files"]
    megabytes = lambda paths: sum((out / p).stat().st_size for p in paths) / 1e6  # noqa: E731
    rows = []
    for name, s in recipe["sets"].items():
        paths = [f["path"] for f in files if f["path"].startswith(s["folder"] + "/")]
        rows.append(f"| `{s['folder']}/` | {s['split']} | {s['probe_set'] or 'speech + music'} | {len(paths)} | {s['seed']} | {megabytes(paths):.1f} MB |")
    examples = [f for f in files if f["split"] == "example"]
    rows.append(f"| `examples/` | example | 2-4 s app clips | {len(examples)} | 5000-5006 | {megabytes([f['path'] for f in examples]):.2f} MB |")
    tasks = "\n".join(f"- `{name}` ({t['domain']}, from `{t['probe_set']}` clips, {len(t['labels'])} labels): {', '.join(t['labels'])}"
                      for name, t in manifest["tasks"].items())
    tools = "\n".join(f"- {name}: {version}" for name, version in recipe["tools"].items())
    example_list = "\n".join(f"- `{f['path']}` ({f['duration']:g} s)" for f in examples)
    total = megabytes([f["path"] for f in files]) + (out / "manifest.json").stat().st_size / 1e6
    return f"""# Built-in audio

Labelled synthetic audio for calibration (alignment), probing and the app's examples, made by this
project's own recipe; rebuilt (byte for byte on the same tool versions) with

    {recipe['command']}

Speech: one keyword per clip spoken by `espeak-ng` (voice + variant = speaker; random speed 130-210
wpm and pitch 30-70), at a random offset. Music: `fluidsynth` rendering small MIDI files written by
`merging.synth` with the General MIDI soundfont TimGM6mb (reverb and chorus off): single notes,
root-position chords (slightly strummed) and short phrases (tonic arpeggios or scale walks), random
General MIDI program within the family, register, velocity, onset and length. Every clip is 16 kHz
mono, 1 s (examples 2-4 s), has a noise floor 45-60 dB under its peak and is peak-normalised to 0.9;
stored as {recipe['codec']} (`.ogg`, libsndfile compression level {recipe['compression_level']}). Labels are balanced: each block of as many
clips as a label set has holds every label once. Train and test splits are separate renderings
(different seeds), never copies.

| folder | split | content | clips | seed | size |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Total {total:.1f} MB. `manifest.json` lists every file (path, split, probe set, labels, duration,
sample rate), the tasks and this recipe; `merging.synth.probe_split(task, split)` returns a task's
(paths, labels).

## Tasks
{tasks}

Chord clips use the families {', '.join(CHORD_FAMILIES)}; their `pitch_class` is the root. Phrases
(in calibration and examples) carry the tonic as `pitch_class`.

## Examples
{example_list}

## Tools
{tools}
- soundfile {__import__('soundfile').__version__}, numpy {np.__version__}
"""
