"""The engine behind the app: everything merge lab's page does that is not UI.

One `Lab` per server, shared by every session: the allow-listed encoders (loaded once, never mutated),
the calibration clips and an alignment cache, the live probe suite with fitted-probe caches, and one
reusable model object per device and architecture into which each merge's weights are copied. What
belongs to one person lives in a `LabSession` value (their alignment, merged weights on the CPU, their
probes and trade-off points); every operation takes a session and returns a new one.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from transformers import HubertModel

from .align import PAPER_COMPONENTS, Alignment, Progress
from .audio import load_audio
from .benchmark import MODEL_NAMES, MODELS_DIR
from .checkpoint import save_encoder, zip_encoder_dir
from .encoders import COMPATIBILITY_FIELDS, Encoder, build_model, check_compatible, encoder_from_state, load_encoder
from .methods import METHODS
from .pipeline import align, merge_encoders, merge_record
from .probes import LinearProbe, ProbeScores, ProbeSuite, builtin_suite
from .spec import COMPONENTS
from .state import MergeError, StateDict, state_checksum


PAPER_HUB_ENCODERS = ("facebook/hubert-base-ls960", "m-a-p/MERT-v0-public")
ROLE_TITLES = {
    "speech": "speech encoder",
    "music": "music encoder",
    "student_base": "student base (task vectors)",
    "student_speech": "speech student",
    "student_music": "music student",
    "speech_ft": "fine-tuned speech encoder",
}
_TASK_VECTOR_ROLES = {"base": "student_base", "speech": "student_speech", "music": "student_music"}
# Which chosen encoder fills each input of a method.
METHOD_ROLES: dict[str, dict[str, str]] = {
    "linear": {"speech": "speech", "music": "music"},
    "permute": {"speech": "speech", "music": "music"},
    "task_arithmetic": _TASK_VECTOR_ROLES,
    "ties": _TASK_VECTOR_ROLES,
    "dare": _TASK_VECTOR_ROLES,
    "drm": _TASK_VECTOR_ROLES,
    "speech_ft": {"pretrained": "speech", "finetuned": "speech_ft"},
}
# Methods whose trade-off is one interpolation weight α from the first input (α=0) to the second (α=1).
ALPHA_METHODS = ("linear", "permute", "speech_ft")
SWEEP_ALPHAS = (0.1, 0.25, 0.5, 0.75)
SWEEP_LAMBDAS = ((0.9, 0.1), (0.75, 0.25), (0.5, 0.5), (0.25, 0.75), (0.1, 0.9))


@dataclass(frozen=True)
class LabConfig:
    """Operator settings (environment variables in `from_env`); nothing here comes from the page."""

    models_dir: Path = MODELS_DIR
    extra_encoders: tuple[str, ...] = ()  # allow-listed hub ids or local model folders
    device: str = "auto"
    max_clip_seconds: float = 30.0
    max_upload_bytes: int = 20 * 2**20
    live_train: int = 32  # probe clips per task used to fit the live probes (the benchmark uses all)
    live_test: int = 16  # ... and to score them
    calibration_limit: int | None = None
    feature_batch: int = 8  # clips per forward pass: small batches stay in cache (fastest on 2 cores)
    fit_iterations: int = 30  # L-BFGS iterations per live probe (the benchmark: 100)
    threads: int = 0  # torch threads for feature extraction (0: torch's default)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LabConfig:
        """MERGE_LAB_MODELS, MERGE_LAB_ENCODERS (comma-separated; on a Space the paper's two hub encoders by
        default), MERGE_LAB_DEVICE, MERGE_LAB_MAX_UPLOAD_MB, MERGE_LAB_LIVE_TRAIN, MERGE_LAB_LIVE_TEST,
        MERGE_LAB_CALIBRATION_LIMIT, MERGE_LAB_FIT_ITERATIONS, MERGE_LAB_THREADS."""
        default_extra = ",".join(PAPER_HUB_ENCODERS) if environ.get("SPACE_ID") else ""
        extra = tuple(s.strip() for s in environ.get("MERGE_LAB_ENCODERS", default_extra).split(",") if s.strip())
        limit = environ.get("MERGE_LAB_CALIBRATION_LIMIT")
        return cls(
            models_dir=Path(environ.get("MERGE_LAB_MODELS", MODELS_DIR)),
            extra_encoders=extra,
            device=environ.get("MERGE_LAB_DEVICE", "auto"),
            max_upload_bytes=int(float(environ.get("MERGE_LAB_MAX_UPLOAD_MB", 20)) * 2**20),
            live_train=int(environ.get("MERGE_LAB_LIVE_TRAIN", cls.live_train)),
            live_test=int(environ.get("MERGE_LAB_LIVE_TEST", cls.live_test)),
            calibration_limit=int(limit) if limit else None,
            fit_iterations=int(environ.get("MERGE_LAB_FIT_ITERATIONS", cls.fit_iterations)),
            threads=int(environ.get("MERGE_LAB_THREADS", cls.threads)),
        )


# -- encoders ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderInfo:
    key: str
    name: str
    parameters: int
    sample_rate: int
    device: str


class EncoderRegistry:
    """The encoders a page may ask for, by key: the built-in names (under `models_dir`) and the operator's
    extra hub ids and folders. Each is loaded once, on first use, and shared; nobody mutates it."""

    def __init__(self, models_dir: Path, extra: Sequence[str] = ()) -> None:
        self.models_dir = Path(models_dir)
        self.extra = tuple(extra)
        self._loaded: dict[str, Encoder] = {}
        self._checksums: dict[str, str] = {}
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        return [*MODEL_NAMES.values(), *self.extra]

    def default(self, role: str) -> str:
        return MODEL_NAMES[role]

    def label(self, key: str) -> str:
        if key in MODEL_NAMES.values():
            return key if (self.models_dir / key).is_dir() else f"{key} (missing)"
        return key

    def get(self, key: str) -> Encoder:
        """The loaded encoder; MergeError for a key outside the allow-list, a missing model or a bad checkpoint."""
        if key not in self.keys():
            raise MergeError(f"'{key}' is not one of this app's encoders; the operator sets them (MERGE_LAB_ENCODERS)")
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = self._load(key)
            return self._loaded[key]

    def checksum(self, key: str) -> str:
        encoder = self.get(key)
        with self._lock:
            if key not in self._checksums:
                self._checksums[key] = state_checksum(encoder.state_dict())
            return self._checksums[key]

    def _load(self, key: str) -> Encoder:
        local_extra = [Path(k) for k in self.extra if Path(k).exists()]
        hub_extra = [k for k in self.extra if not Path(k).exists()]
        if key in MODEL_NAMES.values():
            source = self.models_dir / key
            if not source.is_dir():
                raise MergeError(f"built-in encoder '{key}' is not in {self.models_dir}: "
                                 "train it, or point MERGE_LAB_MODELS at a folder that holds it")
        else:
            source = key
        return load_encoder(source, allowed_roots=[self.models_dir, *local_extra], allowed_hub_ids=hub_extra)


# -- one reusable model per device ----------------------------------------------------------------

def _architecture(config) -> tuple:
    return tuple(str(getattr(config, name, None)) for name in COMPATIBILITY_FIELDS)


class ModelPool:
    """One HubertModel per (device, architecture), reused for every merge and every encoder that has to run
    there: weights are copied into it, so memory does not grow with the number of merges or sessions."""

    def __init__(self) -> None:
        self._models: dict[tuple, HubertModel] = {}
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._models)

    @contextmanager
    def hold(self, like: Encoder, state: StateDict, device: str, name: str) -> Iterator[Encoder]:
        """An Encoder (`like`'s rate and normalisation) running `state` on `device`, valid inside the block."""
        with self.lock:
            key = (str(device), _architecture(like.config))
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = build_model(like.config, state, what=name, device=device)
            else:
                with torch.no_grad():
                    model.load_state_dict(state, strict=True)
            yield Encoder(model, like.sample_rate, like.normalize, name, "merge lab")


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op threads (0: leave as is). Process-wide: callers hold the Lab's lock."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- probes ---------------------------------------------------------------------------------------

class ProbeBench:
    """The live probe suite and the probes fitted on it, cached by the weights they were fitted for."""

    def __init__(self, suite: ProbeSuite, cache_size: int = 16) -> None:
        self.suite = suite
        self._fitted: OrderedDict[str, tuple[dict[str, LinearProbe], ProbeScores]] = OrderedDict()
        self._cache_size = cache_size

    @property
    def domains(self) -> dict[str, str]:
        return {task.name: task.domain for task in self.suite.tasks}

    def describe(self) -> str:
        tasks = self.suite.tasks
        train, test = max(len(t.train) for t in tasks), max(len(t.test) for t in tasks)
        return f"live probes: {train} train / {test} test clips per task ({len(self.suite.clips)} clips in all)"

    def evaluate(self, encoder: Encoder) -> tuple[dict[str, LinearProbe], ProbeScores]:
        """Probes fitted on `encoder`'s features and their test scores (cached by its weights)."""
        key = state_checksum(encoder.state_dict())
        if key not in self._fitted:
            self.suite.features(encoder)
            with torch_threads(1):  # many small ops: extra threads only wait on each other, badly so on a busy CPU
                probes = self.suite.fit(encoder)
                self._fitted[key] = (probes, self.suite.score(encoder, probes=probes))
            while len(self._fitted) > self._cache_size:
                self._fitted.popitem(last=False)
        self._fitted.move_to_end(key)
        return self._fitted[key]


# -- session ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MergeResult:
    method: str
    params: dict
    sources: dict[str, str]  # method input role -> encoder key
    state: StateDict  # on the CPU, whatever device merged it
    probes: dict[str, LinearProbe]
    scores: ProbeScores
    merge_seconds: float
    score_seconds: float
    device: str
    alignment: Alignment | None = None  # the one a permute merge used

    def point(self) -> dict:
        return _point(self.method, self.params, self.scores)

    def summary(self, probe_note: str) -> dict:
        return {
            "method": self.method,
            "params": self.params,
            "inputs": self.sources,
            "device": self.device,
            "merge_seconds": round(self.merge_seconds, 3),
            "score_seconds": round(self.score_seconds, 3),
            "probes": probe_note,
            **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.scores.as_row().items()},
        }


