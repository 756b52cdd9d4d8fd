"""The one scorer behind the page. Every score the page shows comes from the benchmark's probe suite through
`merging.live`: a release's stages (a quick estimate, a refined stage, the full suite), the trade-off curves and the
sweep (full-suite points), and the probes the listening panels use. Every recipe's stages are kept in one
`ScoreBook` shared by all sessions, so a merge already scored is never scored again; with a result store (`Store`) the
inputs' full-suite features and scores and the recipes' full-suite results outlive the process, keyed by what
produced them (`ResultKeys`). A merge whose inputs are not scored yet first answers from its subset alone
(`merging.live.UNCORRECTED`), while they are scored."""
from __future__ import annotations

import functools
import hashlib
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import features, live as live_module, probes as probes_module, spec
from ..live import STAGE_LADDER, ClipFeatures, LiveProbes, LiveScores, Parent, full_stage
from ..probes import LinearProbe, ProbeSuite, builtin_suite
from ..synth.assets import ASSETS_DIR, load_manifest
from ..registry import get_method
from ..state import MergeError
from ..tradeoff import Point
from . import weights
from .releases import Lease, Releases
from .runner import TICK
from .session import MergeRecipe
from .store import STORE_FORMAT, Store, code_version, digest, results_entry, results_of
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


SEED = 0  # the benchmark's: its probes' and subsets' seed
RESULTS_VERSION = 1  # bump when stored results must be recomputed for a reason their code's version does not show


@functools.cache
def results_code() -> str:
    """The version of the code that turns an encoder and the suite into raw results: features, probe fits, per-clip
    outcomes (the estimates and intervals derived from them are recomputed on load, so their code is not in it)."""
    return digest(RESULTS_VERSION, code_version(features, probes_module.layer_features, probes_module.fit_probe,
                                                probes_module.LinearProbe, live_module.ClipFeatures,
                                                live_module.score_task, live_module.full_subset))


@functools.cache
def merge_code(method: str) -> str:
    """The version of the code that writes a method's merged weights."""
    return code_version(sys.modules[get_method(method).fn.__module__], spec, weights)


def suite_checksum(root: Path = ASSETS_DIR) -> str:
    """A checksum of the built-in suite as `builtin_suite` reads it: its manifest (tasks, labels, splits), every audio
    file's bytes and the code that decodes them (the clips need not be decoded: a stored answer is found before)."""
    from ..audio import load_audio

    manifest = load_manifest(root)
    hashed = hashlib.blake2b(digest_size=16)
    hashed.update(digest(manifest, code_version(builtin_suite, load_audio)).encode())
    for row in manifest["files"]:
        hashed.update((Path(root) / row["path"]).read_bytes())
        hashed.update(b"|")
    return hashed.hexdigest()


@dataclass(frozen=True)
class ResultKeys:
    """The result store's keys of the scorer's results: what produced them (the suite's clips and labels, the probe
    settings, the scoring code's version) beside the encoder's checksum or the recipe's content."""

    suite: str
    settings: tuple  # (seed, full-suite L-BFGS steps, clips per feature batch)
    ladder: tuple  # (the stages' clips per class, their L-BFGS steps): a merge's full suite keeps its ladder's results
    code: str

    @classmethod
    def builtin(cls, quick_iterations: int) -> ResultKeys:
        """The keys of the built-in suite's results with the scorer's settings."""
        return cls(suite_checksum(), (SEED, ProbeSuite.fit_iterations, ProbeSuite.batch_size),
                   (STAGE_LADDER, quick_iterations), results_code())

    def parent(self, checksum: str) -> tuple:
        """An input encoder's full-suite features and results."""
        return ("inputs' full suite", STORE_FORMAT, checksum, self.suite, self.settings, self.code)

    def full(self, recipe: MergeRecipe) -> tuple:
        """A recipe's full-suite results."""
        return ("recipe's full suite", STORE_FORMAT, recipe.key, merge_code(recipe.method), self.suite, self.settings,
                self.ladder, self.code)


