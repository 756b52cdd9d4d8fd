"""Aligning a music encoder to a speech encoder: correlation matching and weight matching.

Both return an `Alignment`: per permutation group, the permutation that moves the music encoder's
units into the speech encoder's order, the similarity matrix it was solved on (speech units x music
units, music in its original order) and the mean diagonal similarity before and after. The rules
behind the groups and the matching are in docs/permutations.md.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .features import Tap, activation_taps, encoder_input, equal_length_batches, run_tapped
from .spec import COMPONENTS, PermGroup, PermutationSpec, apply_permutations, blocked_permutation
from .state import MergeError, StateDict, quoted

Progress = Callable[[float, str], None]
PAPER_COMPONENTS = ("cnn", "ffn", "attn")  # what arXiv 2506.11403 permuted (its best ablation)
PASSES_SHARE = 0.9  # of the progress bar: the calibration passes; the assignments fill the rest


@dataclass(frozen=True)
class GroupAlignment:
    group: PermGroup
    perm: torch.Tensor  # on the CPU
    similarity: torch.Tensor  # (speech units, music units), music in its original order
    before: float  # mean matched score (|C| when matched on absolute values) in the identity order
    after: float  # the same once the music units are permuted

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def component(self) -> str:
        return self.group.component

    @property
    def kind(self) -> str:
        return self.group.kind

    @property
    def layer(self) -> int | None:
        return self.group.layer


@dataclass(frozen=True)
class Alignment:
    """A solved alignment: a value (nothing in it changes once made; re-ordered weights are the caller's to keep)."""

    spec: PermutationSpec
    method: str  # "correlation" | "weights"
    components: tuple[str, ...]
    absolute: bool
    groups: dict[str, GroupAlignment]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def perms(self) -> dict[str, torch.Tensor]:
        return {name: group.perm for name, group in self.groups.items()}

    def group(self, name: object) -> GroupAlignment:
        """The named group; MergeError (naming it briefly) when the alignment has none of that name."""
        if not isinstance(name, str) or name not in self.groups:
            raise MergeError(f"no group {quoted(name)} in this alignment")
        return self.groups[name]

    def apply(self, music: StateDict) -> StateDict:
        """The music state dict moved into the speech encoder's basis (an exact re-ordering)."""
        return apply_permutations(music, self.spec, self.perms)

    def summary(self, with_perms: bool = True) -> dict:
        """JSON-ready record for merge_config.json (no matrices)."""
        return {
            "method": self.method,
            "components": list(self.components),
            "absolute": self.absolute,
            "groups": {
                name: {"before": round(g.before, 6), "after": round(g.after, 6), "component": g.component,
                       "kind": g.kind, "layer": g.layer, **({"perm": g.perm.tolist()} if with_perms else {})}
                for name, g in self.groups.items()
            },
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


# -- assignment -----------------------------------------------------------------------------------

def _assign(score: np.ndarray) -> tuple[np.ndarray, float]:
    rows, cols = linear_sum_assignment(score, maximize=True)
    return cols, float(score[rows, cols].sum())


def solve_blocked(scores: Sequence[torch.Tensor], block: int) -> list[torch.Tensor]:
    """Maximise the summed trace of `scores` under permutations that share one block order.

    Hierarchical (docs/permutations.md): an assignment inside every pair of blocks, then one between
    blocks on the summed gains. With block 1 (no constraint) it is a single plain assignment per matrix.
    """
    if block == 1:
        return [torch.from_numpy(_assign(s.double().cpu().numpy())[0]) for s in scores]
    size = scores[0].shape[0]
    n_blocks = size // block
    gains = np.zeros((n_blocks, n_blocks))
    within = [[[None] * n_blocks for _ in range(n_blocks)] for _ in scores]
    for k, score in enumerate(scores):
        tiles = score.double().cpu().numpy().reshape(n_blocks, block, n_blocks, block)
        for a in range(n_blocks):
            for b in range(n_blocks):
                order, gain = _assign(tiles[a, :, b, :])
                within[k][a][b] = torch.from_numpy(order)
                gains[a, b] += gain
    block_order = torch.from_numpy(_assign(gains)[0])
    return [
        blocked_permutation(block_order, [within[k][a][int(block_order[a])] for a in range(n_blocks)], block)
        for k in range(len(scores))
    ]


def _tied_units(spec: PermutationSpec, names: Sequence[str]) -> list[tuple[str, ...]]:
    """Groups solved together: those tied to a shared block order form one unit."""
    units = []
    for name in names:
        tied = [other for other in names if spec.groups[other].tied_blocks == name]
        if not spec.groups[name].tied_blocks:
            units.append((name, *tied))
    return units


def _group_alignment(group: PermGroup, similarity: torch.Tensor, perm: torch.Tensor, absolute: bool) -> GroupAlignment:
    similarity = similarity.float().cpu()
    objective = similarity.abs() if absolute else similarity
    before, after = objective.diagonal().mean().item(), objective[torch.arange(len(perm)), perm].mean().item()
    return GroupAlignment(group, perm, similarity, before, after)


def assignment_workers() -> int:
    """Threads for the assignments (scipy's solver releases the GIL): torch's CPU thread budget."""
    return max(1, torch.get_num_threads())


class Assignments:
    """The assignments of an alignment's units (groups tied to a shared block order form one unit), each solved in
    a worker thread (scipy's solver releases the interpreter lock) as soon as its similarities are given, so that
    the units whose statistics are final are solved while the encoders still run on the others."""

    def __init__(self, spec: PermutationSpec, names: Sequence[str], absolute: bool, pool: ThreadPoolExecutor) -> None:
        self.spec, self.names, self.absolute, self.pool = spec, list(names), absolute, pool
        self.units = _tied_units(spec, self.names)
        self.similarities: dict[str, torch.Tensor] = {}
        self._futures: dict[tuple[str, ...], Future] = {}

    def give(self, name: str, similarity: torch.Tensor) -> None:
        """A group's final similarity matrix; its unit is solved once all of the unit's groups are given."""
        self.similarities[name] = similarity
        for unit in self.units:
            if name in unit and all(n in self.similarities for n in unit):
                scores = [self.similarities[n].abs() if self.absolute else self.similarities[n] for n in unit]
                self._futures[unit] = self.pool.submit(solve_blocked, scores, self.spec.groups[unit[0]].block)

    def result(self, progress: Callable[[float], None] | None = None) -> dict[str, GroupAlignment]:
        """Every group's alignment, in the order of `names`, once every unit is solved (`progress(fraction)` as
        units finish, by their cost: ~ size^3 per block)."""
        missing = [n for n in self.names if n not in self.similarities]
        if missing:
            raise ValueError(f"no similarity given for {', '.join(missing)}")
        work = {unit: self.spec.groups[unit[0]].size ** 3 / self.spec.groups[unit[0]].block for unit in self.units}
        units = {future: unit for unit, future in self._futures.items()}
        result, done = {}, 0.0
        for future in as_completed(units):
            for name, perm in zip(units[future], future.result()):
                result[name] = _group_alignment(self.spec.groups[name], self.similarities[name], perm, self.absolute)
            done += work[units[future]]
            if progress:
                progress(done / sum(work.values()))
        return {name: result[name] for name in self.names}


# -- correlation matching -------------------------------------------------------------------------

class CrossCorrelation:
    """Streaming standardised cross-correlation of two sets of units over frames.

    Each batch is shifted by the first batch's means, so the sums do not lose the covariance to
    cancellation (the shift leaves the correlation unchanged). A batch costs one in-place matrix
    product and two column sums per side, in the inputs' precision; the running totals move into
    float64 every `FLUSH_ROWS` frames, which bounds the rounding of long runs.
    """

    FLUSH_ROWS = 1 << 15

    def __init__(self) -> None:
        self.count = 0
        self.pending = 0
        self.totals: list[torch.Tensor] | None = None  # float64 [sum_a, sum_b, sq_a, sq_b, cross] once flushed

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.reshape(-1, a.shape[-1]).float(), b.reshape(-1, b.shape[-1]).float()
        if self.count == 0:
            self.shift_a, self.shift_b = a.mean(0), b.mean(0)
            vector = lambda n: torch.zeros(n, device=a.device)
            self.running = [vector(a.shape[1]), vector(b.shape[1]), vector(a.shape[1]), vector(b.shape[1]),
                            torch.zeros(a.shape[1], b.shape[1], device=a.device)]
        a, b = a - self.shift_a, b - self.shift_b
        sum_a, sum_b, sq_a, sq_b, cross = self.running
        sum_a += a.sum(0)
        sum_b += b.sum(0)
        sq_a += (a * a).sum(0)
        sq_b += (b * b).sum(0)
        cross.addmm_(a.T, b)
        self.count += a.shape[0]
        self.pending += a.shape[0]
        if self.pending >= self.FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.totals is None:
            self.totals = [torch.zeros_like(t, dtype=torch.float64) for t in self.running]
        for total, running in zip(self.totals, self.running):
            total += running
            running.zero_()
        self.pending = 0

    def matrix(self, eps: float = 1e-7) -> torch.Tensor:
        if self.totals is not None:
            self._flush()
        totals = self.totals or [t.double() if t.dim() == 1 else t for t in self.running]
        n = self.count
        sum_a, sum_b, sq_a, sq_b, cross = totals
        mean_a, mean_b = sum_a / n, sum_b / n
        std_a = (sq_a / n - mean_a**2).clamp_min(0).sqrt()
        std_b = (sq_b / n - mean_b**2).clamp_min(0).sqrt()
        cov = torch.addr(cross, mean_a.to(cross.dtype), mean_b.to(cross.dtype), beta=1 / n, alpha=-1)
        return cov.div_(torch.outer(std_a, std_b).add_(eps).to(cross.dtype)).float()


def frame_positions(frames: int, keep: int, generator: torch.Generator) -> torch.Tensor | None:
    """`keep` of `frames` frame indices, one drawn at random from each of `keep` equal strata (all
    frames, None, when keep >= frames). Stratified: every part of a clip is seen, and no periodic
    signal aliases with a fixed stride."""
    if keep >= frames:
        return None
    edges = torch.arange(keep + 1, dtype=torch.float64) * frames / keep
    low = edges[:-1].floor()
    return (low + torch.rand(keep, generator=generator, dtype=torch.float64) * (edges[1:].floor() - low)).long()


def frames_at(x: torch.Tensor, positions: torch.Tensor | None, frames: int) -> torch.Tensor:
    """(batch, len(positions), units): `x` (batch, frames', units) read at `positions` of a `frames`-long
    time line, linearly interpolated where frames' != frames (as `features.match_frames`, at those
    frames only); every frame (resampled if needed) when positions is None."""
    if positions is None:
        if x.shape[1] == frames:
            return x
        positions = torch.arange(frames)
    positions = positions.to(x.device)
    if x.shape[1] == frames:
        return x[:, positions]
    source = ((positions.double() + 0.5) * (x.shape[1] / frames) - 0.5).clamp_min(0)
    low = source.floor().long().clamp_max(x.shape[1] - 1)
    high = (low + 1).clamp_max(x.shape[1] - 1)
    weight = (source - low).to(x.dtype)[None, :, None]
    return torch.lerp(x[:, low], x[:, high], weight)


@dataclass
class _Streams:
    """Per-tap accumulators fed while the two encoders run: the speech pass leaves each tap's
    (subsampled) activations here, the music pass consumes them at once, layer by layer."""

    conv_kept: dict[int, int] = field(default_factory=dict)  # conv layer -> frames kept per clip
    stats: dict[Tap, CrossCorrelation] = field(default_factory=dict)
    pending: dict[Tap, tuple] = field(default_factory=dict)
    seconds: float = 0.0  # spent in the correlation products
    final: Callable[[Tap], None] | None = None  # called once a tap's statistics are complete (the last batch)
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))

    def keep_speech(self, tap: Tap, x: torch.Tensor) -> None:
        frames = x.shape[1]
        keep = self.conv_kept.get(tap.layer, frames) if tap.kind == "conv" else frames
        positions = frame_positions(frames, keep, self.generator)
        self.pending[tap] = (x if positions is None else x[:, positions.to(x.device)], positions, frames)

    def add_music(self, tap: Tap, x: torch.Tensor) -> None:
        start = time.perf_counter()
        speech, positions, frames = self.pending.pop(tap)
        self.stats.setdefault(tap, CrossCorrelation()).update(speech, frames_at(x.to(speech.device), positions, frames))
        self.seconds += time.perf_counter() - start
        if self.final is not None:
            self.final(tap)


