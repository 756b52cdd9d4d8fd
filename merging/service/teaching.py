"""The teaching panels' service: units that fire together, the speech-over-music mixer and its level sweep,
and what each encoder hears over time. A mixin of `Lab`: thin methods over merging.teach, .mixing and
.listen that pick the session's encoders and probes and hold the lab's compute lock."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import load_audio
from ..listen import Reading, confidence, read, top_labels, windows
from ..mixing import MAX_MIX_SECONDS, SWEEP_LEVELS_DB, BuiltinClip, builtin_clips, mix
from ..state import MergeError
from ..teach import UnitTraces, pick_unit, unit_traces
from .controls import method_inputs
from .session import ClipReport, LabSession

TIMELINE_MIN_SECONDS = 2.0  # shorter clips are one probe window: nothing changes over time


@dataclass(frozen=True)
class MixSource:
    """One side of a mix: the clip, what it is called, and its true labels (none for an upload)."""

    clip: np.ndarray
    name: str
    truth: dict[str, str]


@dataclass(frozen=True)
class LevelSweep:
    levels: tuple[float, ...]
    truths: dict[str, str]  # task -> the label whose probability is followed
    truth_note: str  # where the truths come from
    curves: dict[str, dict[str, list[float]] | None]  # column -> task -> probability per level (None: no merge)


@dataclass(frozen=True)
class Timeline:
    starts: np.ndarray  # window start times (s)
    window: float
    seconds: float
    tops: dict[str, dict[str, list[tuple[str, float]]]]  # column -> task -> (label, probability) per window


class Teaching:
    """Mixed into `Lab` (which provides the registry, the probes, the pooled models and the compute lock)."""

    # units that fire together

    def calibration_clip_count(self) -> int:
        return len(self.calibration()[0])

    def unit_traces(self, session: LabSession, group: str, unit: str | int = "best", clip_index: int = 0) -> UnitTraces:
        """Speech unit `unit` of `group` ('best', 'worst' or an index), its matched music unit and the music unit
        at its index before the permutation, over calibration clip `clip_index`."""
        alignment = self.alignment_view(session)
        if group not in alignment.groups:
            raise MergeError(f"no group '{group}' in this alignment")
        clips, _ = self.calibration()
        if isinstance(clip_index, bool) or not isinstance(clip_index, (int, float)) or not 0 <= clip_index < len(clips) \
                or clip_index != int(clip_index):
            raise MergeError(f"calibration clip: a whole number from 0 to {len(clips) - 1}")
        index = pick_unit(alignment.groups[group], unit, alignment.absolute)
        speech_key, music_key = session.alignment_pair
        with self._computing():
            return unit_traces(self.registry.get(speech_key), self.registry.get(music_key), alignment, group, index,
                               clips[int(clip_index)], self.bench.suite.sample_rate)

    # what each encoder hears

    def _hearing(self, session: LabSession, sources: Mapping[str, str | None], method: str
                 ) -> Iterator[tuple[str, object, dict | None]]:
        """(column, running encoder, probes) for the merge's first input, the merge and its second input; the
        merge's column yields (\"merged\", None, None) before any merge. Callers hold `_computing()`; each
        encoder is valid until the next item."""
        merged = session.merged
        inputs = merged.sources if merged else method_inputs(method, sources)
        first, second = [(role, key) for role, key in inputs.items() if role != "base"]
        for role, key in (first, ("merged", None), second):
            if key is None and merged is None:
                yield role, None, None
                continue
            probes = self.fitted(merged.recipe)[0] if key is None else self.reference(key)[0]
            with (self.loaded(merged.recipe) if key is None else self._running(key)) as running:
                yield role, running, probes

    def _read_all(self, session, sources, method, clips: list[np.ndarray]) -> dict[str, list[Reading] | None]:
        suite = self.bench.suite
        with self._computing():
            return {role: read(running, probes, suite.tasks, clips, suite.sample_rate) if running else None
                    for role, running, probes in self._hearing(session, sources, method)}

    # the mixer

    def mix_choices(self, kind: str) -> list[BuiltinClip]:
        """The built-in clips of one side of the mixer: one test clip per keyword, or per instrument family."""
        return builtin_clips(kind)

    def _mix_source(self, kind: str, choice: str | None, upload: str | Path | None) -> MixSource:
        """An upload when there is one, else the built-in clip whose menu label is `choice`."""
        rate = self.bench.suite.sample_rate
        if upload:
            path = Path(upload)
            if path.is_file() and path.stat().st_size > self.config.max_upload_bytes:
                raise MergeError(f"{path.name} is over the {self.config.max_upload_bytes / 2**20:g} MB upload limit")
            clip, info = load_audio(path, rate, max_seconds=MAX_MIX_SECONDS)
            return MixSource(clip, info["name"], {})
        clips = {clip.label: clip for clip in self.mix_choices(kind)}
        if choice not in clips:
            raise MergeError(f"no built-in {kind} clip {choice!r}: choose one from the list or upload one")
        return MixSource(load_audio(clips[choice].path, rate)[0], choice, clips[choice].truth)

    def mix(self, session: LabSession, sources: Mapping[str, str | None], speech: str | None, music: str | None,
            level_db: float, *, speech_upload: str | None = None, music_upload: str | None = None,
            method: str = "permute") -> tuple[np.ndarray, ClipReport]:
        """The speech clip with the music clip `level_db` above it (RMS), and what each encoder's probes hear."""
        speech_side = self._mix_source("speech", speech, speech_upload)
        music_side = self._mix_source("music", music, music_upload)
        rate = self.bench.suite.sample_rate
        mixed = mix(speech_side.clip, music_side.clip, level_db, rate)
        readings = self._read_all(session, sources, method, [mixed])
        inputs = session.merged.sources if session.merged else method_inputs(method, sources)
        first, second = [(role, key) for role, key in inputs.items() if role != "base"]
        name = f"{speech_side.name} + {music_side.name} at {level_db:+g} dB"
        return mixed, ClipReport((first, second), tuple(t.name for t in self.bench.suite.tasks),
                                 {role: r[0] if r else None for role, r in readings.items()}, name,
                                 len(mixed) / rate, ())

    def mix_sweep(self, session: LabSession, sources: Mapping[str, str | None], speech: str | None, music: str | None,
                  *, speech_upload: str | None = None, music_upload: str | None = None, method: str = "permute",
                  levels=SWEEP_LEVELS_DB) -> LevelSweep:
        """Each encoder's probability of the true keyword and the true instrument in mixes at every level. For an
        upload the 'true' label is what the speech (music) encoder's probe hears in that clip alone."""
        speech_side = self._mix_source("speech", speech, speech_upload)
        music_side = self._mix_source("music", music, music_upload)
        rate = self.bench.suite.sample_rate
        clips = [mix(speech_side.clip, music_side.clip, float(level), rate) for level in levels]
        sides = {"keyword": (0, speech_side), "instrument_family": (-1, music_side)}  # column of the side's encoder
        alone = {}
        for task, (_, side) in sides.items():
            if task not in side.truth:
                alone[task] = len(clips)
                clips.append(side.clip)
        readings = self._read_all(session, sources, method, clips)
        columns, truths = list(readings), {}
        for task, (column, side) in sides.items():
            heard = readings[columns[column]][alone[task]][task] if task in alone else None
            truths[task] = side.truth[task] if heard is None else max(heard, key=heard.get)
        note = "for an upload, the label its own encoder hears in it alone" if alone else "the clips' labels"
        curves = {role: None if r is None else {task: confidence(r[: len(levels)], task, truths[task]) for task in sides}
                  for role, r in readings.items()}
        return LevelSweep(tuple(float(level) for level in levels), truths, note, curves)

    # over time

    def timeline(self, session: LabSession, sources: Mapping[str, str | None], path: str | Path | None,
                 method: str = "permute") -> Timeline | None:
        """Each encoder's top label per task over 1 s windows of a clip longer than TIMELINE_MIN_SECONDS (else None)."""
        if not path:
            raise MergeError("no clip: upload or record one, or pick an example")
        path = Path(path)
        if path.is_file() and path.stat().st_size > self.config.max_upload_bytes:
            raise MergeError(f"{path.name} is over the {self.config.max_upload_bytes / 2**20:g} MB upload limit")
        rate = self.bench.suite.sample_rate
        clip, _ = load_audio(path, rate, max_seconds=self.config.max_clip_seconds)
        seconds = len(clip) / rate
        if seconds <= TIMELINE_MIN_SECONDS:
            return None
        starts, parts = windows(clip, rate)
        readings = self._read_all(session, sources, method, parts)
        return Timeline(starts, len(parts[0]) / rate, seconds,
                        {role: top_labels(r) for role, r in readings.items() if r is not None})
