"""Live probe scores: an estimate of the full suite's scores within about two seconds, then refined stage by
stage up to the full suite itself.

A stage fits the probes on a stratified subset of the suite (k training and k test clips per class of every
task) and scores the merged encoder on it; `merging.estimate` turns that into an estimate of the full-suite score
with its interval, from references: the merge's inputs and every merge already scored on the full suite, scored on
the same subset. The last stage, "full", is the benchmark's own scoring: the same clips, probes and seed as
`python -m merging benchmark`.

Every unit of work (a few clips' features, one task's probe fit) runs inside a `turn()` the caller gives, so a
service can interleave several people's computations, give way to whoever waits, and drop work nobody waits for
between any two units.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .estimate import (AVERAGES, Estimate, GapModel, Reference, bootstrapped, corrected, difference, full_difference,
                       tasks_of)
from .probes import LinearProbe, ProbeSuite, ProbeTask, fit_probe, layer_features
from .state import state_checksum

STAGE_LADDER = (2, 4, 8, 16, 32)  # clips per class and split of the stages below the full suite
STEP_SECONDS = 0.3  # the work between two yields of `steps`: a caller can stop or give way at least this often
MAX_CHUNK = 64  # clips' features in one unit of work, however fast the device
UNCORRECTED = "uncorrected"  # a stage below the full suite scored before two references were known

Turn = Callable[[], AbstractContextManager]  # entered around a unit of work; yields False when it is not its turn yet


def _always() -> AbstractContextManager:
    return nullcontext(True)


# -- subsets ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Subset:
    """Per task, the suite's clip indices of a stratified subset (train, test)."""

    per_class: int
    train: dict[str, tuple[int, ...]]
    test: dict[str, tuple[int, ...]]

    def clips(self) -> tuple[int, ...]:
        return tuple(sorted({i for split in (self.train, self.test) for idx in split.values() for i in idx}))


def _groups(tasks: Sequence[ProbeTask], split: str) -> list[list[ProbeTask]]:
    """Tasks that label the same clips (one probe set) share a group: one subset serves them all."""
    groups: dict[frozenset, list[ProbeTask]] = {}
    for task in tasks:
        groups.setdefault(frozenset(getattr(task, split)), []).append(task)
    return list(groups.values())


def _pick(group: list[ProbeTask], split: str, per_class: int, rng: np.random.Generator,
          keep: set[int]) -> set[int]:
    """Clips of one probe set, in a seeded random order, taken while some task of the group still lacks
    `per_class` clips of that clip's class; clips in `keep` (an earlier stage) are taken first."""
    indices = getattr(group[0], split)
    labels = {task.name: dict(zip(getattr(task, split), getattr(task, f"{split}_y"))) for task in group}
    order = sorted(rng.permutation(len(indices)).tolist(), key=lambda j: indices[j] not in keep)  # kept ones first
    counts: dict[str, dict[int, int]] = {task.name: {} for task in group}
    chosen = set()
    for j in order:
        clip = indices[j]
        if clip in keep or any(counts[t].get(labels[t][clip], 0) < per_class for t in counts):
            chosen.add(clip)
            for t in counts:
                counts[t][labels[t][clip]] = counts[t].get(labels[t][clip], 0) + 1
    return chosen


def stratified_subset(suite: ProbeSuite, per_class: int, seed: int = 0, within: Subset | None = None) -> Subset:
    """`per_class` training and test clips of every class of every task (all of a class when it has fewer),
    chosen by `seed`; a superset of `within` (an earlier stage), so its clips' features are reused."""
    rng = np.random.default_rng(seed)
    chosen = {}
    for split in ("train", "test"):
        keep = set() if within is None else {i for idx in getattr(within, split).values() for i in idx}
        for group in _groups(suite.tasks, split):
            picked = _pick(group, split, per_class, rng, keep)
            for task in group:
                chosen.setdefault(split, {})[task.name] = tuple(i for i in getattr(task, split) if i in picked)
    return Subset(per_class, chosen["train"], chosen["test"])