def conv_frames_kept(model, clip_samples: int, per_frame: int = 4) -> dict[int, int]:
    """Frames per clip kept for each conv layer: `per_frame` times the transformer's frames. The early
    layers run at up to 64x the transformer's rate with strongly overlapping receptive fields, so a
    stratified subsample of their frames gives the same correlations (docs/permutations.md)."""
    frames, kept = clip_samples, {}
    config = model.config
    for layer, (kernel, stride) in enumerate(zip(config.conv_kernel, config.conv_stride)):
        frames = (frames - kernel) // stride + 1
        kept[layer] = frames
    last = max(kept[len(kept) - 1], 1)
    return {layer: min(frames, per_frame * last) for layer, frames in kept.items()}


def _eta(elapsed: float, done: int, total: int) -> str:
    if not done:
        return ""
    left = elapsed / done * (total - done)
    return f" · about {left:.0f} s left for the clips" if left >= 10 else f" · about {left:.1f} s left for the clips"


def correlation_align(
    speech,
    music,
    clips: Sequence[np.ndarray],
    sample_rate: int,
    *,
    components: Sequence[str] = PAPER_COMPONENTS,
    absolute: bool = True,
    batch_size: int = 16,
    conv_frames_per_frame: int | None = 4,
    progress: Progress | None = None,
) -> Alignment:
    """Correlation-permutation alignment (arXiv 2506.11403) of `music` to `speech` on calibration clips.

    `speech`/`music` are encoders (`merging.encoders.Encoder`: model, sample_rate, normalize); the
    clips are mono float arrays at `sample_rate`, resampled to each encoder's rate on the way in.
    `absolute` matches on |C| as the paper did; False matches on signed correlation. Statistics
    accumulate on the encoders' device as the music pass reaches each layer; conv layers keep
    `conv_frames_per_frame` frames per transformer frame (None: every frame). `progress(fraction,
    message)` is called after every encoder pass, with an estimate of the time left.
    """
    from .encoders import check_compatible

    check_compatible(speech.model.config, music.model.config)
    spec = _spec_of(speech.model)
    components = tuple(components)
    names = spec.select(components)
    if not clips:
        raise MergeError("correlation alignment needs at least one calibration clip")
    taps = activation_taps([spec.groups[name] for name in names])
    batches = list(equal_length_batches(clips, batch_size))
    streams = _Streams()
    with ThreadPoolExecutor(max_workers=assignment_workers()) as pool:
        assignments = Assignments(spec, names, absolute, pool)
        streams.final = _solve_when_final(streams, taps, assignments)
        passes = _stream_passes(speech, music, batches, len(clips), sample_rate, taps, streams, conv_frames_per_frame,
                                progress)
        start = time.perf_counter()
        assigned = (lambda f: progress(PASSES_SHARE + (1 - PASSES_SHARE) * f, "assignments")) if progress else None
        groups = assignments.result(assigned)
    timings = {"activations": passes - streams.seconds, "correlation": streams.seconds,
               "assignment": time.perf_counter() - start}
    return Alignment(spec, "correlation", components, absolute, groups, timings)


