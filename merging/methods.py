"""Merge methods: one small pure function per method over state dicts, behind one registry.

Every method takes state dicts with the same keys and shapes and returns a new state dict in the
dtype of its first input, on the inputs' device; inputs are never modified. Tensors that are not
floating point are copied from the first input. `alpha` is the weight on the music side.
"""
from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import torch

from .registry import (METHODS, MergeMethod, Param, Placement, all_params, get_method, merge,  # noqa: F401
                       method_arguments, register, shared_range, writes_into)
from .state import MergeError, StateDict, check_finite, check_same_keys

# ---- parameters, declared once -----------------------------------------------------------------

ALPHA = Param("alpha", 0.5, "weight of the music side (0: the speech encoder, 1: the music encoder)", "α", low=0, high=1)
PAPER_ALPHA = replace(ALPHA, default=0.1)  # the permutation paper's α
LAYER_ALPHAS = Param("layer_alphas", None, "one α per transformer layer, overriding α inside that layer",
                     "per-layer α", kind="floats", low=0, high=1)
DENSITY = Param("density", 0.2, "fraction of each task vector's entries kept (by magnitude)", "density",
                low=0, high=1, low_open=True, step=0.05)
LAMBDA_HELP = "scale of the {} task vector's contribution (2 doubles it, 0 leaves it out)"


def lambdas(default: float, low: float = -1) -> tuple[Param, Param]:
    """λ_speech and λ_music: each scales its task vector's contribution, the same way in every method."""
    return tuple(Param(f"lambda_{role}", default, LAMBDA_HELP.format(role), f"λ {role}", low=low, high=2, step=0.05)
                 for role in ("speech", "music"))


# ---- where a merge sits between speech and music --------------------------------------------------

def _alpha_label(arguments) -> str:
    return f"α={arguments['alpha']:g}" + (" (per layer)" if arguments.get("layer_alphas") else "")


def _music_share(arguments) -> float:
    """λ music's share of the two λs (0.5 when they do not add up to a positive weight)."""
    ls, lm = arguments["lambda_speech"], arguments["lambda_music"]
    return min(max(lm / (ls + lm), 0.0), 1.0) if ls + lm > 0 else 0.5


ALONG_ALPHA = Placement(("alpha",), lambda arguments: arguments["alpha"], _alpha_label, exact=True)
BY_MUSIC_SHARE = Placement(("lambda_speech", "lambda_music"), _music_share,
                           lambda a: f"λ={a['lambda_speech']:g}/{a['lambda_music']:g}", exact=False)


# ---- checks -------------------------------------------------------------------------------------

def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry is finite, from one reduction per tensor and one sync per device: a NaN or Inf
    makes the norm or sum non-finite (an overflowing sum only sends the caller to the exact check).
    On GPUs one fused multi-tensor norm is cheapest, on CPUs a plain sum per tensor."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.is_floating_point() and tensor.numel():
            by_device.setdefault(tensor.device, []).append(tensor)
    verdicts = [
        torch.stack(torch._foreach_norm(group) if device.type == "cuda" else [t.sum() for t in group]).isfinite().all()
        for device, group in by_device.items()
    ]
    return all(bool(v) for v in verdicts)


def _finite_or_raise(tensors: list[torch.Tensor], states: dict[str, StateDict]) -> None:
    """MergeError naming the first non-finite tensor of `states`, when the cheap check of `tensors` fails."""
    if not _all_finite(tensors):
        for label, state in states.items():
            check_finite(state, label)


def _check_inputs(states: dict[str, StateDict]) -> None:
    check_same_keys(states)
    _finite_or_raise([t for state in states.values() for t in state.values()], states)


_LAYER = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")


