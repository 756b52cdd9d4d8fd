"""The lab behind the app: one per server, shared by every session.

It holds the allow-listed encoders (loaded once, never mutated), the calibration clips and an alignment cache, and
turns a person's choices into checked merge recipes; it computes through a `Runner` (device, pooled models, turns).
What belongs to one person lives in a `LabSession` value; every operation takes a session and returns a new one.
"""
from __future__ import annotations

import functools
import hashlib
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..align import PAPER_COMPONENTS, Alignment, Progress
from ..catalogue import LAB_ROLES, method_roles
from ..checkpoint import save_encoder, zip_encoder_dir
from ..encoders import Encoder, check_compatible, encoder_from_state
from ..pipeline import align, check_sample_rates, merge_record
from ..registry import get_method
from ..spec import COMPONENTS, hubert_spec
from ..state import MergeError
from ..tradeoff import grid
from .allowlist import AllowList
from .config import LabConfig
from .controls import merge_params, method_inputs
from .exports import ExportFolder
from .pool import weights_of
from .runner import Runner
from .session import LabSession, MergeRecipe, MergeResult, permutations_only
from .store import STORE_FORMAT, Store, alignment_entry, alignment_of, code_version, digest


@dataclass(frozen=True)
class EncoderRow:
    """One chosen encoder as the page lists it; `error` instead of the numbers when it did not load."""

    role: str
    key: str
    parameters: int | None = None
    sample_rate: int | None = None
    device: str | None = None
    error: str | None = None