def _stream_passes(speech, music, batches, total: int, sample_rate: int, taps, streams: _Streams,
                   conv_frames_per_frame: int | None, progress: Progress | None) -> float:
    """Both encoders' passes over every batch feeding `streams` (the last batch's completing each tap's statistics);
    the wall seconds they took."""
    started, done = time.perf_counter(), 0
    final, streams.final = streams.final, None
    for index, batch in enumerate(batches):
        if conv_frames_per_frame is not None:
            samples = round(len(batch[0]) * speech.sample_rate / sample_rate)
            streams.conv_kept = conv_frames_kept(speech.model, samples, conv_frames_per_frame)
        run_tapped(speech, encoder_input(speech, batch, sample_rate), taps, streams.keep_speech)
        if progress:
            elapsed = time.perf_counter() - started
            progress(PASSES_SHARE * (done + len(batch) / 2) / total,
                     f"calibration clips {done}/{total}, speech pass{_eta(elapsed, done + len(batch) / 2, total)}")
        streams.final = final if index == len(batches) - 1 else None
        run_tapped(music, encoder_input(music, batch, sample_rate), taps, streams.add_music)
        done += len(batch)
        if progress:
            elapsed = time.perf_counter() - started
            progress(PASSES_SHARE * done / total, f"calibration clips {done}/{total}{_eta(elapsed, done, total)}")
    return time.perf_counter() - started


