"""Searches started from the page ("tune for me"). A person's search runs in its own thread, and every unit of its work
(a sampler's proposal, a few clips' features, one probe fit) takes a background turn of the runner, so that people's
requests go first. Its candidates are the lab's recipes for the person's pair and method, scored by `merging.tune` on
the validation split; when the budget is spent its front is re-scored on the whole validation split and the points left
on it are scored on the full suite by the scorer (the score book's points, as the page's curves), so that a point loaded
into the merge panel is answered at once. One search per person (a new one stops the old), at most `MAX_RUNNING` on a
server; a stopped search keeps the front it found."""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from ..registry import get_method
from ..state import MergeError, quoted
from ..tradeoff import Point
from ..tune import (Budget, Candidate, Probes, Progress, Search, Space, averages, dominates, space, spread,
                    tunable_methods)
from .releases import Lease
from .runner import TICK
from .scoring import point
from .session import LabSession, MergeRecipe
from .turns import Abandoned

log = logging.getLogger("merge-lab")

MAX_RUNNING = 2  # searches computing at once on a server
MAX_EVALUATIONS = 400
MAX_SECONDS = 3600.0
FRONT_LIMIT = 8  # front points re-scored and checked (spread along the front)
KEPT = 64  # searches remembered (their fronts), the oldest forgotten first
PAIRS_KEPT = 2  # pairs whose inputs' validation features and scores are kept (tens of MB each at hub size)
SAMPLER = "tpe"  # its proposals are short units of work; a Gaussian process's take seconds, which would hold people up
FINISHED = ("done", "stopped", "failed")


@dataclass(frozen=True)
class TunedPoint:
    """A front point as the page shows it: its trial, the method's arguments and its place on the trade-off plane at
    the latest stage it reached: "search" (the quick estimate on the validation subset), "validation" (the whole
    validation split) or "full suite" (the benchmark's test split), with intervals but at the search stage."""

    number: int
    method: str
    arguments: dict
    point: Point

    @property
    def place(self) -> tuple[float, float]:
        """(speech, music) averages."""
        return self.point.speech, self.point.music

    def summary(self) -> dict:
        p = self.point
        intervals = {"speech_avg": p.speech_interval, "music_avg": p.music_interval} if p.speech_interval else None
        return {"trial": self.number, "method": self.method, "arguments": self.arguments, "stage": p.stage,
                "speech_avg": round(p.speech, 2), "music_avg": round(p.music, 2),
                **({"intervals": intervals} if intervals else {})}


def searched(candidate: Candidate, method: str) -> TunedPoint:
    position = get_method(method).place(candidate.arguments)[0]
    return TunedPoint(candidate.number, method, candidate.arguments,
                      Point(position, f"#{candidate.number}", "search", candidate.speech, candidate.music))


def scored(tuned: TunedPoint, stage: str, scores) -> TunedPoint:
    """The point with a stage's averages and intervals (`scores`: a `LiveScores`)."""
    return replace(tuned, point=replace(point(tuned.point.position, tuned.point.label, scores), stage=stage))


@dataclass(frozen=True)
class TuneState:
    """Where a search stands: its phase ("searching", "re-scoring", "checking", then "done", "stopped" or "failed"),
    evaluations so far, seconds, the front as far as it is known, and a line saying what happens."""

    method: str
    budget: Budget
    phase: str
    evaluations: int = 0
    seconds: float = 0.0
    front: tuple[TunedPoint, ...] = ()
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    def summary(self) -> dict:
        return {"method": self.method, "phase": self.phase, "evaluations": self.evaluations,
                "budget": {"evaluations": self.budget.evaluations, "seconds": self.budget.seconds},
                "seconds": round(self.seconds, 1), "message": self.message, "sampler": SAMPLER,
                "front": [p.summary() for p in self.front]}