def _per_tensor(names: Sequence[str], default, per_layer: Sequence | None, what: str) -> dict:
    """Map every tensor name to `default`, or to its transformer layer's entry of `per_layer`."""
    if per_layer is None:
        return dict.fromkeys(names, default)
    layer_of = {name: int(m.group(1)) for name in names if (m := _LAYER.search(name))}
    layers = sorted(set(layer_of.values()))
    if len(per_layer) != len(layers):
        raise MergeError(f"{what} has {len(per_layer)} values but the model has {len(layers)} transformer layers")
    position = {layer: i for i, layer in enumerate(layers)}
    return {name: per_layer[position[layer_of[name]]] if name in layer_of else default for name in names}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # half precision is merged in float32


# ---- linear ---------------------------------------------------------------------------------

def _lerp_tensors(
    starts: list[torch.Tensor], ends: list[torch.Tensor], weight: float, outs: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """starts[i] + weight·(ends[i] − starts[i]), into `outs` or new tensors; weights 0 and 1 copy bitwise."""
    if weight in (0, 1):
        source = starts if weight == 0 else ends
        outs = [torch.empty_like(t) for t in source] if outs is None else outs
        torch._foreach_copy_(outs, source)
    elif outs is None:
        outs = list(torch._foreach_lerp(starts, ends, weight))  # one fused pass on GPUs, a loop in C++ on CPUs
    elif outs[0].is_cuda:  # no `out=` for the fused kernels: copy, then lerp in place, still cheaper than a launch each
        torch._foreach_copy_(outs, starts)
        torch._foreach_lerp_(outs, ends, weight)
    else:
        for out, start, end in zip(outs, starts, ends):
            torch.lerp(start, end, weight, out=out)
    return outs


def _lerp_states(
    first: StateDict, second: StateDict, weights: dict[str, float], labels: tuple[str, str], out: StateDict | None = None,
    inputs_finite: bool = False,
) -> StateDict:
    """first + w·(second − first) per tensor, w per tensor name, into `out` or a new state dict;
    MergeError if an input is not finite."""
    result = dict.fromkeys(first) if out is None else out
    groups: dict[float, list[str]] = {}
    for name, weight in weights.items():
        if first[name].is_floating_point():
            groups.setdefault(weight, []).append(name)
        else:
            result[name] = first[name].clone() if out is None else out[name].copy_(first[name])
    checked = []  # the outputs show any non-finite input, except those that weight 0 or 1 left out
    for weight, names in groups.items():
        starts = [first[name] for name in names]
        ends = [second[name].to(first[name]) for name in names]  # no copy when dtype and device match
        outs = _lerp_tensors(starts, ends, weight, None if out is None else [out[name] for name in names])
        result.update(zip(names, outs))
        checked += outs
        if weight in (0, 1):
            checked += [(second if weight == 0 else first)[name] for name in names]
    if not inputs_finite:  # an interpolation (weights in [0, 1]) of finite inputs is finite: no second read
        _finite_or_raise(checked, dict(zip(labels, (first, second))))
    return result


def _lerp_weights(first: StateDict, second: StateDict, alpha, layer_alphas, labels: tuple[str, str]) -> dict[str, float]:
    alpha, layer_alphas = ALPHA.check(alpha), LAYER_ALPHAS.check(layer_alphas)
    check_same_keys(dict(zip(labels, (first, second))))
    return _per_tensor(list(first), alpha, layer_alphas, "layer_alphas")


@register("linear", "(1−α)·speech + α·music, optionally with one α per transformer layer",
          params=(ALPHA, LAYER_ALPHAS), paper="weight averaging (Wortsman et al. 2022, arXiv 2203.05482)",
          placed=ALONG_ALPHA)
def linear(speech: StateDict, music: StateDict, *, alpha: float, layer_alphas: Sequence[float] | None) -> StateDict:
    """(1−α)·speech + α·music. `layer_alphas` (one per `encoder.layers.{l}.`) overrides α inside those
    layers; CNN, projection, positional conv, encoder norm and masked_spec_embed use `alpha`."""
    labels = ("speech", "music")
    weights = _lerp_weights(speech, music, alpha, layer_alphas, labels)
    return _lerp_states(speech, music, weights, labels)


@writes_into("linear")
def linear_into(
    out: StateDict, speech: StateDict, music: StateDict, *, alpha: float, layer_alphas: Sequence[float] | None = None,
    inputs_finite: bool = False,
) -> StateDict:
    """`linear` written into the preallocated `out` (same keys, shapes, dtypes and device as `speech`),
    which is returned. On MergeError the contents of `out` are unspecified; the inputs are untouched.
    `inputs_finite`: the caller vouches that every input is finite (an encoder checked when it was loaded),
    so the result is not read again to check it (a third of the cost of a merge at the bandwidth limit)."""
    return _lerp_into(out, speech, music, alpha, layer_alphas, ("speech", "music"), inputs_finite)


def _lerp_into(out: StateDict, first: StateDict, second: StateDict, alpha, layer_alphas, labels: tuple[str, str],
               inputs_finite: bool = False) -> StateDict:
    weights = _lerp_weights(first, second, alpha, layer_alphas, labels)
    check_same_keys({labels[0]: first, "out": out})
    for name, tensor in first.items():
        if (out[name].dtype, out[name].device) != (tensor.dtype, tensor.device):
            raise MergeError(
                f"output buffer '{name}' is {out[name].dtype} on {out[name].device}, "
                f"but {labels[0]} is {tensor.dtype} on {tensor.device}"
            )
    return _lerp_states(first, second, weights, labels, out, inputs_finite)


class Aligner(Protocol):
    def apply(self, music: StateDict) -> StateDict: ...


@register("permute", "correlation-permutation: move music into the speech basis (exact re-ordering), then linear",
          params=(PAPER_ALPHA, LAYER_ALPHAS), aligns="music", placed=ALONG_ALPHA,
          paper="correlation-permutation merging of HuBERT and MERT (arXiv 2506.11403)")
def permute(
    speech: StateDict, music: StateDict, *, alignment: Aligner, alpha: float, layer_alphas: Sequence[float] | None
) -> StateDict:
    """`linear` of speech and the music weights re-ordered by `alignment` (a `merging.align.Alignment`)."""
    return linear(speech, alignment.apply(music), alpha=alpha, layer_alphas=layer_alphas)


# ---- task vectors -------------------------------------------------------------------------------

def _task_arithmetic_tensor(base: torch.Tensor, speech: torch.Tensor, music: torch.Tensor, ls: float, lm: float):
    if not base.is_floating_point() or (ls, lm) == (0, 0):
        return base.clone()
    if (ls, lm) == (1, 0):
        return speech.to(base, copy=True)
    if (ls, lm) == (0, 1):
        return music.to(base, copy=True)
    dtype = _compute_dtype(base.dtype)
    base = base.to(dtype)
    out = torch.lerp(base, speech.to(base), ls)  # base + λs·(speech − base)
    return out.add_(music.to(base) - base, alpha=lm)


LAYER_LAMBDAS = Param("layer_lambdas", None, "one (λ speech, λ music) pair per transformer layer, overriding λ inside it",
                      "per-layer λ", kind="pairs", low=-1, high=2)


@register("task_arithmetic", "base + λs·(speech − base) + λm·(music − base), optionally with (λs, λm) per layer",
          params=(*lambdas(0.5), LAYER_LAMBDAS), paper="task arithmetic (Ilharco et al. 2023, arXiv 2212.04089); "
          "distilled speech/music task vectors (arXiv 2505.13270)", placed=BY_MUSIC_SHARE)
def task_arithmetic(
    base: StateDict,
    speech: StateDict,
    music: StateDict,
    *,
    lambda_speech: float,
    lambda_music: float,
    layer_lambdas: Sequence[tuple[float, float]] | None,
) -> StateDict:
    """base + λs·(speech − base) + λm·(music − base); `layer_lambdas` gives a (λs, λm) pair per transformer
    layer. λ=(0,0) returns the base exactly, (1,0) the speech and (0,1) the music weights exactly."""
    pair = (lambda_speech, lambda_music)
    _check_inputs({"base": base, "speech": speech, "music": music})
    pairs = _per_tensor(list(base), pair, layer_lambdas, "layer_lambdas")
    return {name: _task_arithmetic_tensor(base[name], speech[name], music[name], *pairs[name]).to(base[name].dtype)
            for name in base}


def _kth_largest(magnitudes: torch.Tensor, count: int) -> torch.Tensor:
    """The `count`-th largest entry of a flat tensor of magnitudes."""
    rank = magnitudes.numel() - count  # ascending, from 0
    # kthvalue is ~50x slower than a sort on GPUs, a sort ~6x slower than kthvalue on CPUs
    return magnitudes.sort().values[rank] if magnitudes.is_cuda else magnitudes.kthvalue(rank + 1).values


def _trim(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the round(density·n) entries largest in magnitude (ties at the threshold are all kept)."""
    if density >= 1 or tensor.numel() == 0:
        return tensor
    magnitude = tensor.abs()
    return tensor * (magnitude >= _kth_largest(magnitude.flatten(), max(1, round(density * tensor.numel()))))


def _elected_agreement(parts: torch.Tensor) -> torch.Tensor:
    """Per entry, which of the stacked `parts` are non-zero with the sign of their sum (a zero sum counts as +)."""
    elected = torch.where(parts.sum(0) >= 0, 1, -1).to(parts.dtype)
    return parts.sign() == elected


def _disjoint_mean(parts: torch.Tensor) -> torch.Tensor:
    """Mean over the stacked `parts` that are non-zero and agree with the elected sign (0 where none do)."""
    agree = _elected_agreement(parts)
    return (parts * agree).sum(0) / agree.sum(0).clamp_min(1)


def _task_vector_merge(base: StateDict, models: dict[str, StateDict], merge_tensor) -> StateDict:
    """base + merge_tensor(name, [model − base, ...]) per floating tensor, computed in float32 or wider."""
    out = {}
    for name, b in base.items():
        if not b.is_floating_point():
            out[name] = b.clone()
            continue
        compute = b.to(_compute_dtype(b.dtype))
        deltas = [m[name].to(compute) - compute for m in models.values()]
        out[name] = (compute + merge_tensor(name, deltas)).to(b.dtype)
    return out


def _task_vector_threshold(base: StateDict, model: StateDict, density: float) -> float:
    """The magnitude of the round(density·n)-th largest entry of model − base over all its n floating
    entries flattened together (the whole task vector), from one flat vector of magnitudes."""
    names = [name for name, tensor in base.items() if tensor.is_floating_point() and tensor.numel()]
    if density >= 1 or not names:
        return 0.0
    dtype = functools.reduce(torch.promote_types, (_compute_dtype(base[name].dtype) for name in names))
    magnitudes = torch.empty(sum(base[name].numel() for name in names), dtype=dtype, device=base[names[0]].device)
    start = 0
    for name in names:  # filled tensor by tensor: no second flat copy
        part = magnitudes[start:start + base[name].numel()]
        torch.sub(model[name].flatten().to(part), base[name].flatten().to(part), out=part).abs_()
        start += part.numel()
    return _kth_largest(magnitudes, max(1, round(density * magnitudes.numel()))).item()


def _weight_column(lambdas: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """The λs as a tensor that multiplies a stack of `like`-shaped parts, one λ per part."""
    return torch.tensor(lambdas, dtype=like.dtype, device=like.device).view(-1, *[1] * like.ndim)


def _normalised_ties(lambdas: Sequence[float], density: float):
    """mergekit's TIES: each tensor trimmed on its own, then Σ λ·τ / Σ λ over the agreeing models."""

    def merge_tensor(_name, deltas):
        weights = _weight_column(lambdas, deltas[0])
        weighted = torch.stack([_trim(d, density) for d in deltas]) * weights
        agree = _elected_agreement(weighted)
        divisor = (weights * agree).sum(0)
        return (weighted * agree).sum(0) / divisor.masked_fill(divisor == 0, 1)

    return merge_tensor


TRIM = Param("trim", "task_vector", "what density is a fraction of: 'task_vector' (each task vector as a whole, as the "
             "paper) or 'per_tensor' (each tensor, with mergekit's Σλτ/Σλ mean)", "trim",
             kind="choice", choices=("task_vector", "per_tensor"))


@register("ties", "TIES: trim each task vector to its top entries, elect signs by mass, disjoint mean, scaled by λ",
          params=(*lambdas(1.0, low=0), DENSITY, TRIM), paper="TIES-Merging (Yadav et al. 2023, arXiv 2306.01708)",
          placed=BY_MUSIC_SHARE)
def ties(base: StateDict, speech: StateDict, music: StateDict, *, lambda_speech: float, lambda_music: float,
         density: float, trim: str) -> StateDict:
    """TIES-merging as its paper and official code define it. Each task vector τ = model − base keeps its
    round(density·n) largest-magnitude entries over all its n floating entries together (not per tensor);
    per entry, the sign of Σ λ·τ̂ is elected (a zero sum counts as +), and the merged delta is the mean
    of λ·τ̂ over the models that are non-zero there and agree (0 where none do): θ = base + that, so
    λ = (1, 1) is the paper's λ = 1 and (2, 2) doubles the delta.

    trim="per_tensor" is mergekit's variant: each tensor trimmed on its own, and the merged delta
    Σ λ·τ̂ / Σ λ over the agreeing models, so the λs are only relative weights ((2, 2) equals (1, 1))."""
    lambdas_ = (lambda_speech, lambda_music)
    _check_inputs({"base": base, "speech": speech, "music": music})
    models = {"speech": speech, "music": music}
    if trim == "per_tensor":
        return _task_vector_merge(base, models, _normalised_ties(lambdas_, density))
    thresholds = [_task_vector_threshold(base, model, density) for model in models.values()]

    def merge_tensor(_name, deltas):
        return _disjoint_mean(torch.stack([w * d * (d.abs() >= t) for d, w, t in zip(deltas, lambdas_, thresholds)]))

    return _task_vector_merge(base, models, merge_tensor)


def _tensor_seed(seed: int, role: str, name: str) -> int:
    digest = hashlib.blake2b(f"{seed}|{role}|{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


DROP = Param("drop", 0.9, "probability that a task-vector entry is dropped (survivors are scaled by 1/(1 − drop))",
             "drop", low=0, high=1, high_open=True, step=0.05)
SEED = Param("seed", 0, "seed of the random drop masks", "seed", kind="int")
COMBINE = Param("combine", "task_arithmetic", "how the rescaled task vectors combine: 'task_arithmetic' (their λ-weighted "
                "sum) or 'ties' (sign election and disjoint mean: DARE-TIES)", "combine",
                kind="choice", choices=("task_arithmetic", "ties"))


@register("dare", "DARE: drop task-vector entries at random, rescale survivors, then task arithmetic (or TIES's "
          "sign election and disjoint mean)", params=(*lambdas(0.5), DROP, SEED, COMBINE),
          paper="DARE (Yu et al. 2023, arXiv 2311.03099)", placed=BY_MUSIC_SHARE)
def dare(base: StateDict, speech: StateDict, music: StateDict, *, lambda_speech: float, lambda_music: float,
         drop: float, seed: int, combine: str) -> StateDict:
    """DARE: each entry of τ = model − base is dropped with probability `drop` and survivors are scaled
    by 1/(1 − drop), giving τ̃; then base + λs·τ̃s + λm·τ̃m, or with combine="ties" (DARE-TIES) base +
    the disjoint mean of the λ·τ̃ that agree with the elected sign of Σ λ·τ̃. The masks come from a CPU
    generator seeded by (seed, role, tensor name), so a seed gives the same merge on every device.
    drop=0 is task_arithmetic (or TIES without trimming)."""
    lambdas_ = (lambda_speech, lambda_music)
    if drop == 0 and combine == "task_arithmetic":
        return task_arithmetic(base, speech, music, lambda_speech=lambda_speech, lambda_music=lambda_music)
    _check_inputs({"base": base, "speech": speech, "music": music})

    def merge_tensor(name, deltas):
        parts = []
        for role, delta, weight in zip(("speech", "music"), deltas, lambdas_):
            generator = torch.Generator().manual_seed(_tensor_seed(seed, role, name))
            keep = torch.rand(delta.shape, generator=generator) >= drop
            parts.append(delta * keep.to(delta.device) * (weight / (1 - drop)))
        return torch.stack(parts).sum(0) if combine == "task_arithmetic" else _disjoint_mean(torch.stack(parts))

    return _task_vector_merge(base, {"speech": speech, "music": music}, merge_tensor)


def _drm_horizontal(deltas: list[torch.Tensor], lambdas: Sequence[float], density: float, rank_tol: float,
                    joint: bool) -> torch.Tensor:
    """Merged delta of (out, in) matrices Δ_i in the right-singular space of [Δ_1 … Δ_N]."""
    width = deltas[0].shape[1]
    U, S, Vh = torch.linalg.svd(torch.cat(deltas, dim=1), full_matrices=False)
    kept = S > rank_tol * S[0]
    U, S, Vh = U[:, kept], S[kept], Vh[kept]
    bases, scales = [], []
    for i in range(len(deltas)):
        v = Vh[:, i * width:(i + 1) * width]
        norms = v.norm(dim=1, keepdim=True)  # renormalise each row, moving its norm into the singular value
        bases.append(v / norms.clamp_min(torch.finfo(v.dtype).tiny))
        scales.append(S[:, None] * norms)
    bases = torch.stack(bases)
    bases = _trim(bases, density) if joint else torch.stack([_trim(b, density) for b in bases])
    parts = _weight_column(lambdas, bases[0]) * torch.stack(scales) * bases
    return U @ _disjoint_mean(parts)


def _drm_matrix(deltas: list[torch.Tensor], lambdas: Sequence[float], density: float, rank_tol: float,
                variant: str, joint: bool) -> torch.Tensor:
    """DRM of one weight viewed as (out, rest); the vertical variant is the horizontal one of the transposes."""
    shape = deltas[0].shape
    active = [(d.reshape(shape[0], -1), w) for d, w in zip(deltas, lambdas) if w != 0 and bool(d.any())]
    if not active:  # an all-zero task vector would otherwise enter the mean as renormalised rounding noise
        return torch.zeros_like(deltas[0])
    matrices, weights = [d for d, _ in active], [w for _, w in active]
    if variant == "vertical":
        return _drm_horizontal([m.T for m in matrices], weights, density, rank_tol, joint).T.reshape(shape)
    return _drm_horizontal(matrices, weights, density, rank_tol, joint).reshape(shape)


RANK_TOL = Param("rank_tol", 0.01, "joint singular components below rank_tol × the largest are dropped", "rank tolerance",
                 low=0, high=1, high_open=True, step=0.005)
VARIANT = Param("variant", "horizontal", "'horizontal' (deltas side by side: shared left singular vectors, the right "
                "ones pruned) or 'vertical' (stacked: shared right singular vectors, the left ones pruned)", "variant",
                kind="choice", choices=("horizontal", "vertical"))
PRUNE = Param("prune", "joint", "'joint' (one top-density cut over all models' renormalised entries, as the authors) "
              "or 'per_model' (each model's own cut)", "prune", kind="choice", choices=("joint", "per_model"))
CONV = Param("conv", "elementwise", "conv kernels: 'elementwise' (sign election and disjoint mean, as the authors) or "
             "'drm' (each kernel viewed as out × rest)", "conv kernels", kind="choice", choices=("elementwise", "drm"))


@register("drm", "Decom-Renorm-Merge: sign-elected disjoint merge of task vectors in their joint SVD space",
          params=(*lambdas(1.0), DENSITY, RANK_TOL, VARIANT, PRUNE, CONV), paper="Decom-Renorm-Merge (arXiv 2505.23117)",
          placed=BY_MUSIC_SHARE)
def drm(base: StateDict, speech: StateDict, music: StateDict, *, lambda_speech: float, lambda_music: float,
        density: float, rank_tol: float, variant: str, prune: str, conv: str) -> StateDict:
    """Decom-Renorm-Merge as its authors apply it. For each 2-D weight with deltas Δ_i (horizontal):
    [Δ_s Δ_m] = U·S·Vᵀ keeping S > rank_tol·S_max; Vᵀ splits into V_iᵀ, whose rows are renormalised to
    unit norm (the norm moves into S_i); the renormalised entries of all models together keep their top
    `density` fraction (prune="per_model": each model's own); M_i = λ_i·diag(S_i)·V̂_iᵀ; signs are
    elected per entry and the mean over the agreeing non-zero M_i gives M; Δ = U·M. The vertical variant
    stacks the Δ_i and prunes the renormalised columns of the U_i instead. Every other tensor (conv
    kernels, the positional conv and its weight-norm parts, biases, norms, masked_spec_embed) and any
    tensor of one row: sign election and disjoint mean of λ_i·Δ_i, untrimmed; conv="drm" puts conv
    kernels through the DRM path too. A model with λ=0 or an all-zero delta is left out of a weight's SVD."""
    lambdas_ = (lambda_speech, lambda_music)
    _check_inputs({"base": base, "speech": speech, "music": music})

    def merge_tensor(_name, deltas):
        shape = deltas[0].shape
        if (len(shape) == 2 or (conv == "drm" and len(shape) > 2)) and shape[0] > 1:
            return _drm_matrix(deltas, lambdas_, density, rank_tol, variant, prune == "joint")
        return _disjoint_mean(torch.stack([w * d for d, w in zip(deltas, lambdas_)]))

    return _task_vector_merge(base, {"speech": speech, "music": music}, merge_tensor)


# ---- fine-tuning -------------------------------------------------------------------------------

FT_ALPHA = Param("alpha", 0.25, "weight of the fine-tuned copy (0: the pretrained encoder, 1: the fine-tuned one)", "α",
                 low=0, high=1)


@register("speech_ft", "θ_pre + α·(θ_ft − θ_pre): Speech-FT interpolation toward the fine-tuned copy",
          params=(FT_ALPHA,), paper="Speech-FT (arXiv 2502.12672)", placed=ALONG_ALPHA)
def speech_ft(pretrained: StateDict, finetuned: StateDict, *, alpha: float) -> StateDict:
    """Speech-FT (arXiv 2502.12672): θ_pre + α·(θ_ft − θ_pre); α=0 is the pretrained model exactly."""
    labels = ("pretrained", "finetuned")
    weights = _lerp_weights(pretrained, finetuned, alpha, None, labels)
    return _lerp_states(pretrained, finetuned, weights, labels)


# ---- into preallocated weights -------------------------------------------------------------------

@writes_into("permute")
def permute_into(out: StateDict, speech: StateDict, music: StateDict, *, alignment: Aligner, alpha: float,
                 layer_alphas: Sequence[float] | None = None, inputs_finite: bool = False) -> StateDict:
    """`permute` written into `out` (see `linear_into`). A caller that keeps the re-ordered music weights
    passes an `alignment` whose `apply` returns them: a repeated merge then costs what `linear_into` costs."""
    return linear_into(out, speech, alignment.apply(music), alpha=alpha, layer_alphas=layer_alphas,
                       inputs_finite=inputs_finite)


@writes_into("speech_ft")
def speech_ft_into(out: StateDict, pretrained: StateDict, finetuned: StateDict, *, alpha: float,
                   inputs_finite: bool = False) -> StateDict:
    """`speech_ft` written into `out` (see `linear_into`)."""
    return _lerp_into(out, pretrained, finetuned, FT_ALPHA.check(alpha), None, ("pretrained", "finetuned"), inputs_finite)