def _solve_when_final(streams: _Streams, taps, assignments: Assignments) -> Callable[[Tap], None]:
    """What the last music pass calls as each tap's statistics complete: once all of a group's taps are (a query/key
    group is matched on both projections, their matrices averaged), its similarity goes to `assignments`, whose
    worker threads solve it while the pass goes on through the later layers."""
    left = {}
    for tap in taps:
        left[tap.group] = left.get(tap.group, 0) + 1

    def final(tap: Tap) -> None:
        left[tap.group] -= 1
        if left[tap.group]:
            return
        start = time.perf_counter()
        matrices = [streams.stats[t].matrix() for t in taps if t.group == tap.group]
        similarity = sum(matrices) / len(matrices)
        streams.seconds += time.perf_counter() - start
        assignments.give(tap.group, similarity)

    return final


def _spec_of(model) -> PermutationSpec:
    from .spec import hubert_spec

    return hubert_spec(model.config, list(model.state_dict()))


# -- weight matching ------------------------------------------------------------------------------

def _unit_vectors(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1).float()


def _weight_similarity(spec, speech, music, perms, name) -> torch.Tensor:
    """Σ over weights with `name` on an axis of <speech units, music units permuted elsewhere>."""
    size = spec.groups[name].size
    total = torch.zeros(size, size)
    others = {k: v for k, v in perms.items() if k != name}
    for weight, axis in _scored_axes(spec, name):
        moved = apply_permutations({weight: music[weight]}, spec, others)[weight]
        total += (_unit_vectors(speech[weight], axis) @ _unit_vectors(moved, axis).T).cpu()
    return total


