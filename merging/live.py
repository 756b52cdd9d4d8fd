"""Live probe scores: an estimate of the full suite's scores within about two seconds, then refined stage by
stage up to the full suite itself.

A stage fits the probes on a stratified subset of the suite (k training and k test clips per class of every
task) and scores the merged encoder on it. Few training clips pull every encoder's accuracy down by a
similar amount, and the merge's two inputs ("parents") have known full-suite scores, so each task's score is
corrected by the parents' (full − subset) gap measured on the same clips with the same probes, interpolated
by the merge's position between them. Its 95 % interval combines the test clips' sampling (binomial) with the
probes' training noise, whose size is measured once per parent pair by re-drawing the subset (`Calibration`).
The last stage, "full", is the benchmark's own scoring: the same clips, probes and seed as
`python -m merging benchmark`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .probes import ProbeScores, ProbeSuite, ProbeTask, fit_probe, layer_features
from .state import state_checksum

Z95 = 1.959964
STAGE_LADDER = (2, 4, 8, 16, 32)  # clips per class and split of the stages below the full suite


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
    """A task's probe on a subset: accuracy (%) and which test clips it got right."""

    accuracy: float
    correct: tuple[bool, ...]


def score_subset(suite: ProbeSuite, subset: Subset, features, *, seed: int = 0,
                 iterations: int | None = None) -> dict[str, TaskResult]:
    """Fit each task's probe on the subset's training clips and score its test clips. `features(indices)`
    gives the rows of those clips (a `ClipFeatures.get`, or rows of full-suite features)."""
    results = {}
    for task in suite.tasks:
        y_of = {**dict(zip(task.train, task.train_y)), **dict(zip(task.test, task.test_y))}
        train, test = subset.train[task.name], subset.test[task.name]
        probe = fit_probe(features(train), torch.tensor([y_of[i] for i in train]), len(task.labels), seed=seed,
                          max_iter=iterations or suite.fit_iterations)
        predicted = probe.logits(features(test)).argmax(1)
        hits = predicted == torch.tensor([y_of[i] for i in test])
        results[task.name] = TaskResult(100.0 * hits.float().mean().item(), tuple(hits.tolist()))  # as ProbeSuite.score
    return results


def full_subset(suite: ProbeSuite) -> Subset:
    """Every clip of the suite, split as the benchmark splits it."""
    return Subset(0, {t.name: t.train for t in suite.tasks}, {t.name: t.test for t in suite.tasks})


# -- the estimate -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskEstimate:
    """A task's score at one stage: the estimate of its full-suite accuracy (%), its 95 % interval, the test
    clips it rests on, and the uncorrected accuracy on this stage's clips."""

    score: float
    low: float
    high: float
    test_clips: int
    raw: float


class Parent:
    """One input of a merge as the correction sees it: its full-suite features and accuracies and, per stage
    (clips per class), its results on that stage's subset and the variance of its accuracy over re-drawn
    subsets (filled by `LiveProbes.calibrate` when a stage first needs them)."""

    def __init__(self, rows: torch.Tensor, full: Mapping[str, TaskResult]) -> None:
        self.rows = rows
        self.full = {task: r.accuracy for task, r in full.items()}
        self.full_results = dict(full)
        self.stage: dict[int, dict[str, TaskResult]] = {}
        self.train_variance: dict[int, dict[str, float]] = {}

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        return self.rows[list(indices)]


def _binomial_variance(p: float, n: int) -> float:
    p = min(max(p, 0.5 / n), 1 - 0.5 / n)  # never zero: 0/n correct still leaves doubt
    return 1e4 * p * (1 - p) / n


def corrected_estimate(merged: TaskResult, first: TaskResult, second: TaskResult, full: tuple[float, float],
                       position: float, train_variance: float) -> TaskEstimate:
    """The merge's subset accuracy plus its parents' (full − subset) gap on the same clips, interpolated by its
    position between them (0: the first). Variance: the paired test-clip variance of (merge − parents' mix)
    plus the probes' training noise of the merge and of that mix (parents' re-draw variance, uncorrelated)."""
    w = min(max(position, 0.0), 1.0)
    gap = (1 - w) * (full[0] - first.accuracy) + w * (full[1] - second.accuracy)
    score = min(max(merged.accuracy + gap, 0.0), 100.0)
    n = len(merged.correct)
    diff = np.asarray(merged.correct, float) - ((1 - w) * np.asarray(first.correct, float) + w * np.asarray(second.correct, float))
    test_variance = max(1e4 * diff.var(ddof=1) / n if n > 1 else 0.0, _binomial_variance(score / 100, n) / 4)
    variance = test_variance + train_variance * (1 + (1 - w) ** 2 + w ** 2)
    half = Z95 * math.sqrt(variance)
    return TaskEstimate(score, max(score - half, 0.0), min(score + half, 100.0), n, merged.accuracy)


