"""The teaching and listening panels' service: what each encoder's probes hear in a clip (and over time), the
speech-over-music mixer and its level sweep, and units that fire together. Thin methods over merging.listen,
.mixing and .units that pick the session's encoders and the scorer's probes and take the runner's turns."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import load_audio
from ..listen import Reading, confidence, read, top_labels, windows
from ..mixing import MAX_MIX_SECONDS, SWEEP_LEVELS_DB, BuiltinClip, builtin_clips, mix
from ..state import MergeError, quoted
from ..units import UnitTraces, pick_unit, unit_traces
from .controls import method_inputs
from .session import ClipReport, LabSession, ends

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
    """Shared by every session: the lab's encoders and runner, the scorer's probes (the benchmark suite's)."""

    def __init__(self, lab, scoring) -> None:
        self.lab, self.scoring = lab, scoring

    @property
    def sample_rate(self) -> int:
        return self.scoring.live.suite.sample_rate

    @property
    def tasks(self):
        return self.scoring.live.suite.tasks

    # units that fire together

    def calibration_clip_count(self) -> int:
        return len(self.lab.calibration()[0])

    def unit_traces(self, session: LabSession, group: str, unit: str | int = "best", clip_index: int = 0) -> UnitTraces:
        """Speech unit `unit` of `group` ('best', 'worst' or an index), its matched music unit and the music unit
        at its index before the permutation, over calibration clip `clip_index`."""
        alignment = self.lab.alignment_view(session)
        chosen = alignment.group(group)
        clips, _ = self.lab.calibration()
        if isinstance(clip_index, bool) or not isinstance(clip_index, (int, float)) or not 0 <= clip_index < len(clips) \
                or clip_index != int(clip_index):
            raise MergeError(f"calibration clip: a whole number from 0 to {len(clips) - 1}")
        index = pick_unit(chosen, unit, alignment.absolute)
        speech_key, music_key = session.alignment_pair
        with self.lab.runner.turn():
            return unit_traces(self.lab.encoders.get(speech_key), self.lab.encoders.get(music_key), alignment, group,
                               index, clips[int(clip_index)], self.sample_rate)

    # what each encoder hears

    def _columns(self, session: LabSession, sources: Mapping[str, str | None], method: str):
        """(role, key) of the merge's first input, ("merged", None) and its second input: the merge's, or the chosen
        method's before any merge."""
        merged = session.merged
        first, second = ends(merged.sources if merged else method_inputs(method, sources))
        return first, ("merged", None), second

    def _hearing(self, session: LabSession, sources: Mapping[str, str | None], method: str
                 ) -> Iterator[tuple[str, object, dict | None]]:
        """(column, running encoder, probes) for the merge's first input, the merge and its second input; the
        merge's column yields ("merged", None, None) before any merge. Each encoder is valid until the next item;
        probes are fetched before the turn (they may have to be computed, in turns of their own)."""
        merged = session.merged
        for role, key in self._columns(session, sources, method):
            if key is None and merged is None:
                yield role, None, None
                continue
            probes = self.scoring.probes(merged.recipe) if key is None else self.scoring.input_probes(key)
            with self.lab.runner.turn(), (self.lab.loaded(merged.recipe) if key is None else self.lab.running(key)) as running:
                yield role, running, probes

    def _read_all(self, session, sources, method, clips: list[np.ndarray]) -> dict[str, list[Reading] | None]:
        return {role: read(running, probes, self.tasks, clips, self.sample_rate) if running else None
                for role, running, probes in self._hearing(session, sources, method)}

    def read_upload(self, path: str | Path | None, max_seconds: float | None = None) -> tuple[np.ndarray, dict]:
        """An uploaded clip at the probes' rate (at most `max_seconds`, default the lab's clip limit); MergeError for
        none, one over the upload limit, or one under 0.1 s."""
        if not path:
            raise MergeError("no clip: upload or record one, or pick an example")
        path, limit = Path(path), self.lab.config.max_upload_bytes
        if path.is_file() and path.stat().st_size > limit:
            raise MergeError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; the limit is {limit / 2**20:g} MB")
        clip, info = load_audio(path, self.sample_rate, max_seconds=max_seconds or self.lab.config.max_clip_seconds)
        if len(clip) < self.sample_rate // 10:
            raise MergeError(f"{path.name}: {len(clip) / self.sample_rate:.2f} s is too short (at least 0.1 s)")
        return clip, info

    def probe_clip(self, session: LabSession, sources: Mapping[str, str | None], path: str | Path | None,
                   method: str) -> ClipReport:
        """Class probabilities per task of the merged encoder beside its two inputs, for an uploaded clip."""
        clip, info = self.read_upload(path)
        readings = self._read_all(session, sources, method, [clip])
        return self._report(session, sources, method, readings, info["name"], len(clip), tuple(info["warnings"]))

    def _report(self, session, sources, method, readings, name: str, samples: int, warnings=()) -> ClipReport:
        first, _, second = self._columns(session, sources, method)
        return ClipReport((first, second), tuple(task.name for task in self.tasks),
                          {role: r[0] if r else None for role, r in readings.items()}, name,
                          samples / self.sample_rate, warnings)

    # the mixer

    def mix_choices(self, kind: str) -> list[BuiltinClip]:
        """The built-in clips of one side of the mixer: one test clip per keyword, or per instrument family."""
        return builtin_clips(kind)

    def _mix_source(self, kind: str, choice: str | None, upload: str | Path | None) -> MixSource:
        """An upload when there is one, else the built-in clip whose menu label is `choice`."""
        if upload:
            clip, info = self.read_upload(upload, MAX_MIX_SECONDS)
            return MixSource(clip, info["name"], {})
        clips = {clip.label: clip for clip in self.mix_choices(kind)}
        if choice not in clips:
            raise MergeError(f"no built-in {kind} clip {quoted(choice)}: choose one from the list or upload one")
        return MixSource(load_audio(clips[choice].path, self.sample_rate)[0], choice, clips[choice].truth)

    def mix(self, session: LabSession, sources: Mapping[str, str | None], speech: str | None, music: str | None,
            level_db: float, *, speech_upload: str | None = None, music_upload: str | None = None,
            method: str) -> tuple[np.ndarray, ClipReport]:
        """The speech clip with the music clip `level_db` above it (RMS), and what each encoder's probes hear."""
        speech_side = self._mix_source("speech", speech, speech_upload)
        music_side = self._mix_source("music", music, music_upload)
        mixed = mix(speech_side.clip, music_side.clip, level_db, self.sample_rate)
        readings = self._read_all(session, sources, method, [mixed])
        name = f"{speech_side.name} + {music_side.name} at {level_db:+g} dB"
        return mixed, self._report(session, sources, method, readings, name, len(mixed))

    def mix_sweep(self, session: LabSession, sources: Mapping[str, str | None], speech: str | None, music: str | None,
                  *, speech_upload: str | None = None, music_upload: str | None = None, method: str,
                  levels=SWEEP_LEVELS_DB) -> LevelSweep:
        """Each encoder's probability of the true keyword and the true instrument in mixes at every level. For an
        upload the 'true' label is what the speech (music) encoder's probe hears in that clip alone."""
        speech_side = self._mix_source("speech", speech, speech_upload)
        music_side = self._mix_source("music", music, music_upload)
        clips = [mix(speech_side.clip, music_side.clip, float(level), self.sample_rate) for level in levels]
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
                 method: str) -> Timeline | None:
        """Each encoder's top label per task over 1 s windows of a clip longer than TIMELINE_MIN_SECONDS (else None)."""
        clip, _ = self.read_upload(path)
        seconds = len(clip) / self.sample_rate
        if seconds <= TIMELINE_MIN_SECONDS:
            return None
        starts, parts = windows(clip, self.sample_rate)
        readings = self._read_all(session, sources, method, parts)
        return Timeline(starts, len(parts[0]) / self.sample_rate, seconds,
                        {role: top_labels(r) for role, r in readings.items() if r is not None})
