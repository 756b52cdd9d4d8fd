"""The one scorer behind the page. Every score the page shows comes from the benchmark's probe suite through
`merging.live`: a release's stages (a quick estimate, a refined stage, the full suite), the trade-off curves and the
sweep (full-suite points), and the probes the listening panels use. Every recipe's stages are kept in one
`ScoreBook` shared by all sessions, so a merge already scored is never scored again."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager

from ..live import LiveProbes, LiveScores, Parent, full_stage
from ..probes import LinearProbe, builtin_suite
from ..registry import get_method
from ..state import MergeError
from ..tradeoff import Point
from .releases import Lease, Releases
from .runner import TICK
from .session import MergeRecipe
from .turns import Abandoned

Step = tuple[float, LiveScores | None]  # (fraction of the suite's clips done, a stage's scores or None between units)


class ScoreBook:
    """Stage scores by recipe (its content key), without fitted probes, shared by every session; the oldest entries
    go beyond `entries` or `max_bytes`."""

    def __init__(self, entries: int = 4096, max_bytes: int = 64 * 2**20) -> None:
        self.entries, self.max_bytes = entries, max_bytes
        self._stages: OrderedDict[str, dict[int, LiveScores]] = OrderedDict()
        self._family: dict[str, tuple[str, tuple[float, str] | None]] = {}  # key -> (family, placement)
        self._bytes = 0
        self._lock = threading.Lock()

    def stages(self, recipe: MergeRecipe) -> dict[int, LiveScores]:
        """The recipe's known stages, by clips per class (0: the full suite)."""
        with self._lock:
            stages = self._stages.get(recipe.key)
            if stages is None:
                return {}
            self._stages.move_to_end(recipe.key)
            return dict(stages)

    def put(self, recipe: MergeRecipe, scores: LiveScores) -> None:
        key, kept = recipe.key, scores.without_probes()
        with self._lock:
            stages = self._stages.setdefault(key, {})
            self._bytes += _size(kept) - (_size(stages[scores.per_class]) if scores.per_class in stages else 0)
            stages[scores.per_class] = kept
            self._family[key] = (recipe.family, recipe.placed)
            self._stages.move_to_end(key)
            while len(self._stages) > 1 and (len(self._stages) > self.entries or self._bytes > self.max_bytes):
                old, removed = self._stages.popitem(last=False)
                self._family.pop(old, None)
                self._bytes -= sum(_size(s) for s in removed.values())

    def curve(self, recipe: MergeRecipe) -> list[Point]:
        """Full-suite points of the recipe's family (the merges that differ from it only in where they sit)."""
        with self._lock:
            found = [(placed, stages[0]) for key, stages in self._stages.items() if 0 in stages
                     for family, placed in [self._family[key]] if family == recipe.family and placed is not None]
        return [point(position, label, scores) for (position, label), scores in found]

    def __len__(self) -> int:
        return len(self._stages)


def _size(scores: LiveScores) -> int:
    """Bytes a kept stage costs, roughly: per-clip results and the numbers around them."""
    return 512 + sum(len(r.correct) * 9 + 256 for r in scores.results.values())


def point(position: float, label: str, scores: LiveScores) -> Point:
    speech, music = scores.average("speech"), scores.average("music")
    return Point(position, label, scores.stage, speech.score, music.score, (speech.low, speech.high),
                 (music.low, music.high))