class Scoring:
    """Shared by every session. `stream` runs a release's stages a unit at a time, in people-first turns, and stops
    as soon as its lease dies (its owner released again); `fill` scores recipes to the full suite (the curves)."""

    def __init__(self, lab, budget_seconds: float | None = None, book: ScoreBook | None = None,
                 probes_kept: int = 16) -> None:
        self.lab, self.runner, self.store = lab, lab.runner, lab.store
        self.budget_seconds = lab.config.quick_seconds if budget_seconds is None else budget_seconds
        self.book = book or ScoreBook()
        self.releases = Releases()
        self._live: LiveProbes | None = None
        self._keys: ResultKeys | None = None
        self._domains: dict[str, str] | None = None
        self._references: list[tuple] = []  # stored results read before the probes were loaded: references to give them
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # held while the suite's clips are decoded
        self._parents: dict[str, Future] = {}  # by encoder checksum
        self._wanted: dict[str, int] = {}  # people's requests waiting for an encoder's scores
        self._parent_stages: dict[str, LiveScores] = {}  # by encoder checksum: an input's scores as a curve's end
        self._probes: OrderedDict[str, dict[str, LinearProbe]] = OrderedDict()  # by recipe key
        self._probes_kept = probes_kept

    @property
    def live(self) -> LiveProbes:
        """The live probes on the built-in suite (its clips are decoded on first use: a stored answer needs none)."""
        if self._live is None:
            with self._loading:  # decoding takes seconds: what needs only `_lock` does not wait for it
                if self._live is None:
                    live = LiveProbes(builtin_suite(), seed=SEED, budget_seconds=self.budget_seconds,
                                      quick_iterations=self.lab.config.fit_iterations)
                    with self._lock:
                        for reference in self._references:
                            live.remember(*reference)
                        self._references.clear()
                        self._live = live
        return self._live

    def decode_suite(self) -> None:
        """Decode the probe suite's clips now (about 12 s on 2 CPU cores): a stored answer needs none, the first merge
        no one has scored does."""
        self.live

    @property
    def domains(self) -> dict[str, str]:
        """Each task's domain ("speech" or "music"), in the suite's order."""
        with self._lock:
            if self._domains is None:
                self._domains = {name: info["domain"] for name, info in load_manifest()["tasks"].items()}
            return self._domains

    @property
    def keys(self) -> ResultKeys:
        with self._lock:
            if self._keys is None:
                self._keys = ResultKeys.builtin(self.lab.config.fit_iterations)
            return self._keys

    def _reference(self, key: str, known: Parent | LiveScores, width: int | None = None) -> None:
        """A stored input or merge as a reference of the live stages (once the probes are loaded)."""
        with self._lock:
            if self._live is None:
                self._references.append((key, known, width))
                return
        self._live.remember(key, known, width)

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
        """The input's full-suite features and results: from the store when it has them, else computed (and kept)."""
        try:
            parent = self._stored_parent(checksum)
            if parent is None:
                turn = self._turns(lambda: not self._wanted.get(checksum))
                steps = self.live.parent_steps(None, key=checksum, turn=turn, running=lambda: self.lab.running(key))
                parent = _last(steps)
                if self.store is not None:
                    self.store.put(self.keys.parent(checksum), results_entry(parent.full_results, {"rows": parent.rows}))
            job.set_result(parent)
        except BaseException as error:  # noqa: BLE001 -- handed to whoever waits for it
            job.set_exception(error)

    def _stored_parent(self, checksum: str) -> Parent | None:
        """The input's full-suite features and results from the store (then a reference, as one computed here is)."""
        entry = self.store.get(self.keys.parent(checksum)) if self.store is not None else None
        if entry is None:
            return None
        parent = Parent(entry.tensors["rows"], results_of(entry))
        self._reference(checksum, parent)
        return parent

    def _ready_soon(self, key: str) -> bool:
        """Whether an input's full-suite scores are known or kept in the store (loaded in a moment, not computed)."""
        job = self._parents.get(self.lab.checksum(key))
        if job is not None and job.done():
            return job.exception() is None
        return self.store is not None and self.keys.parent(self.lab.checksum(key)) in self.store

    def input_averages(self, recipe: MergeRecipe) -> tuple[dict, dict]:
        """The two inputs' full-suite {"speech_avg", "music_avg"}: the ends of the merge's trade-off curve."""
        first, second = (domain_averages(self.parent(key).full, self.domains) for _, key in recipe.ends)
        return first, second

    def inputs_known(self, recipe: MergeRecipe) -> bool:
        """Whether both inputs' full-suite scores are computed (nothing is started here)."""
        return all(self.input_stage(key) is not None for _, key in recipe.ends)

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
        known = self.known(recipe)
        if 0 in known:
            yield 1.0, known[0]
            return
        yield from self._stages(recipe, lease, known)

    def known(self, recipe: MergeRecipe) -> dict[int, LiveScores]:
        """The recipe's stages already scored, by clips per class: the book's, and its full suite from the store (which
        then corrects later merges' stages, as one scored here does)."""
        known = self.book.stages(recipe)
        if 0 not in known and self.store is not None:
            entry = self.store.get(self.keys.full(recipe))
            if entry is not None:
                results = results_of(entry)
                ladder = {int(k): results_of(entry, f"ladder{k}/", tasks) for k, tasks in entry.meta["ladder"]}
                known[0] = full_stage(results, self.domains, entry.meta["clips"], entry.meta["seconds"], SEED, ladder)
                self._remember(recipe, known[0])
                self._reference(recipe.key, known[0], entry.meta["width"])
        return known

    def _stages(self, recipe: MergeRecipe, lease: Lease | None, known: dict[int, LiveScores]) -> Iterator[Step]:
        """The stages not known yet. While the inputs are not scored (nor in the store), the first stage is scored at
        once (uncorrected unless other merges' references correct it), then the same clips' features serve again."""
        refining = [False]
        turn = self._turns(lambda: refining[0], lease, droppable=lambda: refining[0])
        live, running = self.live, (lambda: self.lab.loaded(recipe))
        plan = live.plan(self.budget_seconds / (1 + self.runner.people))  # others waiting share the first answer's time
        if known:  # the best stage known first, then the full suite
            plan = [max(known), 0]
        merged, keys, given = ClipFeatures(live.suite, None), [key for _, key in recipe.ends], {}
        if not known and plan[0] and not all(self._ready_soon(key) for key in keys):
            self.prefetch(*keys)
            for fraction, scores in live.steps(None, plan=plan[:1], turn=turn, running=running, features=merged,
                                               key=recipe.key):
                if scores is not None:
                    refining[0] = True
                    self._remember_probes(recipe, scores)
                    if scores.corrected:  # other merges' references corrected it already: it is not scored again
                        given = known = {scores.per_class: scores}
                        self.book.put(recipe, scores)
                yield fraction, scores
        for key in keys:
            yield from self.parent_steps(key, lease)
        for fraction, scores in live.steps(None, plan=plan, turn=turn, running=running, known=known, features=merged,
                                           key=recipe.key):
            if scores is not None:
                if scores.per_class in given:
                    continue
                refining[0] = True
                if scores.probes is not None:
                    self._keep(recipe, scores)
            yield fraction, scores

    def latest(self, recipe: MergeRecipe) -> LiveScores:
        """The recipe's most complete stage, computing its first one when none is known."""
        known = self.known(recipe)
        if known:
            return known[0 if 0 in known else max(known)]
        return _first_scores(self.stream(recipe))

    def probes(self, recipe: MergeRecipe) -> dict[str, LinearProbe]:
        """Probes fitted on the merged encoder by its latest stage this server computed or the store kept (a first stage
        when none)."""
        self.known(recipe)
        with self._lock:
            probes = self._probes.get(recipe.key)
        return probes if probes is not None else _first_scores(self._stages(recipe, None, {})).probes

    def _keep(self, recipe: MergeRecipe, scores: LiveScores) -> None:
        """A stage the scorer computed: remembered, and its full suite kept in the store."""
        self._remember(recipe, scores)
        if scores.per_class == 0 and self.store is not None:
            ladder = [results_entry(results, prefix=f"ladder{k}/") for k, results in scores.ladder.items()]
            width = self.lab.encoders.get(recipe.ends[0][1]).model.config.hidden_size
            meta = {"clips": scores.clips, "seconds": scores.seconds, "width": width,
                    "ladder": [[k, entry.meta["tasks"]] for k, entry in zip(scores.ladder, ladder)]}
            tensors = {name: t for entry in ladder for name, t in entry.tensors.items()}
            self.store.put(self.keys.full(recipe), results_entry(scores.results, tensors, meta))

    def _remember(self, recipe: MergeRecipe, scores: LiveScores) -> None:
        self.book.put(recipe, scores)
        self._remember_probes(recipe, scores)

    def _remember_probes(self, recipe: MergeRecipe, scores: LiveScores) -> None:
        if scores.probes is None:
            return
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
            known = self.known(recipe)
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
                scores = self.input_stage(key)
                if scores is not None and not any(p.position == end for p in points):
                    points.append(point(end, recipe.at(**dict.fromkeys(placement.params, end)).placed[1], scores))
        return sorted(points, key=lambda p: p.position)

    def input_stage(self, key: str) -> LiveScores | None:
        """An input's full-suite scores as a stage when they are known; None while they are not (nothing is started)."""
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