@dataclass(frozen=True)
class LabSession:
    """One person's work: replaced, never changed, by every Lab operation."""

    alignment: Alignment | None = None
    alignment_pair: tuple[str, str] | None = None  # (speech key, music key) it was computed for
    merged: MergeResult | None = None
    curves: dict[str, tuple[tuple, tuple[dict, ...]]] = field(default_factory=dict)  # method -> (sources, points)

    def curve_points(self) -> dict[str, list[dict]]:
        return {method: sorted(points, key=lambda p: p["alpha"]) for method, (_, points) in self.curves.items()}


def _point(method: str, params: dict, scores: ProbeScores) -> dict:
    if method in ALPHA_METHODS:
        x, label = params["alpha"], f"α={params['alpha']:g}"
        if params.get("layer_alphas"):
            label += " (per layer)"
    else:
        ls, lm = params["lambda_speech"], params["lambda_music"]
        x, label = lm / (ls + lm) if ls + lm else 0.5, f"λ={ls:g}/{lm:g}"
    return {"alpha": x, "label": label, "speech_avg": scores.average("speech"), "music_avg": scores.average("music")}


def mean_matched(alignment: Alignment) -> tuple[float, float]:
    """Mean matched correlation over all groups, before and after the permutation."""
    groups = list(alignment.groups.values())
    return sum(g.before for g in groups) / len(groups), sum(g.after for g in groups) / len(groups)