@dataclass(frozen=True)
class LiveScores:
    """Every task's estimate at one stage ("quick", "k16", ..., "full"), with the clips it took."""

    stage: str
    per_class: int  # clips per class and split; 0: the full suite
    tasks: Mapping[str, TaskEstimate]
    domains: Mapping[str, str]
    clips: int  # distinct clips the merged encoder has run on so far
    seconds: float  # since the first stage began

    @property
    def accuracy(self) -> dict[str, float]:
        return {task: e.score for task, e in self.tasks.items()}

    def average(self, domain: str | None = None) -> TaskEstimate:
        """Mean over the domain's tasks; its interval treats the tasks' errors as independent."""
        chosen = [e for task, e in self.tasks.items() if domain is None or self.domains[task] == domain]
        score = float(np.mean([e.score for e in chosen]))
        half = math.sqrt(sum(((e.high - e.low) / 2) ** 2 for e in chosen)) / len(chosen)
        return TaskEstimate(score, max(score - half, 0.0), min(score + half, 100.0),
                            sum(e.test_clips for e in chosen), float(np.mean([e.raw for e in chosen])))

    def summary(self) -> dict:
        averages = {"speech_avg": self.average("speech"), "music_avg": self.average("music"), "avg": self.average()}
        return {
            "stage": self.stage,
            "scores": {task: round(e.score, 2) for task, e in self.tasks.items()},
            **{name: round(e.score, 2) for name, e in averages.items()},
            "intervals": {name: [round(e.low, 2), round(e.high, 2)] for name, e in {**self.tasks, **averages}.items()},
            "test_clips": {task: e.test_clips for task, e in self.tasks.items()},
            "clips": self.clips,
        }


def full_stage(results: Mapping[str, TaskResult], domains: Mapping[str, str], clips: int, seconds: float,
               seed: int = 0) -> LiveScores:
    """The full suite's scores, each with its 95 % bootstrap interval over test clips."""
    from .stats import average_interval

    tasks = {}
    for task, result in results.items():
        low, high = average_interval({task: result.correct}, seed=seed)
        tasks[task] = TaskEstimate(result.accuracy, low, high, len(result.correct), result.accuracy)
    return LiveScores("full", 0, tasks, dict(domains), clips, seconds)