# -- scoring on a subset ------------------------------------------------------------------------------

class ClipFeatures:
    """Layer features per clip of a suite for one encoder, computed only for clips not seen before."""

    def __init__(self, suite: ProbeSuite, encoder) -> None:
        self.suite, self.encoder = suite, encoder
        self.rows: dict[int, torch.Tensor] = {}

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        missing = [i for i in indices if i not in self.rows]
        if missing:
            features = layer_features(self.encoder, [self.suite.clips[i] for i in missing], self.suite.sample_rate,
                                      self.suite.batch_size)
            self.rows.update(zip(missing, features))
        return torch.stack([self.rows[i] for i in indices])


@dataclass(frozen=True)
class TaskResult:
    """A task's probe on a subset: accuracy (%), which test clips it got right, and those clips (suite indices);
    `probe` is the fitted probe (not part of the result's value)."""

    accuracy: float
    correct: tuple[bool, ...]
    clips: tuple[int, ...] = ()
    probe: LinearProbe | None = field(default=None, compare=False, repr=False)


def score_task(suite: ProbeSuite, task: ProbeTask, subset: Subset, features, *, seed: int = 0,
               iterations: int | None = None) -> TaskResult:
    """Fit one task's probe on the subset's training clips and score its test clips. `features(indices)` gives
    the rows of those clips (a `ClipFeatures.get`, or rows of full-suite features)."""
    y_of = {**dict(zip(task.train, task.train_y)), **dict(zip(task.test, task.test_y))}
    train, test = subset.train[task.name], subset.test[task.name]
    probe = fit_probe(features(train), torch.tensor([y_of[i] for i in train]), len(task.labels), seed=seed,
                      max_iter=iterations or suite.fit_iterations)
    hits = probe.logits(features(test)).argmax(1) == torch.tensor([y_of[i] for i in test])
    return TaskResult(100.0 * hits.float().mean().item(), tuple(hits.tolist()), tuple(test), probe)  # as ProbeSuite.score


def score_subset(suite: ProbeSuite, subset: Subset, features, *, seed: int = 0,
                 iterations: int | None = None) -> dict[str, TaskResult]:
    """`score_task` for every task of the suite."""
    return {task.name: score_task(suite, task, subset, features, seed=seed, iterations=iterations) for task in suite.tasks}


def full_subset(suite: ProbeSuite) -> Subset:
    """Every clip of the suite, split as the benchmark splits it."""
    return Subset(0, {t.name: t.train for t in suite.tasks}, {t.name: t.test for t in suite.tasks})


# -- a stage's scores -------------------------------------------------------------------------------

class Parent:
    """One input of a merge: its full-suite features and results (a reference once known) and, per stage (clips
    per class), its results on that stage's subset (filled by `LiveProbes` when a stage first needs them)."""

    def __init__(self, rows: torch.Tensor, full: Mapping[str, TaskResult]) -> None:
        self.rows = rows
        self.full = {task: r.accuracy for task, r in full.items()}
        self.full_results = dict(full)
        self.stage: dict[int, dict[str, TaskResult]] = {}

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        return self.rows[list(indices)]

    @property
    def probes(self) -> dict[str, LinearProbe]:
        """Its full-suite probes (the benchmark's)."""
        return {task: r.probe for task, r in self.full_results.items()}


