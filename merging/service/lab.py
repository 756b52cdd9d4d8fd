"""The service behind the app: one `Lab` per server, shared by every session.

It holds the allow-listed encoders (loaded once, never mutated), the calibration clips and an alignment
cache, the live probes, and one reusable model per device and architecture. What belongs to one person
lives in a `LabSession` value; every operation takes a session and returns a new one.
"""
from __future__ import annotations

import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..align import PAPER_COMPONENTS, Alignment, Progress
from ..audio import load_audio
from ..checkpoint import save_encoder, zip_encoder_dir
from ..encoders import Encoder, check_compatible, encoder_from_state
from ..pipeline import align, check_sample_rates, merge_record
from ..probes import LinearProbe, ProbeScores, builtin_suite
from ..registry import get_method, merge as run_method
from ..spec import COMPONENTS
from ..state import MergeError, StateDict
from .config import LabConfig
from .controls import ALPHA_METHODS, LAB_ROLES, merge_params, method_inputs, method_roles, parse_layer_alphas, sweep_settings
from .exports import ExportFolder
from .pool import ModelPool, copying, torch_threads, weights_of
from .probing import ProbeBench
from .registry import EncoderRegistry
from .teaching import Teaching
from .turns import Turns
from .session import ClipReport, LabSession, MergeRecipe, MergeResult, permutations_only, tradeoff_point
from .weights import KeptWeights, Reordered


@dataclass(frozen=True)
class EncoderRow:
    """One chosen encoder as the page lists it; `error` instead of the numbers when it did not load."""

    role: str
    key: str
    parameters: int | None = None
    sample_rate: int | None = None
    device: str | None = None
    error: str | None = None


