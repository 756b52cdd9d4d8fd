"""Tune for me: a search over a merge's weights, one per transformer layer, for the speech/music front.

The search space: α for linear and permute (`alpha` outside the transformer layers, one `layer_alphas` entry per
layer); (λ speech, λ music) for task arithmetic (and one pair per layer, `layer_lambdas`); one λ pair for TIES, DARE
and DRM, which have no per-layer λ. Every weight lies in [0, 1]. The two objectives, both maximised, are the speech and
the music probe averages on the **validation split** (the benchmark's: the last third of each task's training clips):
each candidate gets the live quick stage (`merging.live`) on one fixed stratified subset of it, corrected by the two
inputs' full-validation scores. The test split is never read by a search: its clips are not even run.

Optuna runs the search (a seeded multi-objective sampler; the single-weight grid of `merging.tradeoff` is queued
first). The study lives in Optuna's storage: with SQLite a search resumes where it stopped, and workers that open one
study by its URL split its budget (a trial is evaluated only while fewer than `budget` trials numbered before it are
running or complete, so workers agree without talking). `check` then re-scores the front on the whole validation split,
scores it on the test split, and compares it with the best single-weight merges at each speech/music balance (weight
on speech), with paired bootstrap intervals over the test clips.
"""
from __future__ import annotations

import datetime
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from .align import Alignment
from .encoders import Encoder
from .live import ClipFeatures, LiveProbes, LiveScores, Turn
from .pipeline import merged_encoder
from .probes import ProbeSuite, ProbeTask
from .registry import METHODS, get_method
from .state import MergeError, state_checksum
from .stats import RESAMPLES, resampled_accuracies
from .tradeoff import ALPHA_GRID, LAMBDA_GRID

LIBRARY = "optuna"
SAMPLERS = ("gp", "tpe", "nsga2")  # the first is the default: few evaluations, few weights
BALANCES = (0.1, 0.25, 0.5, 0.75, 0.9)  # weights on speech at which the front meets the single-weight merges
PER_CLASS = 4  # clips per class and split of the search's validation subset
LAYER_STEP = 0.001  # resolution of a per-layer weight
STALE = datetime.timedelta(hours=1)  # a trial running longer was left by a worker that died: it no longer counts
Running = Callable[[], AbstractContextManager]  # entered inside a turn, yields the encoder to score


def _always() -> AbstractContextManager:
    return nullcontext(True)


def _in_turn(turn: Turn, work: Callable[[], object]):
    """`work()` inside `turn()`, asking again while the turn is not given."""
    while True:
        with turn() as given:
            if given:
                return work()


# -- what a search varies -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Space:
    """A method's weights as a search sees them: α, or a (λ speech, λ music) pair, outside the transformer layers and,
    where the method takes them, one per layer (`layers`: 0 when it takes none)."""

    method: str
    layers: int

    @property
    def lambdas(self) -> bool:
        return "lambda_speech" in get_method(self.method).parameters

    def names(self) -> tuple[str, ...]:
        if self.lambdas:
            return ("lambda_speech", "lambda_music", *(f"{role}_{layer}" for layer in range(self.layers)
                                                       for role in ("speech", "music")))
        return ("alpha", *(f"alpha_{layer}" for layer in range(self.layers)))

    def step(self, name: str) -> float:
        """A weight's resolution: its control's on the page (where a loaded point must keep its exact value), finer
        for per-layer values (typed as text)."""
        declared = get_method(self.method)
        return declared.param(name).resolution if name in declared.parameters else LAYER_STEP

    def suggest(self, trial: optuna.Trial) -> dict:
        """The trial's method arguments, each weight drawn in [0, 1] at its resolution."""
        return self.arguments({name: trial.suggest_float(name, 0.0, 1.0, step=self.step(name)) for name in self.names()})

    def arguments(self, values: Mapping[str, float]) -> dict:
        """Search values by name -> the method's arguments (each the float its decimal text reads back as)."""
        values = {name: round(value, 10) for name, value in values.items()}
        if self.lambdas:
            pairs = [(values[f"speech_{layer}"], values[f"music_{layer}"]) for layer in range(self.layers)]
            return {"lambda_speech": values["lambda_speech"], "lambda_music": values["lambda_music"],
                    **({"layer_lambdas": pairs} if pairs else {})}
        per_layer = [values[f"alpha_{layer}"] for layer in range(self.layers)]
        return {"alpha": values["alpha"], **({"layer_alphas": per_layer} if per_layer else {})}

    def singles(self) -> list[dict]:
        """The single-weight grid (every layer alike) as search values: queued first, so the search starts there."""
        if self.lambdas:
            return [{name: (s if name.startswith(("lambda_speech", "speech")) else m) for name in self.names()}
                    for s, m in LAMBDA_GRID]
        return [dict.fromkeys(self.names(), a) for a in ALPHA_GRID]