def showcase_group(alignment: Alignment, max_units: int = 256) -> str:
    """The group whose heatmap shows the alignment best: the largest after/before gain among groups small
    enough to draw cell by cell (larger ones are block-averaged, which blurs the diagonal)."""
    groups = alignment.groups
    small = [name for name, g in groups.items() if len(g.perm) <= max_units] or list(groups)
    return max(small, key=lambda name: groups[name].after / max(groups[name].before, 1e-6))


def parse_layer_alphas(text: str | None) -> list[float] | None:
    """'0.1, 0.2 0.3' -> [0.1, 0.2, 0.3]; empty -> None (one α everywhere)."""
    parts = [p for p in re.split(r"[,\s;]+", (text or "").strip()) if p]
    if not parts:
        return None
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise MergeError(f"per-layer α: '{part}' is not a number") from None
        if not math.isfinite(value):
            raise MergeError(f"per-layer α: '{part}' is not a finite number")
        values.append(value)
    return values


def merge_params(method: str, alpha: float, lambda_speech: float, lambda_music: float,
                 layer_alphas: Sequence[float] | None = None) -> dict:
    """The page's controls as the named method's arguments (each method takes only its own)."""
    if method not in METHOD_ROLES:
        raise MergeError(f"unknown method '{method}': choose from {', '.join(METHOD_ROLES)}")
    if method in ("linear", "permute"):
        return {"alpha": float(alpha), **({"layer_alphas": list(layer_alphas)} if layer_alphas else {})}
    if layer_alphas:
        raise MergeError(f"per-layer α applies to linear and permute, not to {method}: clear it")
    if method == "speech_ft":
        return {"alpha": float(alpha)}
    return {"lambda_speech": float(lambda_speech), "lambda_music": float(lambda_music)}


