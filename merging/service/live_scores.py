"""The live scores behind the page: a merge's probe scores stream stage by stage (`merging.live`) while its
person keeps the page, and the linear/permute trade-off curves over α come from full-suite scores, computed
once per encoder pair (in the background after start-up for the built-in encoders) and kept."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from ..live import LiveProbes, LiveScores, Parent
from ..probes import builtin_suite
from ..state import MergeError
from .session import LabSession, MergeRecipe

CURVE_ALPHAS = (0.1, 0.25, 0.5, 0.75, 0.9)
CURVE_METHODS = ("linear", "permute")
STEP_CLIPS = 64  # clips' features per turn of a long computation: a person's request waits at most one such turn


class LiveScoring:
    """Shared by every session. `stream` runs one merge's stages, a step at a time under the lab's compute lock,
    and stops as soon as the same owner (a browser session) starts a newer merge."""

    def __init__(self, lab, budget_seconds: float = 2.0, owners: int = 1024) -> None:
        self.lab = lab
        self.budget_seconds = budget_seconds
        self._live: LiveProbes | None = None
        self._latest: OrderedDict[str, int] = OrderedDict()
        self._owners = owners
        self._curves: dict[tuple[str, str], dict[str, list[dict]]] = {}
        self._lock = threading.Lock()
        self._prefetched: dict[str, threading.Thread] = {}
        self._parent_guards: dict[str, threading.Lock] = {}
        self._wanted: dict[str, int] = {}  # people's requests waiting for an encoder's scores

    @property
    def live(self) -> LiveProbes:
        with self._lock:
            if self._live is None:
                self._live = LiveProbes(builtin_suite(), budget_seconds=self.budget_seconds)
            return self._live

    def parent(self, key: str, background: bool = False) -> Parent:
        """An input encoder's full-suite scores (computed once per encoder, a chunk of clips per turn). In the
        `background` its turns give way to people's requests, unless a person's request is waiting for it."""
        checksum = self.lab.registry.checksum(key)
        with self._lock:
            guard = self._parent_guards.setdefault(checksum, threading.Lock())
            if not background:
                self._wanted[checksum] = self._wanted.get(checksum, 0) + 1
        try:
            with guard:  # one computation per encoder; a second caller finds it done
                @contextmanager
                def hold():
                    quiet = background and not self._wanted.get(checksum)
                    with self.lab._computing(background=quiet), self.lab._running(key) as running:
                        yield running

                return self.live.parent(None, key=checksum, hold=hold, chunk=STEP_CLIPS)
        finally:
            if not background:
                with self._lock:
                    self._wanted[checksum] -= 1

    def prefetch(self, *keys: str) -> list[threading.Thread]:
        """Start the encoders' full-suite scores in the background (once per encoder), e.g. right after a pair is
        aligned, so that the pair's first slider release does not start them; errors are left for that release."""
        started = []
        with self._lock:
            for key in keys:
                if key not in self._prefetched:
                    thread = threading.Thread(target=self._quietly, args=(key,), daemon=True, name=f"scores of {key}")
                    self._prefetched[key] = thread
                    started.append(thread)
        for thread in started:
            thread.start()
        return started

    def _quietly(self, key: str) -> None:
        try:
            self.parent(key, background=True)
        except MergeError:
            pass

    def _claim(self, owner: str) -> int:
        with self._lock:
            token = self._latest.pop(owner, 0) + 1
            self._latest[owner] = token
            while len(self._latest) > self._owners:
                self._latest.popitem(last=False)
            return token

    def superseded(self, owner: str, token: int) -> bool:
        return self._latest.get(owner) != token

    def stream(self, recipe: MergeRecipe, position: float, owner: str) -> Iterator[tuple[float, LiveScores | None]]:
        """(fraction of the suite's clips done, the stage's scores or None) for the recipe's merge, stage by stage
        up to the full suite; ends early when `owner` starts a newer stream."""
        token = self._claim(owner)
        first, second = inputs_of(recipe)
        parents = self.parent(first), self.parent(second)
        crowd = self.lab.turns.people  # others' requests waiting: the first answer shares its budget with them
        with self.lab._computing():
            plan = self.live.prepare(*parents, plan=self.live.plan(self.budget_seconds / (1 + crowd)))

        answered = False

        @contextmanager
        def hold():  # once the first answer is out, the refinement gives way to people's requests
            with self.lab._computing(background=answered), self.lab.loaded(recipe) as merged:
                yield merged

        steps = self.live.steps(None, *parents, position, plan=plan, hold=hold, chunk=STEP_CLIPS)
        while not self.superseded(owner, token):
            item = next(steps, None)
            if item is None:
                return
            answered = answered or item[1] is not None
            yield item

    def input_averages(self, recipe: MergeRecipe) -> tuple[dict, dict]:
        """The two inputs' full-suite {"speech_avg", "music_avg"}: the ends of the merge's trade-off curve."""
        first, second = (domain_averages(self.parent(key).full, self.live.domains) for key in inputs_of(recipe))
        return first, second

    def warm(self, sources: dict[str, str]) -> None:
        """The speech and music encoders' full-suite scores, then their trade-off curves (errors are left for
        the page to report when someone asks)."""
        try:
            self.parent(sources["speech"], background=True)
            self.parent(sources["music"], background=True)
            self.fill_curves(sources["speech"], sources["music"])
        except MergeError:
            pass

    @contextmanager
    def _in_background(self, recipe: MergeRecipe) -> Iterator:
        with self.lab._computing(background=True), self.lab.loaded(recipe) as merged:
            yield merged

    def curves(self, speech_key: str, music_key: str) -> dict[str, list[dict]] | None:
        """The full-suite trade-off curves of this pair, or None until `fill_curves` has computed them."""
        return self._curves.get((speech_key, music_key))

    def fill_curves(self, speech_key: str, music_key: str) -> dict[str, list[dict]]:
        """Full-suite speech and music averages of linear and permute merges over CURVE_ALPHAS, with the two
        encoders as the ends (α 0 and 1); aligns the pair first (the lab's cached alignment)."""
        if (speech_key, music_key) in self._curves:
            return self._curves[(speech_key, music_key)]
        session = self.lab.align(LabSession(), speech_key, music_key)
        ends = [(0.0, self.parent(speech_key, background=True)), (1.0, self.parent(music_key, background=True))]
        curves = {}
        for method in CURVE_METHODS:
            points = [_point(alpha, parent.full, self.live.domains) for alpha, parent in ends[:1]]
            for alpha in CURVE_ALPHAS:
                recipe = self.lab.recipe(session, {"speech": speech_key, "music": music_key}, method, alpha=alpha)
                hold = partial(self._in_background, recipe)
                *_, (_, full) = self.live.steps(None, *(p for _, p in ends), alpha, plan=[0], hold=hold, chunk=STEP_CLIPS)
                points.append(_point(alpha, full.accuracy, self.live.domains))
            points.append(_point(1.0, ends[1][1].full, self.live.domains))
            curves[method] = points
        self._curves[(speech_key, music_key)] = curves
        return curves


def inputs_of(recipe: MergeRecipe) -> tuple[str, str]:
    """The encoder keys at the two ends of a merge (the base of task vectors is neither)."""
    keys = [key for role, key in recipe.inputs.items() if role != "base"]
    if len(keys) != 2:
        raise MergeError(f"{recipe.method}: live scores need two inputs besides the base")
    return keys[0], keys[1]


def domain_averages(accuracy, domains) -> dict[str, float]:
    """{"speech_avg", "music_avg"}: the mean accuracy of each domain's tasks."""
    def average(domain):
        values = [accuracy[t] for t in domains if domains[t] == domain]
        return sum(values) / len(values)

    return {"speech_avg": average("speech"), "music_avg": average("music")}


def _point(alpha: float, accuracy, domains) -> dict:
    return {"alpha": alpha, **domain_averages(accuracy, domains)}