class LiveProbes:
    """Staged scores of merged encoders on one probe suite (the benchmark's: its clips, probes and seed).

    `parent(encoder)` scores an input encoder on the full suite once (cached by its weights) and measures
    what the correction needs; `stages(encoder, first, second, position)` then yields the merge's scores,
    stage by stage. The quick stage's clips per class are the most whose measured cost fits `budget_seconds`.
    """

    def __init__(self, suite: ProbeSuite, *, seed: int = 0, budget_seconds: float = 2.0, quick_iterations: int = 30,
                 resamples: int = 6, ladder: Sequence[int] = STAGE_LADDER, cache_size: int = 8) -> None:
        self.suite, self.seed, self.budget_seconds = suite, seed, budget_seconds
        self.quick_iterations, self.resamples, self.ladder = quick_iterations, resamples, tuple(ladder)
        self.domains = {task.name: task.domain for task in suite.tasks}
        self._subsets: dict[int, Subset] = {}
        self._parents: dict[str, Parent] = {}
        self._cache_size = cache_size
        self.clip_seconds: float | None = None  # measured cost of one clip's features on this device
        self.fit_seconds: dict[int, float] = {}  # measured cost of fitting and scoring one stage's probes

    def subset(self, per_class: int) -> Subset:
        """The stage's stratified subset; each ladder stage contains the clips of the stages below it."""
        if per_class not in self._subsets:
            below = [k for k in self.ladder if k < per_class]
            within = self.subset(below[-1]) if below else None
            self._subsets[per_class] = stratified_subset(self.suite, per_class, self.seed, within)
        return self._subsets[per_class]

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

    def _score(self, subset: Subset, rows, per_class: int) -> dict[str, TaskResult]:
        start = time.perf_counter()
        iterations = None if per_class == 0 else self.quick_iterations
        results = score_subset(self.suite, subset, rows, seed=self.seed, iterations=iterations)
        self.fit_seconds[per_class] = time.perf_counter() - start
        return results

    def parent(self, encoder, key: str | None = None, *, chunk: int = 256,
               hold: Callable[[], AbstractContextManager] | None = None) -> Parent:
        """An input encoder's full-suite features and scores (cached by its weights); measures the cost of a
        clip's features on this device. `hold()`, when given, is entered around each `chunk` clips' features and
        yields the encoder (as in `steps`, whose probe fits also run outside it); `encoder` may then be None if `key`
        is given."""
        key = key or state_checksum(encoder.state_dict())
        if key not in self._parents:
            hold = hold or (lambda: nullcontext(encoder))
            features, total, busy = ClipFeatures(self.suite, encoder), len(self.suite.clips), 0.0
            for at in range(0, total, chunk):
                with hold() as running:
                    start = time.perf_counter()
                    features.encoder = running
                    features.get(range(at, min(at + chunk, total)))
                    busy += time.perf_counter() - start
            self.clip_seconds = busy / total
            rows = features.get(range(total))
            self._parents[key] = Parent(rows, self._score(full_subset(self.suite), lambda idx: rows[list(idx)], 0))
            while len(self._parents) > self._cache_size:
                self._parents.pop(next(iter(self._parents)))
        return self._parents[key]

    def calibrate(self, parent: Parent, per_class: int) -> None:
        """The parent's results on the stage's subset, and its training noise: the variance of its accuracy
        over `resamples` re-drawn subsets beyond what their test clips' sampling explains."""
        if per_class in parent.stage:
            return
        redrawn = [score_subset(self.suite, stratified_subset(self.suite, per_class, seed=1000 * (self.seed + 1) + r),
                                parent.take, seed=self.seed, iterations=self.quick_iterations)
                   for r in range(self.resamples)]
        parent.train_variance[per_class] = {task: _training_variance([r[task] for r in redrawn]) for task in self.domains}
        parent.stage[per_class] = self._score(self.subset(per_class), parent.take, per_class)

    def prepare(self, *parents: Parent, plan: Sequence[int] | None = None) -> list[int]:
        """Calibrate the parents for every stage of the plan (before a merge, so its first answer stays quick)."""
        plan = list(plan or self.plan())
        for parent in parents:
            for k in plan:
                if k:
                    self.calibrate(parent, k)
        return plan

    def stages(self, encoder, first: Parent, second: Parent, position: float, *,
               plan: Sequence[int] | None = None) -> Iterator[LiveScores]:
        """The merged encoder's scores stage by stage (see `plan`); stop iterating to stop the work."""
        for _, scores in self.steps(encoder, first, second, position, plan=plan):
            if scores is not None:
                yield scores

    def steps(self, encoder, first: Parent, second: Parent, position: float, *, plan: Sequence[int] | None = None,
              chunk: int = 256, hold: Callable[[], AbstractContextManager] | None = None
              ) -> Iterator[tuple[float, LiveScores | None]]:
        """The work of `stages` in steps of at most `chunk` clips' features or one stage's probes: yields
        (fraction of the clips done, the stage's scores or None between them), so that a caller can drop a
        superseded merge at any step. `hold()`, when given, is entered around each step's use of the encoder and
        yields it (e.g. a lock and a pooled model that has to be re-filled); `encoder` is then ignored."""
        start = time.perf_counter()
        hold = hold or (lambda: nullcontext(encoder))
        features = ClipFeatures(self.suite, encoder)
        total = len(self.suite.clips)
        for number, k in enumerate(plan or self.plan()):
            subset = self.subset(k) if k else full_subset(self.suite)
            missing = [i for i in subset.clips() if i not in features.rows]
            for at in range(0, len(missing), chunk):
                with hold() as running:
                    features.encoder = running
                    features.get(missing[at:at + chunk])
                if at + chunk < len(missing):
                    yield len(features.rows) / total, None
            if k == 0:
                results = self._score(subset, features.get, 0)
                yield 1.0, full_stage(results, self.domains, len(features.rows), time.perf_counter() - start, self.seed)
                return
            self.calibrate(first, k)
            self.calibrate(second, k)
            results = self._score(subset, features.get, k)
            tasks = {task: corrected_estimate(results[task], first.stage[k][task], second.stage[k][task],
                                              (first.full[task], second.full[task]), position,
                                              (first.train_variance[k][task] + second.train_variance[k][task]) / 2)
                     for task in self.domains}
            name = "quick" if number == 0 else f"{k} per class"
            yield len(features.rows) / total, LiveScores(name, k, tasks, self.domains, len(features.rows),
                                                         time.perf_counter() - start)


def _training_variance(results: Sequence[TaskResult]) -> float:
    """Variance of a task's accuracy over re-drawn subsets beyond what its test clips' sampling explains."""
    accuracies = [r.accuracy for r in results]
    sampling = np.mean([_binomial_variance(r.accuracy / 100, len(r.correct)) for r in results])
    return max(float(np.var(accuracies, ddof=1)) - float(sampling), 0.0)