class TuneJob:
    """One person's search, computing in its own thread from `start()`; `stop()` ends it within a unit of work.
    `recipe_of(arguments)` is the person's recipe with those method arguments (with none: the method's defaults)."""

    def __init__(self, tuning: Tuning, recipe_of: Callable[[dict], MergeRecipe], tuned: Space, budget: Budget,
                 lease: Lease) -> None:
        self.tuning, self.recipe_of, self.space, self.lease = tuning, recipe_of, tuned, lease
        self.cancel = threading.Event()
        self._state = TuneState(tuned.method, budget, "searching", message="starting: the inputs' validation scores")
        self._changed = threading.Condition()
        self._began = time.monotonic()

    @property
    def state(self) -> TuneState:
        return self._state

    def start(self) -> TuneJob:
        threading.Thread(target=self._run, daemon=True, name=f"tune {self.space.method}").start()
        return self

    def stop(self) -> None:
        self.cancel.set()
        self.tuning.scoring.lease(self.lease.owner)  # a newer lease: the scorer's work for this search stops too

    def wait(self, seconds: float) -> TuneState:
        """The state once it changed or `seconds` passed."""
        with self._changed:
            self._changed.wait(seconds)
        return self._state

    def point(self, number: int) -> TunedPoint:
        found = [p for p in self._state.front if p.number == number]
        if not found:
            raise MergeError(f"trial {number} is not on this search's front")
        return found[0]

    def _set(self, **changes) -> None:
        with self._changed:
            self._state = replace(self._state, seconds=time.monotonic() - self._began, **changes)
            self._changed.notify_all()

    def _alive(self) -> bool:
        return not self.cancel.is_set() and self.lease.alive()

    def _turn(self):
        return self.tuning.runner.turn(background=True, wait=TICK, alive=self._alive)

    def _run(self) -> None:
        try:
            front = self._search()
            if front:
                self._check(front)
            self._finish()
        except Abandoned:
            self._finish()
        except MergeError as error:
            self._set(phase="failed", message=str(error))
        except Exception as error:  # noqa: BLE001 -- reported on the page, logged here
            log.exception("search failed")
            self._set(phase="failed", message=f"unexpected error ({type(error).__name__}): {error}")

    def _finish(self) -> None:
        stopped = self.cancel.is_set() or not self.lease.alive()
        self._set(phase="stopped" if stopped else "done",
                  message="stopped: the front found so far" if stopped else "done")

    def _search(self) -> list[Candidate]:
        lab, method = self.tuning.lab, self.space.method
        probes = self.tuning.probes(self.recipe_of({}))
        probes.inputs(*((lab.checksum(key), lambda key=key: lab.running(key)) for _, key in self.recipe_of({}).ends),
                      turn=self._turn)

        def evaluate(arguments: dict) -> tuple[float, float]:
            recipe = self.recipe_of(arguments)
            return averages(probes.quick(lambda: lab.loaded(recipe), self._turn))

        def progress(now: Progress) -> None:
            self._set(evaluations=now.evaluations, front=tuple(searched(c, method) for c in now.front),
                      message=f"searching: {now.line()}")

        search = Search(self.space, evaluate, sampler_name=SAMPLER)
        search.run(self._state.budget, cancel=self.cancel, progress=progress, turn=self._turn)
        return [] if self.cancel.is_set() else spread(search.front(), FRONT_LIMIT)

    def _check(self, front: list[Candidate]) -> None:
        """Re-score the front on the whole validation split, keep the points no other beats there, and score those on
        the full suite through the scorer (its book keeps them for the merge panel and the curves)."""
        lab, method = self.tuning.lab, self.space.method
        probes = self.tuning.probes(self.recipe_of({}))
        points = []
        for index, candidate in enumerate(front):
            self._set(phase="re-scoring", message=f"re-scoring the front on the whole validation split: {index + 1} "
                                                  f"of {len(front)}")
            recipe = self.recipe_of(candidate.arguments)
            validation = probes.validated(lambda recipe=recipe: lab.loaded(recipe), self._turn)
            points.append(scored(searched(candidate, method), "validation", validation))
        kept = sorted((p for p in points if not any(dominates(o.place, p.place) for o in points)),
                      key=lambda p: p.point.music)
        self._set(front=tuple(kept), phase="checking", message="scoring the front on the full suite (the test split)")
        recipes = [self.recipe_of(p.arguments) for p in kept]
        for index, (_, scores) in self.tuning.scoring.fill(recipes, self.lease):
            if scores is not None:
                kept[index] = scored(kept[index], "full suite", scores)
                self._set(front=tuple(kept))