class Lab(Teaching):
    """Shared by every session of one server; thread-safe."""

    def __init__(self, config: LabConfig | None = None) -> None:
        self.config = config or LabConfig()
        self.registry = EncoderRegistry(self.config.models_dir, self.config.extra_encoders)
        self.pool = ModelPool()
        self.kept = KeptWeights()
        self.exports = ExportFolder(keep=8, max_bytes=self.config.max_disk_bytes // 2)
        self._bench: ProbeBench | None = None
        self._calibration: tuple[list[np.ndarray], str] | None = None
        self._alignments: OrderedDict[tuple, Alignment] = OrderedDict()
        self._references: dict[str, tuple[dict[str, LinearProbe], ProbeScores]] = {}
        self._lock = threading.RLock()  # the lab's caches
        self.turns = Turns()  # its computations

    def keep_exports_in(self, parent: Path) -> None:
        """Write the exports under `parent` from now on (the app's file cache: served from there, not copied)."""
        self.exports = ExportFolder(keep=8, parent=parent, max_bytes=self.config.max_disk_bytes // 2)

    @contextmanager
    def _computing(self, background: bool = False) -> Iterator[None]:
        """One computation at a time (2 cores gain nothing from more), with the configured thread count; a
        `background` step waits while a person's request waits (`Turns`)."""
        with (self.turns.background() if background else self.turns.foreground()), torch_threads(self.config.threads):
            yield

    @property
    def device(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def bench(self) -> ProbeBench:
        with self._lock:
            if self._bench is None:
                suite = builtin_suite(max_train=self.config.live_train, max_test=self.config.live_test)
                suite.batch_size, suite.fit_iterations = self.config.feature_batch, self.config.fit_iterations
                self._bench = ProbeBench(suite)
            return self._bench

    def calibration(self) -> tuple[list[np.ndarray], str]:
        """The calibration clips and where they come from."""
        with self._lock:
            if self._calibration is None:
                from ..calibration import builtin_calibration

                self._calibration = builtin_calibration(limit=self.config.calibration_limit)
            return self._calibration

    def default_sources(self) -> dict[str, str]:
        return {role: self.registry.default(role) for role in LAB_ROLES}

    def warm(self, sources: Mapping[str, str] | None = None) -> None:
        """Load what the first merges need: encoders, probe clips and, on a CPU, the speech and music encoders'
        probes. Errors are left for the page to report when someone asks. (On a GPU host the probes wait for a
        request: there the GPU may only be usable inside request handlers, as on ZeroGPU.)"""
        sources = sources or self.default_sources()
        self.bench
        for role, key in sources.items():
            try:
                self.registry.get(key)
                if self.device == "cpu" and role in ("speech", "music"):  # the default method's inputs
                    self.reference(key)
            except MergeError:
                pass

    # encoders

    def describe(self, sources: Mapping[str, str | None], method: str = "permute") -> tuple[list[EncoderRow], list[str]]:
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
                loaded[role] = self.registry.get(key)
                encoder = loaded[role]
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
            matching = speech_key == self.registry.default("speech") or not _differs(
                self.registry.get(speech_key), self.registry.get(self.registry.default("speech")))
        except MergeError:
            matching = False
        return sources if matching else {role: key if role in ("speech", "music") else None for role, key in sources.items()}

    def _encoders(self, inputs: Mapping[str, str]) -> dict[str, Encoder]:
        return {role: self.registry.get(key) for role, key in inputs.items()}

    def _check_inputs(self, encoders: Mapping[str, Encoder], keys: Mapping[str, str], allow_rate_mismatch: bool = False):
        """MergeError when a method's inputs differ in architecture, or in sample rate unless that is allowed."""
        if not encoders:
            return None
        (first, encoder), *others = encoders.items()
        for role, other in others:
            check_compatible(encoder.config, other.config, names=(keys[first], keys[role]))
        return check_sample_rates(dict(encoders), allow_rate_mismatch)

    def reference(self, key: str) -> tuple[dict[str, LinearProbe], ProbeScores]:
        """Probes and scores of an unmerged encoder (computed once per encoder)."""
        with self._computing():
            if key not in self._references:
                with self._running(key) as running:
                    self._references[key] = self.bench.evaluate(running, key=f"encoder {key}")
            return self._references[key]

    @contextmanager
    def _running(self, key: str) -> Iterator[Encoder]:
        """An unmerged encoder running in the pooled model on the lab's device."""
        encoder = self.registry.get(key)
        with self.pool.hold(encoder, self.device, f"encoder {key}", copying(encoder.state_dict()), encoder.name) as running:
            yield running

    # alignment

    def align(self, session: LabSession, speech_key: str, music_key: str, *,
              components: Sequence[str] = PAPER_COMPONENTS, absolute: bool = True,
              progress: Progress | None = None) -> LabSession:
        """Correlation alignment of the music encoder to the speech encoder on the calibration clips (cached).
        The session keeps the permutations; the similarity matrices stay here (`alignment_view`)."""
        unknown = sorted(set(components) - set(COMPONENTS))
        components = tuple(c for c in COMPONENTS if c in components)
        if not components or unknown:
            raise MergeError(f"choose at least one component to permute among {', '.join(COMPONENTS)}")
        speech, music = self.registry.get(speech_key), self.registry.get(music_key)
        check_compatible(speech.config, music.config, names=(speech_key, music_key))
        key = (self.registry.checksum(speech_key), self.registry.checksum(music_key), components, bool(absolute))
        alignment = self._alignments.get(key)  # a cached one needs no compute: it does not queue behind merges
        if alignment is None:
            with self._computing():
                alignment = self._alignments.get(key)
                if alignment is None:
                    clips, _ = self.calibration()
                    alignment = self._run_alignment(speech, music, clips, components, absolute, progress)
                    self._alignments[key] = alignment
                    while len(self._alignments) > 4:
                        self._alignments.popitem(last=False)
        elif progress:
            progress(1.0, "cached alignment")
        return replace(session, alignment=permutations_only(alignment), alignment_key=key,
                       alignment_pair=(speech_key, music_key))

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

    def recipe(self, session: LabSession, sources: Mapping[str, str | None], method: str, *, alpha: float = 0.1,
               lambda_speech: float = 0.5, lambda_music: float = 0.5, layer_alphas: str | Sequence[float] | None = None,
               allow_rate_mismatch: bool = False) -> MergeRecipe:
        """The page's choices as a checked recipe (nothing is merged yet); MergeError for anything invalid."""
        if isinstance(layer_alphas, str) or layer_alphas is None:
            layer_alphas = parse_layer_alphas(layer_alphas)
        params = merge_params(method, alpha, lambda_speech, lambda_music, layer_alphas)
        inputs = method_inputs(method, sources)
        self._check_inputs(self._encoders(inputs), inputs, bool(allow_rate_mismatch))
        aligns = get_method(method).aligns
        if not aligns:
            return MergeRecipe(method, params, inputs, allow_rate_mismatch=bool(allow_rate_mismatch))
        pair = (inputs[next(iter(inputs))], inputs[aligns])
        if session.alignment is None or session.alignment_pair != pair:
            raise MergeError(f"{method} needs the alignment of these two encoders: run the alignment first (step 2)")
        return MergeRecipe(method, params, inputs, session.alignment, session.alignment_key, bool(allow_rate_mismatch))

    def merge(self, session: LabSession, sources: Mapping[str, str | None], method: str, **controls) -> LabSession:
        """Merge with the chosen encoders (controls: alpha, lambda_speech, lambda_music, layer_alphas,
        allow_rate_mismatch); the session keeps the recipe. Its scores come from the live stages
        (`LiveScoring.stream`), which report back through `with_stage`."""
        recipe = self.recipe(session, sources, method, **controls)
        with self._computing():
            result = self.run(recipe)
        return replace(session, merged=result)

    def with_stage(self, session: LabSession, stage: dict, ends: tuple[dict, dict] | None = None) -> LabSession:
        """The session with its merge's latest live stage (which an export then records) and that merge's point on
        its method's trade-off curve; `ends`: the two inputs' {"speech_avg", "music_avg"} on the same scale, the
        curve's α 0 and 1 for interpolating methods."""
        merged = session.merged
        session = replace(session, merged=replace(merged, stage=dict(stage)))
        point = tradeoff_point(merged.method, merged.params, stage["speech_avg"], stage["music_avg"])
        return self._with_point(session, merged.method, merged.sources, point,
                                end_points(merged.method, ends) if ends else None)

    def run(self, recipe: MergeRecipe) -> MergeResult:
        """The merge path: the recipe's weights written into the pooled model. Callers hold `_computing()`."""
        start = time.perf_counter()
        with self.loaded(recipe):
            _synchronize(self.device)
        return MergeResult(recipe, time.perf_counter() - start, self.device)

    def fitted(self, recipe: MergeRecipe) -> tuple[dict[str, LinearProbe], ProbeScores]:
        """The live probe set's probes fitted on the recipe's merged encoder, and their scores (fitted when first
        asked for: by the clip panel, the sweep, an export before any stage; cached by the recipe)."""
        with self._computing(), self.loaded(recipe) as merged:
            return self.bench.evaluate(merged, key=recipe.key)

    @contextmanager
    def loaded(self, recipe: MergeRecipe) -> Iterator[Encoder]:
        """The recipe's merged encoder, running in the pooled model (its weights rebuilt unless it holds them)."""
        encoders = self._encoders(recipe.inputs)
        first = encoders[next(iter(recipe.inputs))]
        with self.pool.hold(first, self.device, recipe.key, lambda out: self._write(recipe, encoders, out),
                            f"merged {recipe.method}") as merged:
            yield merged

    def _write(self, recipe: MergeRecipe, encoders: dict[str, Encoder], out: StateDict) -> None:
        """Rebuild the recipe's weights into `out`: in place for the interpolations (at the memory-bandwidth
        limit, with the re-ordered music weights kept on the device), by a copy of the result otherwise."""
        device, method = self.device, get_method(recipe.method)
        states = {role: self.kept.on(device, recipe.inputs[role], encoders[role]) for role in method.inputs}
        params = dict(recipe.params)
        if method.aligns:
            role = method.aligns
            params["alignment"] = Reordered(self.kept.reordered(device, recipe.inputs[role], encoders[role],
                                                                recipe.alignment_key, recipe.alignment))
        if method.into is not None:  # the registry's encoders were checked finite when loaded
            method.into(out, *(states[role] for role in method.inputs), **method.arguments(params),
                        inputs_finite=True)
        else:
            copying(run_method(recipe.method, states, **params))(out)

    def _with_point(self, session: LabSession, method: str, inputs: dict[str, str], point: dict,
                    ends: tuple[dict, ...] | None = None) -> LabSession:
        sources = tuple(sorted(inputs.items()))
        old_sources, points = session.curves.get(method, (None, ()))
        if old_sources != sources:
            points = ()
        if ends is not None:
            points = tuple(p for p in points if p["label"] not in {e["label"] for e in ends}) + ends
        points = tuple(p for p in points if p["label"] != point["label"]) + (point,)
        return replace(session, curves={**session.curves, method: (sources, points)})

    def _reference_ends(self, method: str, inputs: dict[str, str]) -> tuple[dict, ...] | None:
        """The curve's ends on the live probe set's scores of the two inputs (see `end_points`)."""
        if method not in ALPHA_METHODS:
            return None
        scores = [self.reference(key)[1] for key in inputs.values()]
        return end_points(method, tuple({"speech_avg": s.average("speech"), "music_avg": s.average("music")} for s in scores))

    def sweep(self, session: LabSession, sources: Mapping[str, str | None], method: str, *,
              allow_rate_mismatch: bool = False, progress: Progress | None = None) -> LabSession:
        """Fill `method`'s trade-off curve on the live probe set: α from 0.1 to 0.75, or λ pairs summing to 1 for
        task vectors (each merge fitted with its own probes)."""
        settings = sweep_settings(method)
        for step, setting in enumerate(settings):
            recipe = self.recipe(session, sources, method, allow_rate_mismatch=allow_rate_mismatch, **setting)
            scores = self.fitted(recipe)[1]
            point = tradeoff_point(method, recipe.params, scores.average("speech"), scores.average("music"))
            session = self._with_point(session, method, recipe.inputs, point, self._reference_ends(method, recipe.inputs))
            if progress:
                progress((step + 1) / len(settings), f"{method} {setting}")
        return session

    # probing a clip

    def probe_clip(self, session: LabSession, sources: Mapping[str, str | None], path: str | Path | None,
                   method: str = "permute") -> ClipReport:
        """Class probabilities per task of the merged encoder beside its two inputs, for an uploaded clip."""
        if not path:
            raise MergeError("no clip: upload or record one, or pick an example")
        path = Path(path)
        if path.is_file() and path.stat().st_size > self.config.max_upload_bytes:
            raise MergeError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; "
                             f"the limit is {self.config.max_upload_bytes / 2**20:g} MB")
        suite = self.bench.suite
        clip, info = load_audio(path, suite.sample_rate, max_seconds=self.config.max_clip_seconds)
        if len(clip) < suite.sample_rate // 10:
            raise MergeError(f"{path.name}: {len(clip) / suite.sample_rate:.2f} s is too short (at least 0.1 s)")
        merged = session.merged
        inputs = merged.sources if merged else method_inputs(method, sources)
        first, second = [(role, key) for role, key in inputs.items() if role != "base"]
        predictions = {}
        with self._computing():
            for role, key in (first, ("merged", None), second):
                if key is None and merged is None:
                    predictions[role] = None
                    continue
                probes = self.fitted(merged.recipe)[0] if key is None else self.reference(key)[0]
                with (self.loaded(merged.recipe) if key is None else self._running(key)) as running:
                    predictions[role] = suite.predict(running, clip, suite.sample_rate, probes=probes)
        return ClipReport((first, second), tuple(task.name for task in suite.tasks), predictions, info["name"],
                          len(clip) / suite.sample_rate, tuple(info["warnings"]))

    # export

    def export(self, session: LabSession) -> Path:
        """A zip of the merged encoder (rebuilt from the session's recipe) in transformers format with its
        merge_config.json."""
        merged = session.merged
        if merged is None:
            raise MergeError("nothing to export yet: merge first (step 3)")
        recipe = merged.recipe
        encoders = self._encoders(recipe.inputs)
        first = encoders[next(iter(encoders))]
        aligns = get_method(recipe.method).aligns
        record = merge_record(recipe.method, encoders, recipe.params, {aligns: recipe.alignment} if aligns else None,
                              allow_rate_mismatch=recipe.allow_rate_mismatch)
        record["probe_scores"] = merged.stage or {"note": self.bench.describe(), **self.fitted(recipe)[1].as_row()}
        folder = self.exports.new()
        name = f"merged-{recipe.method}"
        try:
            with self._computing(), self.loaded(recipe) as running:
                saved = save_encoder(folder / name, weights_of(running.model), first.config, sample_rate=first.sample_rate,
                                     normalize=first.normalize, merge_config=record)
            archive = zip_encoder_dir(saved, folder / f"{name}.zip")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        shutil.rmtree(saved, ignore_errors=True)
        self.exports.prune()
        return archive


def end_points(method: str, ends: tuple[dict, dict]) -> tuple[dict, ...] | None:
    """For α methods, α=0 is the first input and α=1 the second (functionally, for permute): their points from the
    two inputs' {"speech_avg", "music_avg"}; None for other methods."""
    if method not in ALPHA_METHODS:
        return None
    return tuple(tradeoff_point(method, {"alpha": a}, **end) for a, end in zip((0.0, 1.0), ends))


def _differs(a: Encoder, b: Encoder) -> bool:
    try:
        check_compatible(a.config, b.config)
    except MergeError:
        return True
    return False


def _synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