def _scored_axes(spec, name) -> list[tuple[str, int]]:
    """(weight, axis) pairs carrying group `name`; a weight with the group on two axes (the
    positional conv) has no linear score and is left out."""
    pairs = []
    for weight, axes in spec.axes.items():
        on = [index for index, axis in enumerate(axes) if axis is not None and axis.group == name]
        if len(on) == 1 and not axes[on[0]].within_blocks:
            pairs.append((weight, on[0]))
    return pairs


def weight_align(
    speech: StateDict,
    music: StateDict,
    spec: PermutationSpec,
    *,
    components: Sequence[str] = COMPONENTS,
    max_iter: int = 50,
    seed: int = 0,
    progress: Progress | None = None,
) -> Alignment:
    """Data-free alignment by weight similarity (Git Re-Basin weight matching): coordinate descent
    over the spec's groups until no permutation changes. The reported similarity is cosine."""
    components = tuple(components)
    names = spec.select(components)
    units = _tied_units(spec, names)
    perms = {name: torch.arange(spec.groups[name].size) for name in names}
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for iteration in range(max_iter):
        changed = False
        for index in rng.permutation(len(units)):
            unit = units[index]
            scores = [_weight_similarity(spec, speech, music, perms, name) for name in unit]
            for name, perm in zip(unit, solve_blocked(scores, spec.groups[unit[0]].block)):
                if not torch.equal(perm, perms[name]):
                    old = scores[unit.index(name)][torch.arange(len(perm)), perms[name]].sum()
                    new = scores[unit.index(name)][torch.arange(len(perm)), perm].sum()
                    changed |= bool(new > old + 1e-6 * old.abs())
                    perms[name] = perm
        if progress:
            progress((iteration + 1) / max_iter, f"weight matching pass {iteration + 1}")
        if not changed:
            break
    groups = {}
    for name in names:
        score = _weight_similarity(spec, speech, music, perms, name)
        norms = torch.outer(_unit_norms(spec, speech, name), _unit_norms(spec, music, name))
        groups[name] = _group_alignment(spec.groups[name], score / norms.clamp_min(1e-12), perms[name], False)
    return Alignment(spec, "weights", components, False, groups, {"weight_matching": time.perf_counter() - start})


def _unit_norms(spec, state, name) -> torch.Tensor:
    """Per-unit norm of the weight vectors `_weight_similarity` compares (re-ordering elsewhere keeps it)."""
    squares = torch.zeros(spec.groups[name].size)
    for weight, axis in _scored_axes(spec, name):
        squares += _unit_vectors(state[weight], axis).pow(2).sum(1).cpu()
    return squares.sqrt()