class Tuning:
    """The page's searches, shared by every session of a server (thread-safe)."""

    def __init__(self, lab, scoring) -> None:
        self.lab, self.scoring, self.runner = lab, scoring, lab.runner
        self._jobs: OrderedDict[str, TuneJob] = OrderedDict()
        self._probes: OrderedDict[tuple, Probes] = OrderedDict()
        self._lock = threading.Lock()

    def probes(self, recipe: MergeRecipe) -> Probes:
        """The searches' scores for a recipe's pair of inputs, on the scorer's probe suite: each pair has its own, so
        that a pair's quick estimates are corrected by its own inputs only (their validation scores computed once)."""
        pair = tuple(self.lab.checksum(key) for _, key in recipe.ends)
        with self._lock:
            if pair not in self._probes:
                self._probes[pair] = Probes(self.scoring.live.suite, iterations=self.lab.config.fit_iterations)
                while len(self._probes) > PAIRS_KEPT:
                    self._probes.popitem(last=False)
            self._probes.move_to_end(pair)
            return self._probes[pair]

    def start(self, owner: str, session: LabSession, sources: Mapping[str, str | None], method: str,
              evaluations: object, seconds: object = None) -> TuneJob:
        """Start `owner`'s search over `method`'s weights for the chosen encoders (stopping their previous one);
        MergeError for an untunable method, a budget out of bounds, missing encoders or alignment, or too many
        searches running."""
        budget = checked_budget(evaluations, seconds)
        if method not in tunable_methods():
            raise MergeError(f"'{method}' cannot be tuned: choose one of {', '.join(tunable_methods())}")

        def recipe_of(arguments: dict) -> MergeRecipe:
            return self.lab.recipe(session, sources, method, arguments)

        base = recipe_of({})  # the encoders, their compatibility and the alignment, checked now
        first = self.lab.inputs_of(base)[get_method(method).inputs[0]]
        tuned = space(method, first.config.num_hidden_layers)
        with self._lock:
            previous = self._jobs.pop(owner, None)
            if previous is not None:
                previous.stop()
            running = sum(not job.state.finished for job in self._jobs.values())
            if running >= MAX_RUNNING:
                raise MergeError(f"{running} searches are running on this server: try again when one has finished")
            job = TuneJob(self, recipe_of, tuned, budget, self.scoring.lease(f"{owner} tune"))
            self._jobs[owner] = job
            while len(self._jobs) > KEPT:
                self._jobs.pop(next(iter(self._jobs))).stop()
        return job.start()

    def job(self, owner: str) -> TuneJob | None:
        with self._lock:
            return self._jobs.get(owner)

    def stop(self, owner: str) -> TuneState | None:
        """Stop `owner`'s search (within a unit of work); its state, None when they have none."""
        job = self.job(owner)
        if job is None:
            return None
        job.stop()
        return job.state

    def point(self, owner: str, number: int) -> TunedPoint:
        job = self.job(owner)
        if job is None:
            raise MergeError("no search yet: tune first")
        return job.point(number)


def checked_budget(evaluations: object, seconds: object) -> Budget:
    """A page's budget as a Budget within the server's bounds (a slider's 60.0 is 60)."""
    if isinstance(evaluations, float) and evaluations.is_integer():
        evaluations = int(evaluations)
    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or not 1 <= evaluations <= MAX_EVALUATIONS:
        raise MergeError(f"evaluations: a whole number from 1 to {MAX_EVALUATIONS}, not {quoted(evaluations)}")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not 0 < seconds <= MAX_SECONDS):
        raise MergeError(f"seconds: a number above 0 and at most {MAX_SECONDS:g}, not {quoted(seconds)}")
    return Budget(evaluations, None if seconds is None else float(seconds))