def space(method: str, layers: int) -> Space:
    """The search space of `method` for encoders with `layers` transformer layers; MergeError for a method whose merges
    are not placed between a speech and a music input by weights a search can vary."""
    if method not in tunable_methods():
        raise MergeError(f"'{method}' cannot be tuned: choose one of {', '.join(tunable_methods())}")
    per_layer = {"layer_alphas", "layer_lambdas"} & set(get_method(method).parameters)
    return Space(method, int(layers) if per_layer else 0)


def tunable_methods() -> list[str]:
    """Methods between a speech and a music input (over a base, for task vectors) placed by α or by a λ pair."""
    found = []
    for name, method in METHODS.items():
        placed = method.placement.params if method.placement else ()
        if {"speech", "music"} <= set(method.inputs) and placed in (("alpha",), ("lambda_speech", "lambda_music")):
            found.append(name)
    return found


# -- the search -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """An evaluated trial: its number in the study, the method's arguments, and the search's scores (the speech and
    music averages' quick estimates on the validation subset)."""

    number: int
    arguments: dict
    speech: float
    music: float


@dataclass(frozen=True)
class Budget:
    """Evaluations for the whole study (every worker, every resumed run), and seconds for this run (no evaluation
    starts after them)."""

    evaluations: int
    seconds: float | None = None

    def __post_init__(self):
        if isinstance(self.evaluations, bool) or not isinstance(self.evaluations, int) or self.evaluations < 1:
            raise MergeError(f"the budget is a whole number of evaluations, at least 1, not {self.evaluations!r}")
        if self.seconds is not None and not self.seconds > 0:
            raise MergeError(f"the time budget is a positive number of seconds, not {self.seconds!r}")


@dataclass(frozen=True)
class Progress:
    """Where a run stands: the study's evaluations (all workers), this run's, its seconds (of which the sampler's
    proposals took `proposing`), the current front, and why it stopped ("budget", "time", "cancelled"; None while it
    goes on)."""

    evaluations: int
    run: int
    budget: Budget
    seconds: float
    proposing: float
    front: tuple[Candidate, ...]
    stopped: str | None = None

    def line(self) -> str:
        end = f" · stopped: {self.stopped}" if self.stopped else ""
        return (f"{self.evaluations}/{self.budget.evaluations} evaluations ({self.run} in this run) · "
                f"{self.seconds:.0f} s ({self.proposing:.0f} s proposing) · front of {len(self.front)}{end}")


def library() -> str:
    """The optimisation library and its version, as a record names it."""
    return f"{LIBRARY} {optuna.__version__}"


def sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """A seeded multi-objective sampler: a Gaussian process (log expected hypervolume improvement: the most out of a
    few hundred evaluations of a dozen weights), TPE (multivariate, a constant liar for parallel workers) or NSGA-II."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
    raise MergeError(f"unknown sampler '{name}': choose one of {', '.join(SAMPLERS)}")


class Search:
    """One Optuna study of a space. Created (the single-weight grid queued first) or, when `storage` already holds a
    study named `name`, loaded to go on: then its identity (the space, seed, sampler and `identity`, e.g. the inputs'
    checksums) must be this one's. Worker w samples with seed + w, so that workers do not propose the same points.
    `evaluate(arguments)` returns the (speech, music) scores of one candidate."""

    def __init__(self, space: Space, evaluate: Callable[[dict], tuple[float, float]], *, seed: int = 0,
                 sampler_name: str = SAMPLERS[0], storage: str | optuna.storages.BaseStorage | None = None,
                 name: str = "merge-tune", worker: int = 0, identity: Mapping[str, object] | None = None) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a search reports its own progress
        self.space, self.evaluate, self.worker = space, evaluate, worker
        self.seed, self.sampler_name = seed, sampler_name
        self.identity = {"method": space.method, "layers": space.layers, "seed": seed, "sampler": sampler_name,
                         **(identity or {})}
        chosen = sampler(sampler_name, seed + worker)
        directions = ["maximize", "maximize"]
        try:
            self.study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=chosen)
            self.created = True
        except optuna.exceptions.DuplicatedStudyError:
            self.study = optuna.load_study(study_name=name, storage=storage, sampler=chosen)
            self.created = False
        if self.created:
            for key, value in self.identity.items():
                self.study.set_user_attr(key, value)
            for values in space.singles():
                self.study.enqueue_trial(values)
        else:
            self._check_identity(name)

    def _check_identity(self, name: str) -> None:
        for _ in range(50):  # the study's creator writes its identity right after creating it
            found = {key: self.study.user_attrs.get(key) for key in self.identity}
            if found != {key: None for key in self.identity}:
                break
            time.sleep(0.1)
        different = [key for key in self.identity if found[key] != self.identity[key]]
        if different:
            key = different[0]
            raise MergeError(f"study '{name}' was made with {key} {found[key]!r}, not {self.identity[key]!r}: "
                             "name another study (or output folder) for this search")

    # -- running --------------------------------------------------------------------------------------

    def run(self, budget: Budget, *, cancel: threading.Event | None = None,
            progress: Callable[[Progress], None] | None = None, turn: Turn = _always) -> Progress:
        """Evaluate trials until the study's budget is spent, this run's seconds are up or `cancel` is set (the
        evaluation under way then ends: it fails when `evaluate` raises on cancel, else it completes), calling
        `progress` after each evaluation and at the end. The sampler proposes inside `turn()`."""
        cancel = cancel or threading.Event()
        start, done, stopped = time.monotonic(), 0, None
        self._proposing = 0.0
        while stopped is None:
            stopped = self._stop(budget, cancel, start)
            if stopped:
                break
            trial = None
            try:
                trial, arguments = _in_turn(turn, lambda: self._propose(budget))
                if arguments is None:  # another worker holds the budget's last evaluations
                    self.study.tell(trial, state=TrialState.FAIL)
                    stopped = "budget"
                    break
                values = self.evaluate(arguments)
            except BaseException as error:
                if trial is not None:
                    self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                if not (cancel.is_set() or isinstance(error, KeyboardInterrupt)):
                    raise
                stopped = "cancelled"
                break
            self.study.tell(trial, list(values))
            done += 1
            if progress:
                progress(self._progress(budget, done, start, None))
        final = self._progress(budget, done, start, stopped)
        if progress:
            progress(final)
        return final

    def _propose(self, budget: Budget) -> tuple[optuna.Trial, dict | None]:
        """A new trial and its arguments (None when it is beyond the study's budget)."""
        began = time.monotonic()
        try:
            trial = self.study.ask()
            if not self._within(trial, budget):
                return trial, None
            trial.set_user_attr("worker", self.worker)
            return trial, self.space.suggest(trial)
        finally:
            self._proposing += time.monotonic() - began

    def _stop(self, budget: Budget, cancel: threading.Event, start: float) -> str | None:
        if cancel.is_set():
            return "cancelled"
        if self.evaluations() >= budget.evaluations:
            return "budget"
        if budget.seconds is not None and time.monotonic() - start >= budget.seconds:
            return "time"
        return None

    def _within(self, trial: optuna.Trial, budget: Budget) -> bool:
        now = datetime.datetime.now()
        ahead = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
                 if t.number < trial.number and (t.state == TrialState.COMPLETE or now - t.datetime_start < STALE)]
        return len(ahead) < budget.evaluations

    def _progress(self, budget: Budget, done: int, start: float, stopped: str | None) -> Progress:
        return Progress(self.evaluations(), done, budget, time.monotonic() - start, self._proposing, tuple(self.front()),
                        stopped)

    # -- results --------------------------------------------------------------------------------------

    def evaluations(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    def candidates(self) -> list[Candidate]:
        """Every evaluated trial, by number."""
        return [self._candidate(t) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]

    def front(self) -> list[Candidate]:
        """The evaluated trials no other beats on both scores, from the speech end to the music end."""
        trials = self.study.best_trials if self.evaluations() else []
        return sorted((self._candidate(t) for t in trials), key=lambda c: (c.music, -c.speech))

    def _candidate(self, trial: optuna.trial.FrozenTrial) -> Candidate:
        return Candidate(trial.number, self.space.arguments(trial.params), *trial.values)


def spread(front: Sequence[Candidate], limit: int) -> list[Candidate]:
    """At most `limit` points of a front (ordered along it), evenly spaced along it, both ends kept."""
    if len(front) <= limit:
        return list(front)
    return [front[i] for i in sorted({round(j * (len(front) - 1) / (limit - 1)) for j in range(limit)})]


# -- scoring merges ------------------------------------------------------------------------------------

def _last(steps: Iterable[tuple[float, LiveScores | None]]) -> LiveScores:
    scores = None
    for _, stage in steps:
        scores = stage if stage is not None else scores
    return scores


def validation_suite(suite: ProbeSuite) -> tuple[ProbeSuite, list[int]]:
    """The suite's validation split (`ProbeSuite.validation`) as a suite of its own clips, without the test clips, and
    each of its clips' index in `suite`: nothing scored on it can run a test clip."""
    split = suite.validation()
    originals = sorted({i for task in split.tasks for i in (*task.train, *task.test)})
    index = {clip: n for n, clip in enumerate(originals)}
    tasks = [ProbeTask(t.name, t.domain, t.labels, tuple(index[i] for i in t.train), t.train_y,
                       tuple(index[i] for i in t.test), t.test_y) for t in split.tasks]
    return ProbeSuite([suite.clips[i] for i in originals], tasks, suite.sample_rate, batch_size=suite.batch_size,
                      fit_iterations=suite.fit_iterations), originals


class Probes:
    """The scores a search and its check give merges, from one probe suite: the quick estimate on a fixed stratified
    subset of the validation split (`per_class` clips per class and split, corrected by the inputs given to
    `inputs`), the whole validation split, and the test split (the benchmark's scores). Every unit of work runs inside
    `turn()` and `running()` (entered inside it) yields the merged encoder, as in `merging.live`."""

    def __init__(self, suite: ProbeSuite, *, per_class: int = PER_CLASS, seed: int = 0, iterations: int = 30) -> None:
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise MergeError(f"clips per class is a whole number, at least 1, not {per_class!r}")
        self.per_class, self.seed = per_class, seed
        held_out, self.originals = validation_suite(suite)
        self.validation = LiveProbes(held_out, seed=seed, quick_iterations=iterations, ladder=())
        self.test = LiveProbes(suite, seed=seed, ladder=())

    @property
    def clips(self) -> int:
        """Clips a candidate's quick estimate runs on."""
        return len(self.validation.subset(self.per_class).clips())

    def inputs(self, *ends: tuple[str, Running], turn: Turn = _always) -> None:
        """The merge's two inputs (content key, running) scored on the whole validation split: what corrects the
        quick estimates (computed once per input)."""
        for key, running in ends:
            self.validation.parent(None, key, turn=turn, running=running)

    def quick(self, running: Running, turn: Turn = _always) -> LiveScores:
        return _last(self.validation.steps(None, plan=[self.per_class], turn=turn, running=running, remember=False))

    def validated(self, running: Running, turn: Turn = _always, features: ClipFeatures | None = None) -> LiveScores:
        """The whole validation split's scores (the benchmark's probes, fitted on its training part)."""
        return _last(self.validation.steps(None, plan=[0], turn=turn, running=running, features=features,
                                           remember=False))

    def checked(self, running: Running, turn: Turn = _always) -> tuple[LiveScores, LiveScores]:
        """(whole validation split, test split): the test clips' features are computed after the validation scores."""
        features, everything = ClipFeatures(self.validation.suite, None), ClipFeatures(self.test.suite, None)
        validation = self.validated(running, turn, features)
        everything.rows.update({self.originals[i]: row for i, row in features.rows.items()})
        test = _last(self.test.steps(None, plan=[0], turn=turn, running=running, features=everything, remember=False))
        return validation, test


def dominates(first: tuple[float, float], second: tuple[float, float]) -> bool:
    """Whether scores `first` (speech, music) are at least as good as `second` on both and better on one."""
    return all(a >= b for a, b in zip(first, second)) and tuple(first) != tuple(second)


def averages(scores: LiveScores) -> tuple[float, float]:
    """(speech, music) averages of a stage: a search's two objectives."""
    return scores.average("speech").score, scores.average("music").score


# -- the check on the test split ----------------------------------------------------------------------

@dataclass(frozen=True)
class Checked:
    """A merge scored on the whole validation split and on the test split; `number`: its trial (None: a baseline)."""

    label: str
    method: str
    arguments: dict
    validation: LiveScores
    test: LiveScores
    number: int | None = None
    search: tuple[float, float] | None = None  # its search scores (speech, music)

    def balanced(self, balance: float, split: str = "validation") -> float:
        scores = self.validation if split == "validation" else self.test
        return balance * scores.average("speech").score + (1 - balance) * scores.average("music").score

    def as_dict(self) -> dict:
        out = {"label": self.label, "method": self.method, "arguments": _plain(self.arguments)}
        if self.number is not None:
            out.update(trial=self.number, search={"speech_avg": self.search[0], "music_avg": self.search[1]})
        return {**out, "validation": _summary(self.validation), "test": _summary(self.test)}


def _plain(arguments: Mapping) -> dict:
    return {k: [list(v) if isinstance(v, tuple) else v for v in value] if isinstance(value, list) else value
            for k, value in arguments.items()}


def _summary(scores: LiveScores) -> dict:
    summary = scores.summary()
    return {key: summary[key] for key in ("scores", "speech_avg", "music_avg", "avg", "intervals", "test_clips")}


def baselines(method: str) -> list[tuple[str, str, dict]]:
    """(label, method, arguments) of the single-weight merges a front is compared with: linear and permute over the α
    grid for a method placed by α, the method's own λ grid for one placed by a λ pair."""
    if space(method, 0).lambdas:
        return [(f"{method} λ={s:g}/{m:g}", method, {"lambda_speech": s, "lambda_music": m}) for s, m in LAMBDA_GRID]
    return [(f"{name} α={a:g}", name, {"alpha": a}) for name in ("linear", "permute") for a in ALPHA_GRID]


def _draws(scores: LiveScores, balance: float, seed: int) -> np.ndarray:
    """The balanced test score (balance · speech average + (1 − balance) · music average) on every bootstrap resample
    of the test clips (tasks that label the same clips resampled together; the same draws for every merge)."""
    results = scores.results
    samples = resampled_accuracies({t: r.correct for t, r in results.items()},
                                   {t: r.clips for t, r in results.items()}, seed=seed)
    by_domain = {d: np.mean([samples[t] for t in results if scores.domains[t] == d], axis=0) for d in ("speech", "music")}
    return balance * by_domain["speech"] + (1 - balance) * by_domain["music"]


def _interval(draws: np.ndarray) -> list[float]:
    return [round(float(x), 2) for x in np.percentile(draws, [2.5, 97.5])]


@dataclass(frozen=True)
class Report:
    """A front checked on the test split beside the single-weight merges (`baselines`)."""

    front: tuple[Checked, ...]
    baselines: tuple[Checked, ...]
    seed: int = 0
    balances: tuple[float, ...] = BALANCES

    def chosen(self, balance: float, among: Sequence[Checked] | None = None) -> Checked:
        """The merge with the best balanced score on the validation split (the test split plays no part)."""
        return max(self.front if among is None else among, key=lambda c: c.balanced(balance))

    def on_front(self, point: Checked) -> bool:
        """Whether no other front point beats it on the validation averages."""
        return not any(dominates(averages(other.validation), averages(point.validation)) for other in self.front)

    def comparison(self, balance: float) -> dict:
        """At one balance: the front's chosen point and each baseline family's chosen merge on the test split, with
        intervals, and the paired interval of the difference (front − baseline)."""
        tuned = self.chosen(balance)
        mine = _draws(tuned.test, balance, self.seed)
        versus = []
        for method in dict.fromkeys(b.method for b in self.baselines):
            best = self.chosen(balance, [b for b in self.baselines if b.method == method])
            theirs = _draws(best.test, balance, self.seed)
            versus.append({"baseline": best.label, "test": round(best.balanced(balance, "test"), 2),
                           "interval": _interval(theirs),
                           "difference": round(tuned.balanced(balance, "test") - best.balanced(balance, "test"), 2),
                           "difference_interval": _interval(mine - theirs)})
        return {"balance": balance, "tuned": tuned.label, "test": round(tuned.balanced(balance, "test"), 2),
                "interval": _interval(mine), "versus": versus}

    def agreement(self) -> dict:
        """How the search's quick estimates of the front points agree with their whole-validation scores: Spearman's
        rank correlation and the mean absolute difference of each average."""
        from scipy.stats import spearmanr

        out = {"points": len(self.front)}
        for index, name in enumerate(("speech", "music")):
            quick = [p.search[index] for p in self.front]
            full = [p.validation.average(name).score for p in self.front]
            rho = round(float(spearmanr(quick, full)[0]), 3) if len(self.front) > 2 else None  # too few to rank
            out[name] = {"spearman": rho, "mae": round(float(np.mean(np.abs(np.subtract(quick, full)))), 2)}
        return out

    def as_dict(self) -> dict:
        return {"front": [{**p.as_dict(), "on_validation_front": self.on_front(p)} for p in self.front],
                "baselines": [b.as_dict() for b in self.baselines],
                "balances": [self.comparison(b) for b in self.balances],
                "agreement": self.agreement(),
                "intervals": f"95 % percentile bootstrap over the test clips, {RESAMPLES} resamples, seed {self.seed}; "
                             "differences paired on the same clips"}

    def table(self) -> str:
        """The comparisons as Markdown: per balance, the tuned point against each baseline family's choice."""
        lines = ["| balance (weight on speech) | tuned (test) | baseline (test) | tuned − baseline |", "|---|---|---|---|"]
        for c in (self.comparison(b) for b in self.balances):
            for v in c["versus"]:
                lines.append(f"| {c['balance']:g} | {c['tuned']}: {c['test']:.1f} {_brackets(c['interval'])} | "
                             f"{v['baseline']}: {v['test']:.1f} {_brackets(v['interval'])} | "
                             f"{v['difference']:+.1f} {_brackets(v['difference_interval'], signed=True)} |")
        return "\n".join(lines)


def _brackets(interval: Sequence[float], signed: bool = False) -> str:
    low, high = interval
    return f"[{low:+.1f}, {high:+.1f}]" if signed else f"[{low:.1f}, {high:.1f}]"


Score = Callable[[str, dict], tuple[LiveScores, LiveScores]]  # (method, arguments) -> (validation, test)


def check(front: Sequence[Candidate], method: str, score: Score, *, seed: int = 0,
          balances: Sequence[float] = BALANCES, log: Callable[[str], None] = lambda line: None) -> Report:
    """Score the front and the baselines on the whole validation split and on the test split (`score`)."""
    points, others = [], []
    for candidate in front:
        log(f"checking trial {candidate.number}")
        points.append(Checked(f"trial {candidate.number}", method, candidate.arguments,
                              *score(method, candidate.arguments), candidate.number, (candidate.speech, candidate.music)))
    for label, name, arguments in baselines(method):
        log(f"checking {label}")
        others.append(Checked(label, name, arguments, *score(name, arguments)))
    return Report(tuple(points), tuple(others), seed, tuple(sorted(set(balances))))


class Merges:
    """Merges of given input encoders (by role) built by the library: each method gets its inputs and, when it takes
    one, its alignment. The service writes its merges into a pooled model instead."""

    def __init__(self, encoders: Mapping[str, Encoder], alignments: Mapping[str, Alignment] | None = None) -> None:
        self.encoders, self.alignments = dict(encoders), dict(alignments or {})

    def encoder(self, method: str, arguments: Mapping[str, object]) -> Encoder:
        declared = get_method(method)
        aligned = {declared.aligns: self.alignments[declared.aligns]} if declared.aligns else None
        return merged_encoder(method, {role: self.encoders[role] for role in declared.inputs}, aligned, **arguments)

    def running(self, method: str, arguments: Mapping[str, object]) -> Running:
        encoder = self.encoder(method, arguments)
        return lambda: nullcontext(encoder)

    def ends(self) -> list[tuple[str, Running]]:
        """(content key, running) of the two inputs a merge lies between (not a task-vector base)."""
        return [(state_checksum(e.state_dict()), lambda e=e: nullcontext(e)) for role, e in self.encoders.items()
                if role != "base"]

    def scorer(self, probes: Probes, turn: Turn = _always) -> Score:
        """`check`'s score: each merged weights' content scored once (linear and permute at α 0 are one merge)."""
        seen: dict[str, tuple[LiveScores, LiveScores]] = {}

        def score(method: str, arguments: dict) -> tuple[LiveScores, LiveScores]:
            encoder = self.encoder(method, arguments)
            key = state_checksum(encoder.state_dict())
            if key not in seen:
                seen[key] = probes.checked(lambda: nullcontext(encoder), turn)
            return seen[key]

        return score