class Lab:
    """Shared by every session of one server; thread-safe."""

    def __init__(self, config: LabConfig | None = None, runner: Runner | None = None, store: Store | None = None) -> None:
        self.config = config or LabConfig()
        self.encoders = AllowList(self.config.models_dir, self.config.extra_encoders)
        self.runner = runner or Runner(self.config.device, self.config.threads)
        self.store = store  # results kept on disk across restarts (alignments here, scores by the scorer)
        self.exports = ExportFolder(keep=8, max_bytes=self.config.files_bytes // 2)
        self._calibration: tuple[list[np.ndarray], str] | None = None
        self._calibration_checksum: str | None = None
        self._alignments: OrderedDict[tuple, Alignment] = OrderedDict()
        self._lock = threading.RLock()  # the lab's caches

    def keep_exports_in(self, parent: Path) -> None:
        """Write the exports under `parent` from now on (the app's file cache: served from there, not copied)."""
        self.exports = ExportFolder(keep=8, parent=parent, max_bytes=self.config.files_bytes // 2)

    @property
    def device(self) -> str:
        return self.runner.device

    def calibration(self) -> tuple[list[np.ndarray], str]:
        """The calibration clips and where they come from."""
        with self._lock:
            if self._calibration is None:
                from ..calibration import builtin_calibration

                self._calibration = builtin_calibration(limit=self.config.calibration_limit)
            return self._calibration

    def calibration_checksum(self) -> str:
        """A checksum of the calibration clips (an alignment's key names what it was computed from)."""
        with self._lock:
            if self._calibration_checksum is None:
                hashed = hashlib.blake2b(digest_size=16)
                for clip in self.calibration()[0]:
                    hashed.update(np.ascontiguousarray(clip, dtype=np.float32).tobytes())
                    hashed.update(b"|")
                self._calibration_checksum = hashed.hexdigest()
            return self._calibration_checksum

    def default_sources(self) -> dict[str, str]:
        return {role: self.encoders.default(role) for role in LAB_ROLES}

    # encoders

    def checksum(self, key: str) -> str:
        return self.encoders.checksum(key)

    def inputs_of(self, recipe: MergeRecipe) -> dict[str, Encoder]:
        return {role: self.encoders.get(key) for role, key in recipe.inputs.items()}

    @contextmanager
    def running(self, key: str) -> Iterator[Encoder]:
        """An unmerged encoder running in the pooled model on the lab's device (inside a runner's turn)."""
        with self.runner.running(key, self.encoders.get(key)) as running:
            yield running

    @contextmanager
    def loaded(self, recipe: MergeRecipe) -> Iterator[Encoder]:
        """The recipe's merged encoder running in the pooled model (inside a runner's turn)."""
        with self.runner.merged(recipe, self.inputs_of(recipe)) as merged:
            yield merged

    def describe(self, sources: Mapping[str, str | None], method: str) -> tuple[list[EncoderRow], list[str]]:
        """The chosen encoders, one row per lab role, and the problems of those `method` uses: missing or
        unloadable encoders, incompatible architectures, different sample rates."""
        rows, problems, loaded = [], [], {}
        used = method_roles(method)
        for role in LAB_ROLES:
            key = sources.get(role)
            if not key:
                rows.append(EncoderRow(role, "", error="none chosen"))
                continue
            try:
                loaded[role] = encoder = self.encoders.get(key)
                rows.append(EncoderRow(role, key, encoder.num_parameters, encoder.sample_rate, str(encoder.device)))
            except MergeError as error:
                rows.append(EncoderRow(role, key, error=str(error)))
                if role in used.values():
                    problems.append(str(error))
        present = {role: loaded[lab_role] for role, lab_role in used.items() if lab_role in loaded}
        try:
            self._check_inputs(present, {role: sources[lab_role] for role, lab_role in used.items() if role in present})
        except MergeError as error:
            problems.append(str(error))
        return rows, problems

    def suggested_sources(self, speech_key: str, music_key: str) -> dict[str, str | None]:
        """Every lab role's encoder for this speech/music pair: the built-in students and fine-tuned copy when the
        speech encoder has the built-in speech encoder's architecture (they match it), none otherwise."""
        sources = {**self.default_sources(), "speech": speech_key, "music": music_key}
        try:
            matching = speech_key == self.encoders.default("speech") or not _differs(
                self.encoders.get(speech_key), self.encoders.get(self.encoders.default("speech")))
        except MergeError:
            matching = False
        return sources if matching else {role: key if role in ("speech", "music") else None for role, key in sources.items()}

    def _check_inputs(self, encoders: Mapping[str, Encoder], keys: Mapping[str, str], allow_rate_mismatch: bool = False):
        """MergeError when a method's inputs differ in architecture, or in sample rate unless that is allowed."""
        if not encoders:
            return None
        (first, encoder), *others = encoders.items()
        for role, other in others:
            check_compatible(encoder.config, other.config, names=(keys[first], keys[role]))
        return check_sample_rates(dict(encoders), allow_rate_mismatch)

    # alignment

    def align(self, session: LabSession, speech_key: str, music_key: str, *,
              components: Sequence[str] = PAPER_COMPONENTS, absolute: bool = True,
              progress: Progress | None = None) -> LabSession:
        """Correlation alignment of the music encoder to the speech encoder on the calibration clips (cached).
        The session keeps the permutations; the similarity matrices stay here (`alignment_view`)."""
        if isinstance(components, str) or not all(isinstance(c, str) for c in components):
            raise MergeError(f"components: a list of {', '.join(COMPONENTS)}")
        unknown = sorted(set(components) - set(COMPONENTS))
        components = tuple(c for c in COMPONENTS if c in components)
        if not components or unknown:
            raise MergeError(f"choose at least one component to permute among {', '.join(COMPONENTS)}")
        speech, music = self.encoders.get(speech_key), self.encoders.get(music_key)
        check_compatible(speech.config, music.config, names=(speech_key, music_key))
        key = self.alignment_key(speech_key, music_key, components, absolute)
        alignment = self._alignments.get(key)  # a cached one needs no compute: it does not queue behind merges
        if alignment is None:
            alignment = self._stored_alignment(key, speech)
            if alignment is not None:
                self._remember(key, alignment)
                if progress:
                    progress(1.0, "stored alignment")
        elif progress:
            progress(1.0, "cached alignment")
        if alignment is None:
            with self.runner.turn():
                alignment = self._alignments.get(key)
                if alignment is None:
                    clips, _ = self.calibration()
                    alignment = self._run_alignment(speech, music, clips, components, absolute, progress)
                    if self.store is not None:
                        self.store.put(alignment_store_key(key), alignment_entry(alignment))
                    self._remember(key, alignment)
        return replace(session, alignment=permutations_only(alignment), alignment_key=key,
                       alignment_pair=(speech_key, music_key))

    def alignment_key(self, speech_key: str, music_key: str, components: Sequence[str] = PAPER_COMPONENTS,
                      absolute: bool = True) -> tuple:
        """What an alignment is computed from: both encoders' checksums, its settings, and a checksum of the
        calibration clips with the alignment code's version (a recipe's key, and so its stored scores, carry it)."""
        produced = digest(self.calibration_checksum(), _alignment_code())
        return (self.checksum(speech_key), self.checksum(music_key), tuple(components), bool(absolute), produced)

    def _stored_alignment(self, key: tuple, speech: Encoder) -> Alignment | None:
        entry = self.store.get(alignment_store_key(key)) if self.store is not None else None
        if entry is None:
            return None
        return alignment_of(entry, hubert_spec(speech.model.config, list(speech.model.state_dict())))

    def _remember(self, key: tuple, alignment: Alignment) -> None:
        with self._lock:
            self._alignments[key] = alignment
            self._alignments.move_to_end(key)
            while len(self._alignments) > 4:
                self._alignments.popitem(last=False)

    def alignment_view(self, session: LabSession) -> Alignment:
        """The session's alignment with its similarity matrices (kept for the last few alignments)."""
        if session.alignment is None:
            raise MergeError("run the alignment first")
        alignment = self._alignments.get(session.alignment_key)
        if alignment is None:
            raise MergeError("this alignment's correlation matrices are no longer kept: run the alignment again")
        return alignment

    def _run_alignment(self, speech, music, clips, components, absolute, progress) -> Alignment:
        device = self.device
        if device != "cpu":  # temporary device copies, freed when the alignment is done
            speech, music = (encoder_from_state(e.config, e.state_dict(), sample_rate=e.sample_rate, normalize=e.normalize,
                                                name=e.name, source=e.source, device=device) for e in (speech, music))
        return align(speech, music, clips=clips, components=components, absolute=absolute, progress=progress)

    # merging

    def recipe(self, session: LabSession, sources: Mapping[str, str | None], method: str,
               controls: Mapping[str, object] | None = None, *, allow_rate_mismatch: bool = False) -> MergeRecipe:
        """The page's choices as a checked recipe (nothing is merged yet): `controls` are the method's parameters by
        name (see `controls.merge_params`); MergeError for anything invalid."""
        params = merge_params(method, controls or {})
        inputs = method_inputs(method, sources)
        encoders = {role: self.encoders.get(key) for role, key in inputs.items()}
        self._check_inputs(encoders, inputs, bool(allow_rate_mismatch))
        checksums = tuple((role, self.checksum(key)) for role, key in inputs.items())
        aligns = get_method(method).aligns
        if not aligns:
            return MergeRecipe(method, params, inputs, checksums, allow_rate_mismatch=bool(allow_rate_mismatch))
        pair = (inputs[next(iter(inputs))], inputs[aligns])
        if session.alignment is None or session.alignment_pair != pair:
            raise MergeError(f"{method} needs the alignment of these two encoders: run the alignment first (step 2)")
        return MergeRecipe(method, params, inputs, checksums, session.alignment, session.alignment_key,
                           bool(allow_rate_mismatch))

    def merge(self, session: LabSession, sources: Mapping[str, str | None], method: str,
              controls: Mapping[str, object] | None = None, *, allow_rate_mismatch: bool = False) -> LabSession:
        """Merge with the chosen encoders; the session keeps the recipe (and its previous merge). Its scores come from
        the live stages (`Scoring.stream`), recorded in the session by `with_stage`."""
        recipe = self.recipe(session, sources, method, controls, allow_rate_mismatch=allow_rate_mismatch)
        with self.runner.turn():
            start = time.perf_counter()
            with self.loaded(recipe):
                self.runner.synchronize()
            result = MergeResult(recipe, time.perf_counter() - start, self.device)
        previous = session.merged if session.merged and session.merged.recipe.key != recipe.key else session.previous
        return replace(session, merged=result, previous=previous)

    def with_stage(self, session: LabSession, stage: dict) -> LabSession:
        """The session with its merge's latest live stage (what an export records)."""
        return replace(session, merged=replace(session.merged, stage=dict(stage)))

    def curve_recipes(self, session: LabSession, speech_key: str, music_key: str) -> list[MergeRecipe]:
        """The recipes of the linear and permute curves of a speech/music pair over the α grid: permute with the
        session's alignment of the pair, else the lab's default one when it has it (nothing is aligned here)."""
        sources = {"speech": speech_key, "music": music_key}
        recipes = [self.recipe(LabSession(), sources, "linear", setting) for setting in grid("linear")]
        aligned = session if session.alignment_pair == (speech_key, music_key) else self._default_aligned(speech_key, music_key)
        if aligned is not None:
            recipes += [self.recipe(aligned, sources, "permute", setting) for setting in grid("permute")]
        return recipes

    def _default_aligned(self, speech_key: str, music_key: str) -> LabSession | None:
        key = self.alignment_key(speech_key, music_key)
        alignment = self._alignments.get(key)
        if alignment is None:
            return None
        return LabSession(permutations_only(alignment), key, (speech_key, music_key))

    # export

    def export(self, session: LabSession, probe_scores: dict) -> Path:
        """A zip of the merged encoder (rebuilt from the session's recipe) in transformers format with its
        merge_config.json, which records `probe_scores` (the latest stage the page showed)."""
        merged = session.merged
        if merged is None:
            raise MergeError("nothing to export yet: merge first (step 3)")
        recipe = merged.recipe
        encoders = self.inputs_of(recipe)
        first = encoders[next(iter(encoders))]
        aligns = get_method(recipe.method).aligns
        record = merge_record(recipe.method, encoders, recipe.params, {aligns: recipe.alignment} if aligns else None,
                              allow_rate_mismatch=recipe.allow_rate_mismatch)
        record["probe_scores"] = probe_scores
        folder = self.exports.new()
        name = f"merged-{recipe.method}"
        try:
            with self.runner.turn(), self.loaded(recipe) as running:
                saved = save_encoder(folder / name, weights_of(running.model), first.config, sample_rate=first.sample_rate,
                                     normalize=first.normalize, merge_config=record)
            archive = zip_encoder_dir(saved, folder / f"{name}.zip")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        shutil.rmtree(saved, ignore_errors=True)
        self.exports.prune()
        return archive


def alignment_store_key(key: tuple) -> tuple:
    """The result store's key of the alignment `Lab.alignment_key` names."""
    return ("alignment", STORE_FORMAT, *key)


@functools.cache
def _alignment_code() -> str:
    from .. import align, features, spec

    return code_version(align, features, spec)


def _differs(a: Encoder, b: Encoder) -> bool:
    try:
        check_compatible(a.config, b.config)
    except MergeError:
        return True
    return False