@dataclass(frozen=True)
class LiveScores:
    """Every task's and average's estimate at one stage ("uncorrected", "quick", "16 per class", ..., "full"), with
    the clips it took; `results` are the merge's own per-clip results on the stage's clips, `references` and
    `models` what corrected them (none for the full suite or an uncorrected stage)."""

    stage: str
    per_class: int  # clips per class and split; 0: the full suite
    tasks: Mapping[str, Estimate]
    averages: Mapping[str, Estimate]  # "speech_avg", "music_avg", "avg"
    domains: Mapping[str, str]
    clips: int  # distinct clips the merged encoder has run on so far
    seconds: float  # since the first stage began
    results: Mapping[str, TaskResult] = field(default_factory=dict, compare=False, repr=False)
    references: tuple[Reference, ...] = field(default=(), compare=False, repr=False)
    models: Mapping[str, GapModel] = field(default_factory=dict, compare=False, repr=False)
    ladder: Mapping[int, Mapping[str, TaskResult]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def probes(self) -> dict[str, LinearProbe] | None:
        """The probes this stage fitted on the merged encoder (None once dropped by `without_probes`)."""
        probes = {task: r.probe for task, r in self.results.items()}
        return probes if probes and all(p is not None for p in probes.values()) else None

    @property
    def corrected(self) -> bool:
        return bool(self.references)

    @property
    def estimates_full_suite(self) -> bool:
        """Whether its estimates aim at the full suite's scores (an uncorrected stage's aim at its own clips' only)."""
        return self.per_class == 0 or self.corrected

    def without_probes(self) -> LiveScores:
        """The same scores, holding no fitted probes (what a long-lived cache keeps)."""
        drop = {task: replace(r, probe=None) for task, r in self.results.items()}
        ladder = {k: {task: replace(r, probe=None) for task, r in results.items()} for k, results in self.ladder.items()}
        return replace(self, results=drop, ladder=ladder)

    @property
    def accuracy(self) -> dict[str, float]:
        return {task: e.score for task, e in self.tasks.items()}

    def average(self, domain: str | None = None) -> Estimate:
        """The estimate of the mean over the domain's tasks (None: all), with its interval."""
        return self.averages[next(name for name, d in AVERAGES.items() if d == domain)]

    def summary(self) -> dict:
        return {
            "stage": self.stage,
            "scores": {task: round(e.score, 2) for task, e in self.tasks.items()},
            **{name: round(e.score, 2) for name, e in self.averages.items()},
            "intervals": {name: [round(e.low, 2), round(e.high, 2)] for name, e in {**self.tasks, **self.averages}.items()},
            "test_clips": {task: e.test_clips for task, e in self.tasks.items()},
            "clips": self.clips,
            "references": len(self.references),
        }


def full_stage(results: Mapping[str, TaskResult], domains: Mapping[str, str], clips: int, seconds: float,
               seed: int = 0, ladder: Mapping[int, Mapping[str, TaskResult]] | None = None) -> LiveScores:
    """The full suite's scores, each with its 95 % bootstrap interval over test clips (the benchmark's)."""
    tasks, averages = bootstrapped(results, domains, seed)
    return LiveScores("full", 0, tasks, averages, dict(domains), clips, seconds, dict(results), ladder=dict(ladder or {}))


def stage_difference(first: LiveScores, second: LiveScores, domain: str | None = None) -> tuple[float, float, float]:
    """(difference, low, high): the first merge's full-suite estimate minus the second's over the domain's tasks
    (None: all), with its 95 % interval. Both at the full suite: the paired bootstrap over its test clips. Both at one
    corrected stage: paired on that stage's clips, plus the references' unexplained spread. Otherwise the estimates'
    errors are taken as independent (a full-suite score counts as exact)."""
    tasks = tasks_of(first.domains, domain)
    a, b = first.average(domain), second.average(domain)
    if first.per_class == second.per_class == 0:
        return full_difference(first.results, second.results, tasks)
    if first.per_class == second.per_class and first.corrected and second.corrected:
        return difference(first.results, second.results, (a.score, b.score), tasks, first.references, first.models)
    spread = math.hypot(*((e.high - e.low) / 2 if s.per_class else 0.0 for e, s in ((a, first), (b, second))))
    value = a.score - b.score
    return value, value - spread, value + spread


class LiveProbes:
    """Staged scores of merged encoders on one probe suite (the benchmark's: its clips, probes and seed).

    `parent(encoder)` scores an input encoder on the full suite once (cached by its weights); `stages(encoder)` then
    yields a merge's scores stage by stage, each stage below the full suite corrected by the references (every input
    and merge this object has seen scored on the full suite, of the same feature width). The quick stage's clips per
    class are the most whose measured cost fits `budget_seconds`.
    """

    def __init__(self, suite: ProbeSuite, *, seed: int = 0, budget_seconds: float = 2.0, quick_iterations: int = 30,
                 ladder: Sequence[int] = STAGE_LADDER, cache_size: int = 8, references: int = 64) -> None:
        self.suite, self.seed, self.budget_seconds = suite, seed, budget_seconds
        self.quick_iterations, self.ladder = quick_iterations, tuple(ladder)
        self.domains = {task.name: task.domain for task in suite.tasks}
        self._subsets: dict[int, Subset] = {}
        self._parents: dict[str, Parent] = {}
        self._cache_size, self._reference_limit = cache_size, references
        self._references: dict[int, dict[str, Parent | LiveScores]] = {}  # width -> key -> known merge, oldest first
        self.clip_seconds: float | None = None  # measured cost of one clip's features on this device
        self.fit_seconds: dict[int, float] = {}  # measured cost of fitting and scoring one stage's probes

    def subset(self, per_class: int) -> Subset:
        """The stage's stratified subset; each ladder stage contains the clips of the stages below it."""
        if per_class not in self._subsets:
            below = [k for k in self.ladder if k < per_class]
            within = self.subset(below[-1]) if below else None
            self._subsets[per_class] = stratified_subset(self.suite, per_class, self.seed, within)
        return self._subsets[per_class]

    def stage_subset(self, per_class: int) -> Subset:
        """A stage's clips: the ladder step's subset, or the whole suite for 0."""
        return self.subset(per_class) if per_class else full_subset(self.suite)

    def plan(self, budget_seconds: float | None = None) -> list[int]:
        """Clips per class of each stage, 0 (the full suite) last: the quick stage is the largest ladder step
        whose estimated cost fits the budget (`budget_seconds`, default the probes' own; the full suite at once
        when it fits), then one step about four times its clips, then the full suite."""
        budget = self.budget_seconds if budget_seconds is None else budget_seconds
        if self.clip_seconds is None:
            return [self.ladder[0], 0]
        cost = {k: len(self.subset(k).clips()) * self.clip_seconds + self.fit_seconds.get(k, 0.0) for k in self.ladder}
        full_cost = len(self.suite.clips) * self.clip_seconds + self.fit_seconds.get(0, 0.0)
        if full_cost <= budget:
            return [0]
        fitting = [k for k in self.ladder if cost[k] <= budget] or [self.ladder[0]]
        quick = fitting[-1]
        later = [k for k in self.ladder if len(self.subset(k).clips()) >= 3 * len(self.subset(quick).clips())]
        return [quick, *later[:1], 0]

    def chunk(self) -> int:
        """Clips' features per unit of work: about STEP_SECONDS on this device (8 before anything was measured)."""
        if not self.clip_seconds:
            return 8
        return max(1, min(MAX_CHUNK, int(STEP_SECONDS / self.clip_seconds)))

    # -- units of work, each inside a turn ----------------------------------------------------------

    def _in_turn(self, turn: Turn, work: Callable[[], object], done: float) -> Iterator[tuple[float, None]]:
        """Run `work()` inside `turn()`, yielding (done, None) each time the turn was not given yet; returns its result."""
        while True:
            with turn() as given:
                if given:
                    return work()
            yield done, None

    def _features(self, features: ClipFeatures, indices: Sequence[int], turn: Turn, running, chunk: int | None,
                  done: Callable[[], float]) -> Iterator[tuple[float, None]]:
        """Features of the clips not seen yet, a chunk per turn (`running()` gives the encoder inside a turn)."""
        missing = [i for i in indices if i not in features.rows]
        start, busy = 0, 0.0
        while start < len(missing):
            size = chunk or self.chunk()

            def unit(part=missing[start:start + size]):
                with running() as encoder:
                    began = time.perf_counter()
                    features.encoder = encoder
                    features.get(part)
                    return time.perf_counter() - began

            busy += yield from self._in_turn(turn, unit, done())
            start += size
            if start < len(missing):
                yield done(), None
        if missing and chunk is None:
            self.clip_seconds = busy / len(missing) if self.clip_seconds is None else \
                0.5 * self.clip_seconds + 0.5 * busy / len(missing)

    def _fit(self, subset: Subset, rows, per_class: int, turn: Turn, done: float) -> Iterator[tuple[float, None]]:
        """Every task's probe fitted and scored, one task per turn; returns {task: TaskResult}."""
        iterations = None if per_class == 0 else self.quick_iterations
        results, busy = {}, 0.0
        for task in self.suite.tasks:
            def unit(task=task):
                began = time.perf_counter()
                result = score_task(self.suite, task, subset, rows, seed=self.seed, iterations=iterations)
                return result, time.perf_counter() - began

            results[task.name], seconds = yield from self._in_turn(turn, unit, done)
            busy += seconds
        self.fit_seconds[per_class] = busy
        return results

    # -- references ---------------------------------------------------------------------------------

    def remember(self, key: str, known: Parent | LiveScores, width: int | None = None) -> None:
        """Keep an input (its features) or a merge's full stage (with its ladder; `width`: its features' size) as a
        reference for later stages of merges with features of that size."""
        width = int(known.rows.shape[-1]) if isinstance(known, Parent) else width
        shelf = self._references.setdefault(width, {})
        shelf.pop(key, None)
        shelf[key] = known
        while len(shelf) > self._reference_limit:
            shelf.pop(next(iter(shelf)))

    def references(self, per_class: int, width: int, turn: Turn = _always, exclude: str | None = None
                   ) -> Iterator[tuple[float, None]]:
        """The references of this feature width on the stage's subset (inputs scored there a task per turn when first
        needed), leaving out `exclude`; a generator of waits, returning a tuple of `Reference`s."""
        found = []
        for key, known in list(self._references.get(width, {}).items()):
            if key == exclude:
                continue
            if isinstance(known, Parent):
                if per_class not in known.stage:
                    known.stage[per_class] = yield from self._fit(self.subset(per_class), known.take, per_class, turn, 0.0)
                found.append(Reference(key, known.full_results, known.stage[per_class]))
            elif per_class in known.ladder:
                found.append(Reference(key, known.results, known.ladder[per_class]))
        return tuple(found)

    # -- parents ------------------------------------------------------------------------------------

    def parent(self, encoder, key: str | None = None, *, chunk: int | None = None, turn: Turn = _always,
               running: Callable[[], AbstractContextManager] | None = None) -> Parent:
        """An input encoder's full-suite features and scores (cached by its weights); measures the cost of a
        clip's features on this device. See `parent_steps` for `turn` and `running`."""
        steps = self.parent_steps(encoder, key, chunk=chunk, turn=turn, running=running)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def parent_steps(self, encoder, key: str | None = None, *, chunk: int | None = None, turn: Turn = _always,
                     running: Callable[[], AbstractContextManager] | None = None
                     ) -> Iterator[tuple[float, None]]:
        """`parent` as a generator of (fraction done, None) between units of work; returns the Parent (also kept as
        a reference). Each unit runs inside `turn()`; `running()`, entered inside it, yields the encoder (`encoder`
        may then be None if `key` is given)."""
        key = key or state_checksum(encoder.state_dict())
        if key in self._parents:
            return self._parents[key]
        running = running or (lambda: nullcontext(encoder))
        features, total = ClipFeatures(self.suite, encoder), len(self.suite.clips)
        yield from self._features(features, range(total), turn, running, chunk, lambda: len(features.rows) / total)
        rows = features.get(range(total))
        results = yield from self._fit(full_subset(self.suite), lambda idx: rows[list(idx)], 0, turn, 1.0)
        parent = Parent(rows, results)
        self._parents[key] = parent
        self.remember(key, parent)
        while len(self._parents) > self._cache_size:
            self._parents.pop(next(iter(self._parents)))
        return parent

    # -- a merge's stages ---------------------------------------------------------------------------

    def stages(self, encoder, *, plan: Sequence[int] | None = None, key: str | None = None,
               remember: bool = True) -> Iterator[LiveScores]:
        """The merged encoder's scores stage by stage (see `plan`); stop iterating to stop the work."""
        for _, scores in self.steps(encoder, plan=plan, key=key, remember=remember):
            if scores is not None:
                yield scores

    def steps(self, encoder, *, plan: Sequence[int] | None = None, chunk: int | None = None, turn: Turn = _always,
              running: Callable[[], AbstractContextManager] | None = None,
              known: Mapping[int, LiveScores] | None = None, features: ClipFeatures | None = None,
              key: str | None = None, remember: bool = True) -> Iterator[tuple[float, LiveScores | None]]:
        """The work of `stages` a unit at a time: yields (fraction of the suite's clips done, the stage's scores or
        None between units), at least every STEP_SECONDS of work (`chunk` clips' features when given), so that a
        caller can drop a superseded merge at any step. Each unit runs inside `turn()` (which yields False when it
        is not this computation's turn yet: the step is retried after a yield); `running()`, entered inside a turn,
        yields the merged encoder (`encoder` is then ignored). `known`: stages already scored (by clips per class),
        yielded as they are. A stage below the full suite is corrected by the references (never by the merge's own
        `key`); with fewer than two it is "uncorrected": the scores on its own clips, which estimate the subset's
        score, not the full suite's. `features`: the merge's clips' features computed so far (e.g. by an earlier
        call for the same merge), extended here. The full stage carries the merge's results on every ladder stage's
        subset and, with `remember`, becomes a reference."""
        start = time.perf_counter()
        running = running or (lambda: nullcontext(encoder))
        features = features or ClipFeatures(self.suite, encoder)
        total = len(self.suite.clips)
        known = known or {}
        for number, k in enumerate(plan or self.plan()):
            if k in known:
                yield len(features.rows) / total, known[k]
                if k == 0:
                    return
                continue
            subset = self.stage_subset(k)
            yield from self._features(features, subset.clips(), turn, running, chunk, lambda: len(features.rows) / total)
            done = len(features.rows) / total
            results = yield from self._fit(subset, features.get, k, turn, done)
            seconds = time.perf_counter() - start
            if k == 0:
                ladder = {}
                for step in self.ladder:
                    ladder[step] = yield from self._fit(self.subset(step), features.get, step, turn, done)
                scores = full_stage(results, self.domains, len(features.rows), seconds, self.seed, ladder)
                if remember:
                    self.remember(key or f"merge {id(scores)}", scores, self._width(features))
                yield 1.0, scores
                return
            references = yield from self.references(k, self._width(features), turn, exclude=key)
            yield done, self._stage(k, number, results, references, len(features.rows), seconds)

    @staticmethod
    def _width(features: ClipFeatures) -> int:
        return int(next(iter(features.rows.values())).shape[-1])

    def _stage(self, k: int, number: int, results, references, clips: int, seconds: float) -> LiveScores:
        if len(references) < 2:
            tasks, averages = bootstrapped(results, self.domains, self.seed)
            return LiveScores(UNCORRECTED, k, tasks, averages, self.domains, clips, seconds, results)
        tasks, averages, models = corrected(results, references, self.domains)
        name = "quick" if number == 0 else f"{k} per class"
        return LiveScores(name, k, tasks, averages, self.domains, clips, seconds, results, references, models)