@dataclass(frozen=True)
class ClipReport:
    columns: list[str]
    rows: list[list[str]]
    warnings: list[str]
    seconds: float  # clip length used
    note: str


# -- the lab ----------------------------------------------------------------------------------------

class Lab:
    """Shared by every session of one server; thread-safe."""

    def __init__(self, config: LabConfig | None = None) -> None:
        self.config = config or LabConfig()
        self.registry = EncoderRegistry(self.config.models_dir, self.config.extra_encoders)
        self.pool = ModelPool()
        self._bench: ProbeBench | None = None
        self._calibration: tuple[list[np.ndarray], str] | None = None
        self._alignments: OrderedDict[tuple, Alignment] = OrderedDict()
        self._references: dict[str, tuple[dict[str, LinearProbe], ProbeScores]] = {}
        self._lock = threading.RLock()
        self._export_root = Path(tempfile.mkdtemp(prefix="merge-lab-exports-"))
        weakref.finalize(self, shutil.rmtree, self._export_root, True)  # the exports go with the lab, or at exit

    @contextmanager
    def _computing(self) -> Iterator[None]:
        """One computation at a time (2 cores gain nothing from more), with the configured thread count."""
        with self._lock, torch_threads(self.config.threads):
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
        with self._lock:
            if self._calibration is None:
                self._calibration = _builtin_calibration(self.config.calibration_limit)
            return self._calibration

    def default_sources(self) -> dict[str, str]:
        return {role: self.registry.default(role) for role in ROLE_TITLES}

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

    def describe(self, sources: Mapping[str, str]) -> tuple[list[list[str]], list[str]]:
        """Rows (role, encoder, parameters, sample rate, device) for the chosen encoders, and the problems found:
        missing or unloadable encoders and incompatible pairs."""
        rows, problems, loaded = [], [], {}
        keys = {role: sources.get(role) or self.registry.default(role) for role in ROLE_TITLES}
        for role, title in ROLE_TITLES.items():
            key = keys[role]
            try:
                encoder = loaded[role] = self.registry.get(key)
                rows.append([title, key, f"{encoder.num_parameters / 1e6:.2f} M", f"{encoder.sample_rate} Hz",
                             f"{encoder.device} (merges run on {self.device})"])
            except MergeError as error:
                rows.append([title, key, "—", "—", "not loaded"])
                problems.append(str(error))
        for method_roles in ({"speech", "music"}, set(_TASK_VECTOR_ROLES.values()), {"speech", "speech_ft"}):
            present = [role for role in ROLE_TITLES if role in method_roles and role in loaded]
            for other in present[1:]:
                try:
                    check_compatible(loaded[present[0]].config, loaded[other].config, names=(keys[present[0]], keys[other]))
                except MergeError as error:
                    problems.append(str(error))
        return rows, problems

    def reference(self, key: str) -> tuple[dict[str, LinearProbe], ProbeScores]:
        """Probes and scores of an unmerged encoder (computed once per encoder)."""
        with self._computing():
            if key not in self._references:
                encoder = self.registry.get(key)
                with self.pool.hold(encoder, encoder.state_dict(), self.device, encoder.name) as running:
                    self._references[key] = self.bench.evaluate(running)
            return self._references[key]

    # alignment

    def align(self, session: LabSession, speech_key: str, music_key: str, *,
              components: Sequence[str] = PAPER_COMPONENTS, absolute: bool = True,
              progress: Progress | None = None) -> LabSession:
        """Correlation alignment of the music encoder to the speech encoder on the calibration clips (cached)."""
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
        return replace(session, alignment=alignment, alignment_pair=(speech_key, music_key))

    def _run_alignment(self, speech, music, clips, components, absolute, progress) -> Alignment:
        device = self.device
        if device != "cpu":  # temporary device copies, freed when the alignment is done
            speech, music = (encoder_from_state(e.config, e.state_dict(), sample_rate=e.sample_rate, normalize=e.normalize,
                                                name=e.name, source=e.source, device=device) for e in (speech, music))
        alignment = align(speech, music, clips=clips, components=components, absolute=absolute, progress=progress)
        for group in alignment.groups.values():
            group.perm = group.perm.cpu()
        return alignment

    def calibration_note(self) -> str:
        clips, source = self.calibration()
        return f"{len(clips)} {source}"

    # merging

    def merge(self, session: LabSession, sources: Mapping[str, str], method: str, *, alpha: float = 0.1,
              lambda_speech: float = 0.5, lambda_music: float = 0.5, layer_alphas: str | Sequence[float] | None = None,
              record: bool = True) -> LabSession:
        """Merge with the chosen encoders, score the result with the live probes; the session keeps the weights."""
        if isinstance(layer_alphas, str) or layer_alphas is None:
            layer_alphas = parse_layer_alphas(layer_alphas)
        params = merge_params(method, alpha, lambda_speech, lambda_music, layer_alphas)
        inputs = {role: sources.get(lab_role) or self.registry.default(lab_role) for role, lab_role in METHOD_ROLES[method].items()}
        encoders = {role: self.registry.get(key) for role, key in inputs.items()}
        alignments = None
        if method == "permute":
            pair = (inputs["speech"], inputs["music"])
            if session.alignment is None or session.alignment_pair != pair:
                raise MergeError("permute needs the alignment of these two encoders: run the alignment first (step 2)")
            alignments = {"music": session.alignment}
        device = self.device
        with self._computing():
            start = time.perf_counter()
            state = merge_encoders(method, encoders, alignments=alignments, device=device, **params)
            merge_seconds = time.perf_counter() - start
            first = encoders[next(iter(inputs))]
            with self.pool.hold(first, state, device, f"merged {method}") as merged:
                probes, scores = self.bench.evaluate(merged)
            score_seconds = time.perf_counter() - start - merge_seconds
        result = MergeResult(method, params, inputs, {k: v.detach().cpu() for k, v in state.items()}, probes, scores,
                             merge_seconds, score_seconds, device, alignments["music"] if alignments else None)
        session = replace(session, merged=result) if record else session
        return self._with_point(session, method, inputs, result.point())

    def _with_point(self, session: LabSession, method: str, inputs: dict[str, str], point: dict) -> LabSession:
        sources = tuple(sorted(inputs.items()))
        old_sources, points = session.curves.get(method, (None, ()))
        if old_sources != sources:
            points = self._endpoints(method, inputs)
        points = tuple(p for p in points if p["label"] != point["label"]) + (point,)
        return replace(session, curves={**session.curves, method: (sources, points)})

    def _endpoints(self, method: str, inputs: dict[str, str]) -> tuple[dict, ...]:
        """For α methods, α=0 is the first input and α=1 the second (functionally, for permute)."""
        if method not in ALPHA_METHODS:
            return ()
        first, second = list(inputs.values())
        return tuple(_point(method, {"alpha": a}, self.reference(key)[1]) for a, key in ((0.0, first), (1.0, second)))

    def sweep(self, session: LabSession, sources: Mapping[str, str], method: str, *,
              progress: Progress | None = None) -> LabSession:
        """Fill `method`'s trade-off curve: α from 0.1 to 0.75, or λ pairs summing to 1 for task vectors."""
        settings = [{"alpha": a} for a in SWEEP_ALPHAS] if method in ALPHA_METHODS else \
            [{"lambda_speech": s, "lambda_music": m} for s, m in SWEEP_LAMBDAS]
        for step, setting in enumerate(settings):
            session = self.merge(session, sources, method, record=False, **setting)
            if progress:
                progress((step + 1) / len(settings), f"{method} {setting}")
        return session

    def reference_scores(self, session: LabSession) -> dict[str, dict[str, float]]:
        """Accuracy per task of the merged encoder between its two non-base inputs, in display order."""
        merged = session.merged
        if merged is None:
            return {}
        first, second = [(role, key) for role, key in merged.sources.items() if role != "base"]
        return {
            _display(first[0]): self.reference(first[1])[1].accuracy,
            "merged": merged.scores.accuracy,
            _display(second[0]): self.reference(second[1])[1].accuracy,
        }

    # probing a clip

    def probe_clip(self, session: LabSession, sources: Mapping[str, str], path: str | Path | None,
                   method: str = "permute") -> ClipReport:
        """Top predictions per task of the merged encoder beside its two inputs, for an uploaded clip."""
        if not path:
            raise MergeError("no clip: upload or record one, or pick an example")
        path = Path(path)
        if path.is_file() and path.stat().st_size > self.config.max_upload_bytes:
            raise MergeError(f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; "
                             f"the limit is {self.config.max_upload_bytes / 2**20:g} MB")
        bench = self.bench
        clip, info = load_audio(path, bench.suite.sample_rate, max_seconds=self.config.max_clip_seconds)
        if len(clip) < bench.suite.sample_rate // 10:
            raise MergeError(f"{path.name}: {len(clip) / bench.suite.sample_rate:.2f} s is too short (at least 0.1 s)")
        merged = session.merged
        inputs = merged.sources if merged else {
            role: sources.get(lab_role) or self.registry.default(lab_role) for role, lab_role in METHOD_ROLES[method].items()}
        first, second = [(role, key) for role, key in inputs.items() if role != "base"]
        columns, predictions = ["task"], []
        with self._computing():
            for role, key in (first, ("merged", None), second):
                if key is None and merged is None:
                    columns.append("merged")
                    predictions.append(None)
                    continue
                if key is None:
                    encoder, state, probes = self.registry.get(first[1]), merged.state, merged.probes
                else:
                    encoder = self.registry.get(key)
                    state, probes = encoder.state_dict(), self.reference(key)[0]
                columns.append("merged" if key is None else _display(role))
                with self.pool.hold(encoder, state, self.device, role) as running:
                    predictions.append(bench.suite.predict(running, clip, bench.suite.sample_rate, probes=probes))
        rows = []
        for task in bench.suite.tasks:
            cells = [_top(p[task.name]) if p else "merge first (step 3)" for p in predictions]
            rows.append([task.name, *cells])
        names = " · ".join(f"{_display(role)} = {key}" for role, key in (first, second))
        note = f"{info['name']}: {len(clip) / bench.suite.sample_rate:.1f} s · {names}"
        return ClipReport(columns, rows, list(info["warnings"]), len(clip) / bench.suite.sample_rate, note)

    # export

    def export(self, session: LabSession) -> Path:
        """A zip of the merged encoder in transformers format with its merge_config.json."""
        merged = session.merged
        if merged is None:
            raise MergeError("nothing to export yet: merge first (step 3)")
        encoders = {role: self.registry.get(key) for role, key in merged.sources.items()}
        first = encoders[next(iter(encoders))]
        alignments = {"music": merged.alignment} if merged.alignment else None
        record = merge_record(merged.method, encoders, merged.params, alignments)
        record["probe_scores"] = {"note": self.bench.describe(), **merged.scores.as_row()}
        folder = Path(tempfile.mkdtemp(prefix="export-", dir=self._export_root))
        name = f"merged-{merged.method}"
        try:
            saved = save_encoder(folder / name, merged.state, first.config, sample_rate=first.sample_rate,
                                 normalize=first.normalize, merge_config=record)
            archive = zip_encoder_dir(saved, folder / f"{name}.zip")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        shutil.rmtree(saved, ignore_errors=True)
        self._prune_exports(keep=8)
        return archive

    def _prune_exports(self, keep: int) -> None:
        folders = sorted(self._export_root.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in folders[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _builtin_calibration(limit: int | None) -> tuple[list[np.ndarray], str]:
    from .calibration import builtin_calibration

    return builtin_calibration(limit=limit)


def _display(role: str) -> str:
    return {"pretrained": "speech", "finetuned": "fine-tuned"}.get(role, role)


def _top(probabilities: Mapping[str, float]) -> str:
    label, p = max(probabilities.items(), key=lambda item: item[1])
    return f"{label} ({p:.0%})"