class Scoring:
    """Shared by every session. `stream` runs a release's stages a unit at a time, in people-first turns, and stops
    as soon as its lease dies (its owner released again); `fill` scores recipes to the full suite (the curves)."""

    def __init__(self, lab, budget_seconds: float | None = None, book: ScoreBook | None = None,
                 probes_kept: int = 16) -> None:
        self.lab, self.runner = lab, lab.runner
        self.budget_seconds = lab.config.quick_seconds if budget_seconds is None else budget_seconds
        self.book = book or ScoreBook()
        self.releases = Releases()
        self._live: LiveProbes | None = None
        self._lock = threading.Lock()
        self._parents: dict[str, Future] = {}  # by encoder checksum
        self._wanted: dict[str, int] = {}  # people's requests waiting for an encoder's scores
        self._parent_stages: dict[str, LiveScores] = {}  # by encoder checksum: an input's scores as a curve's end
        self._probes: OrderedDict[str, dict[str, LinearProbe]] = OrderedDict()  # by recipe key
        self._probes_kept = probes_kept

    @property
    def live(self) -> LiveProbes:
        with self._lock:
            if self._live is None:
                self._live = LiveProbes(builtin_suite(), budget_seconds=self.budget_seconds,
                                        quick_iterations=self.lab.config.fit_iterations)
            return self._live

    @property
    def domains(self) -> dict[str, str]:
        return self.live.domains

    # -- the inputs' full-suite scores ----------------------------------------------------------------

    def parent(self, key: str) -> Parent:
        """An input encoder's full-suite scores (computed once per encoder, in the background unless someone waits)."""
        for _ in self.parent_steps(key):
            pass
        return self._parent_job(key).result()

    def parent_steps(self, key: str, lease: Lease | None = None) -> Iterator[Step]:
        """Wait for an input's full-suite scores as a person does (its computation then takes people's turns),
        yielding every TICK; returns the Parent."""
        checksum = self.lab.checksum(key)
        job = self._parent_job(key)
        with self._lock:
            self._wanted[checksum] = self._wanted.get(checksum, 0) + 1
        try:
            while not wait([job], timeout=TICK).done:
                if lease is not None:
                    lease.check()
                yield 0.0, None
        finally:
            with self._lock:
                self._wanted[checksum] -= 1
        return job.result()

    def prefetch(self, *keys: str) -> list[Future]:
        """Start the encoders' full-suite scores in the background (once per encoder), e.g. right after a pair is
        aligned, so that the pair's first slider release does not start them; errors are left for that release."""
        return [self._parent_job(key) for key in keys]

    def _parent_job(self, key: str) -> Future:
        try:
            checksum = self.lab.checksum(key)
        except MergeError as error:
            failed = Future()
            failed.set_exception(error)
            return failed
        with self._lock:
            job = self._parents.get(checksum)
            if job is None or (job.done() and job.exception() is not None):  # a failure is retried by the next caller
                job = self._parents[checksum] = Future()
                threading.Thread(target=self._compute_parent, args=(key, checksum, job), daemon=True,
                                 name=f"scores of {key}").start()
            return job

    def _compute_parent(self, key: str, checksum: str, job: Future) -> None:
        try:
            turn = self._turns(lambda: not self._wanted.get(checksum))
            steps = self.live.parent_steps(None, key=checksum, turn=turn, running=lambda: self.lab.running(key))
            job.set_result(_last(steps))
        except BaseException as error:  # noqa: BLE001 -- handed to whoever waits for it
            job.set_exception(error)

    def input_averages(self, recipe: MergeRecipe) -> tuple[dict, dict]:
        """The two inputs' full-suite {"speech_avg", "music_avg"}: the ends of the merge's trade-off curve."""
        first, second = (domain_averages(self.parent(key).full, self.domains) for _, key in recipe.ends)
        return first, second

    def inputs_known(self, recipe: MergeRecipe) -> bool:
        """Whether both inputs' full-suite scores are computed (nothing is started here)."""
        return all(self._known_parent(key) is not None for _, key in recipe.ends)

    def input_probes(self, key: str) -> dict[str, LinearProbe]:
        return self.parent(key).probes

    # -- a release's stages ---------------------------------------------------------------------------

    def lease(self, owner: str, number: int | None = None) -> Lease:
        """A release's lease (`number`: given when the release arrived; now when None)."""
        return self.releases.claim(owner, number)

    def stream(self, recipe: MergeRecipe, lease: Lease | None = None) -> Iterator[Step]:
        """The recipe's stages up to the full suite, yielding at least every few tenths of a second (None between
        stages). Stages already scored are given at once. Raises `Abandoned` once `lease` is superseded; the first
        answer takes people's turns, the refinement background turns."""
        known = self.book.stages(recipe)
        if 0 in known:
            yield 1.0, known[0]
            return
        yield from self._stages(recipe, lease, known)

    def _stages(self, recipe: MergeRecipe, lease: Lease | None, known: dict[int, LiveScores]) -> Iterator[Step]:
        refining = [False]
        turn = self._turns(lambda: refining[0], lease, droppable=lambda: refining[0])
        for _, key in recipe.ends:  # the inputs' full-suite scores: the references that correct the first stages
            yield from self.parent_steps(key, lease)
        live = self.live
        plan = live.plan(self.budget_seconds / (1 + self.runner.people))  # others waiting share the first answer's time
        if known:  # the best stage known first, then the full suite
            plan = [max(known), 0]
        for fraction, scores in live.steps(None, plan=plan, turn=turn, running=lambda: self.lab.loaded(recipe),
                                           known=known, key=recipe.key):
            if scores is not None:
                refining[0] = True
                if scores.probes is not None:
                    self._keep(recipe, scores)
            yield fraction, scores

    def latest(self, recipe: MergeRecipe) -> LiveScores:
        """The recipe's most complete stage, computing its first one when none is known."""
        known = self.book.stages(recipe)
        if known:
            return known[0 if 0 in known else max(known)]
        return _first_scores(self.stream(recipe))

    def probes(self, recipe: MergeRecipe) -> dict[str, LinearProbe]:
        """Probes fitted on the merged encoder by its latest stage this server computed (a first stage when none)."""
        with self._lock:
            probes = self._probes.get(recipe.key)
        return probes if probes is not None else _first_scores(self._stages(recipe, None, {})).probes

    def _keep(self, recipe: MergeRecipe, scores: LiveScores) -> None:
        self.book.put(recipe, scores)
        with self._lock:
            self._probes[recipe.key] = scores.probes
            self._probes.move_to_end(recipe.key)
            while len(self._probes) > self._probes_kept:
                self._probes.popitem(last=False)

    # -- full-suite points: the curves ----------------------------------------------------------------

    def fill(self, recipes: Iterable[MergeRecipe], lease: Lease | None = None) -> Iterator[tuple[int, Step]]:
        """Score each recipe on the full suite in background turns (one already scored costs nothing), yielding
        (index of the recipe, step) between units: the one way curves are built (start-up warm-up and sweeps)."""
        for index, recipe in enumerate(recipes):
            known = self.book.stages(recipe)
            if 0 in known:
                yield index, (1.0, known[0])
                continue
            steps = self.live.steps(None, plan=[0], turn=self._turns(lambda: True, lease),
                                    running=lambda recipe=recipe: self.lab.loaded(recipe), key=recipe.key)
            for fraction, scores in steps:
                if scores is not None:
                    self._keep(recipe, scores)
                yield index, (fraction, scores)

    def curve(self, recipe: MergeRecipe) -> list[Point]:
        """The full-suite curve of the recipe's family, with its inputs as the ends when it interpolates between them
        (and their scores are known), sorted along the axis."""
        points, placement = self.book.curve(recipe), get_method(recipe.method).placement
        if placement is not None and placement.exact:  # its ends are its inputs: α=0 is the first, α=1 the second
            for end, (_, key) in zip((0.0, 1.0), recipe.ends):
                scores = self._known_parent(key)
                if scores is not None and not any(p.position == end for p in points):
                    points.append(point(end, recipe.at(**dict.fromkeys(placement.params, end)).placed[1], scores))
        return sorted(points, key=lambda p: p.position)

    def _known_parent(self, key: str) -> LiveScores | None:
        """An input's full-suite scores as a stage, when they are known (nothing is computed)."""
        checksum = self.lab.checksum(key)
        job = self._parents.get(checksum)
        if job is None or not job.done() or job.exception() is not None:
            return None
        if checksum not in self._parent_stages:  # computed twice at worst
            self._parent_stages[checksum] = full_stage(job.result().full_results, self.domains, 0, 0.0)
        return self._parent_stages[checksum]

    def warm(self, recipes: Iterable[MergeRecipe]) -> None:
        """Score the recipes in the background (the start-up curves); errors are left for the page to report."""
        try:
            for _ in self.fill(recipes):
                pass
        except MergeError:
            pass

    # -- turns ----------------------------------------------------------------------------------------

    def _turns(self, background: Callable[[], bool], lease: Lease | None = None,
               droppable: Callable[[], bool] = lambda: False):
        """A `merging.live` turn: a unit of work in the runner's turns (background while `background()`, and then
        dropped from a full queue while `droppable()`), waiting at most a TICK before the library yields;
        `lease`'s death stops the work (Abandoned)."""
        since = [None]

        @contextmanager
        def turn():
            since[0] = since[0] or time.monotonic()
            with self.runner.turn(background=background(), wait=TICK, since=since[0], droppable=droppable(),
                                  alive=lease.alive if lease is not None else None) as given:
                if given:
                    since[0] = None
                yield given

        return turn


def domain_averages(accuracy, domains) -> dict[str, float]:
    """{"speech_avg", "music_avg"}: the mean accuracy of each domain's tasks."""
    def average(domain):
        values = [accuracy[t] for t in domains if domains[t] == domain]
        return sum(values) / len(values)

    return {"speech_avg": average("speech"), "music_avg": average("music")}


def _last(steps: Iterator):
    """Run a generator to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _first_scores(steps: Iterator[Step]) -> LiveScores:
    """The first stage a generator of steps gives (the rest of its work is not done)."""
    return next(scores for _, scores in steps if scores is not None)


__all__ = ["Abandoned", "ScoreBook", "Scoring", "domain_averages", "point"]
