"""Running an encoder on audio: model inputs, batching, and activations captured with hooks."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import HubertModel

from .spec import PermGroup


def encoder_input(encoder, clips: Sequence[np.ndarray], sample_rate: int) -> torch.Tensor:
    """A (batch, samples) float32 tensor on the encoder's device: resampled to the encoder's rate and,
    where its feature extractor asks for it, normalised per clip (zero mean, unit variance)."""
    if sample_rate != encoder.sample_rate:
        from .audio import resample

        clips = [resample(clip, sample_rate, encoder.sample_rate) for clip in clips]
    lengths = {len(clip) for clip in clips}
    if len(lengths) != 1:
        raise ValueError(f"a batch needs clips of one length, got {sorted(lengths)}")
    audio = torch.from_numpy(np.stack(clips).astype(np.float32, copy=False))
    if encoder.normalize:
        audio = (audio - audio.mean(-1, keepdim=True)) / torch.sqrt(audio.var(-1, keepdim=True) + 1e-7)
    return audio.to(next(encoder.model.parameters()).device)


def equal_length_batches(clips: Sequence[np.ndarray], batch_size: int) -> Iterator[list[np.ndarray]]:
    """Deterministic batches of equal-length clips (no padding, which would shift norm statistics)."""
    by_length: dict[int, list[np.ndarray]] = {}
    for clip in clips:
        by_length.setdefault(len(clip), []).append(clip)
    for length in sorted(by_length):
        group = by_length[length]
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size]


@dataclass(frozen=True)
class Tap:
    """Where a permutation group's activations are read: `kind` of layer `layer` ('q'/'k' split a
    query/key group, whose units are matched on both projections)."""

    group: str
    kind: str  # "conv" | "res" | "q" | "k" | "vo" | "ffn"
    layer: int | None = None


def activation_taps(groups: Sequence[PermGroup]) -> list[Tap]:
    """The activations each permutation group is matched on (docs/permutations.md, Correlation)."""
    taps: list[Tap] = []
    for group in groups:
        parts = ("q", "k") if group.kind == "qk" else (group.kind,)
        taps += [Tap(group.name, part, group.layer) for part in parts]
    return taps


def _hook_point(model: HubertModel, tap: Tap):
    """(module, 'output' | 'input') whose tensor holds the activations of `tap`."""
    if tap.kind == "conv":
        return model.feature_extractor.conv_layers[tap.layer], "output"
    layer = model.encoder.layers[tap.layer]
    if tap.kind == "ffn":
        return layer.feed_forward.output_dense, "input"
    attention = layer.attention
    return {"q": (attention.q_proj, "output"), "k": (attention.k_proj, "output"), "vo": (attention.out_proj, "input")}[tap.kind]


Sink = Callable[[Tap, torch.Tensor], None]


@contextmanager
def tapped(model: HubertModel, taps: Sequence[Tap], sink: Sink) -> Iterator[None]:
    """Hooks that hand `sink` each tap's (batch, frames, units) activations as the model computes them
    (conv outputs arrive as a channels-last view); 'res' taps are left to the caller (hidden states)."""
    handles = []
    for tap in taps:
        if tap.kind == "res":
            continue
        module, where = _hook_point(model, tap)
        if where == "output":
            transpose = tap.kind == "conv"
            hook = lambda _m, _i, out, tap=tap, transpose=transpose: sink(tap, out.transpose(1, 2) if transpose else out)
            handles.append(module.register_forward_hook(hook))
        else:
            handles.append(module.register_forward_pre_hook(lambda _m, inputs, tap=tap: sink(tap, inputs[0])))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def run_tapped(encoder, audio: torch.Tensor, taps: Sequence[Tap], sink: Sink) -> None:
    """One forward pass of `encoder` on `audio`, handing every tap's activations to `sink`; a 'res'
    tap gets every layer's hidden states stacked on the batch axis. Where `fast_path` allows, the conv
    layers run as `conv_features` (the conv taps read from it), the rest through the model's modules."""
    model = encoder.model
    res = [tap for tap in taps if tap.kind == "res"]
    if fast_path(model, audio):
        conv = {tap.layer: tap for tap in taps if tap.kind == "conv"}
        on_conv = lambda index, x: sink(conv[index], x) if index in conv else None
        with tapped(model, [tap for tap in taps if tap.kind != "conv"], sink):
            states = hidden_states(model, audio, on_conv)
    else:
        with tapped(model, taps, sink):
            states = model(audio, output_hidden_states=bool(res)).hidden_states
    for tap in res:
        sink(tap, torch.cat(states, dim=0))


def activations(encoder, audio: torch.Tensor, taps: Sequence[Tap]) -> dict[Tap, torch.Tensor]:
    """Activations as (batch, frames, units) per tap."""
    store: dict[Tap, torch.Tensor] = {}
    run_tapped(encoder, audio, taps, store.__setitem__)
    return store


def match_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Linearly resample (batch, frames', units) activations to `frames` (encoders at different rates)."""
    if x.shape[1] == frames:
        return x
    return F.interpolate(x.transpose(1, 2), size=frames, mode="linear", align_corners=False).transpose(1, 2)


# ---- a faster forward pass for inference ----------------------------------------------------------
# The CNN front end is most of a small encoder's cost on a CPU, and oneDNN's Conv1d is slow on its
# shapes (one input channel, long strided sequences). Frames are kept channels-last in buffers whose
# length is a multiple of every later stride, so each conv is a few plain matmuls on views (no
# im2col copy); the rows past a layer's valid frames hold garbage that no valid frame ever reads.

def _strided_conv(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """Conv1d of channels-last x (batch, frames, in) with `weight` (out, in, kernel) as matmuls over
    blocks of `stride` frames; (batch, frames // stride, out), bias-free. Output row r reads frames
    r*stride .. r*stride + kernel - 1, spilling into the next clip's rows for the last rows."""
    batch, frames, channels = x.shape
    out, _, kernel = weight.shape
    blocks = x.reshape(batch * frames // stride, stride * channels)
    taps = weight.permute(2, 1, 0).reshape(kernel * channels, out)  # row = tap * in + channel
    y = blocks @ taps[: min(stride, kernel) * channels]
    for b in range(1, -(-kernel // stride)):
        width = min(stride, kernel - b * stride) * channels
        y[:-b].addmm_(blocks[b:, :width], taps[b * stride * channels : b * stride * channels + width])
    return y.view(batch, frames // stride, out)


def _group_norm_first(audio: torch.Tensor, layer, valid: int) -> torch.Tensor:
    """The first conv and its per-channel group norm as one batched matmul over patches: the norm's
    per-clip mean and variance over time follow from the conv weights and the clip's patch statistics,
    so they fold into per-clip weights (no pass over the large output). Statistics cover the `valid`
    first frames; the buffer has one row per `stride` samples."""
    conv, norm = layer.conv, layer.layer_norm
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    rows = audio.shape[1] // stride
    patches = F.pad(audio, (0, max(kernel - stride, 0))).unfold(1, kernel, stride)[:, :rows]  # (batch, rows, kernel)
    stats = patches[:, :valid].double()
    mean = stats.mean(1)  # (batch, kernel)
    centred = stats - mean[:, None]
    covariance = centred.transpose(1, 2) @ centred / valid  # (batch, kernel, kernel)
    weight = conv.weight[:, 0].double().T  # (kernel, out)
    variance = ((covariance @ weight) * weight).sum(1)  # (batch, out); a conv bias cancels out
    scale = norm.weight.double() * torch.rsqrt(variance + norm.eps)
    shift = norm.bias.double() - (mean @ weight) * scale
    folded = weight[None] * scale[:, None]  # (batch, kernel, out)
    return torch.baddbmm(shift[:, None].float(), patches, folded.float())


def conv_features(extractor, audio: torch.Tensor, on_layer: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """What `extractor` (a HubertFeatureEncoder) computes for (batch, samples) audio, channels-last:
    (batch, frames, channels), equal to its output transposed, about a fifth faster on a CPU (bench/bench_probes.py).
    `on_layer(index, output)` sees every conv layer's output the same way (a view: do not modify)."""
    layers = list(extractor.conv_layers)
    valid = audio.shape[1]
    lengths = []
    for layer in layers:
        valid = (valid - layer.conv.kernel_size[0]) // layer.conv.stride[0] + 1
        lengths.append(valid)
    if valid < 1:
        raise ValueError(f"{audio.shape[1]} samples are too few for the encoder's front end")
    period = int(np.prod([layer.conv.stride[0] for layer in layers]))
    padded = F.pad(audio, (0, -audio.shape[1] % period))
    first = layers[0]
    if isinstance(getattr(first, "layer_norm", None), torch.nn.GroupNorm):
        hidden = _group_norm_first(padded, first, lengths[0])
    else:
        hidden = _conv_layer(padded[:, :, None], first)
    hidden = first.activation(hidden)
    for index, layer in enumerate(layers):
        if index:
            hidden = layer.activation(_conv_layer(hidden, layer))
        if on_layer:
            on_layer(index, hidden[:, : lengths[index]])
    return hidden[:, : lengths[-1]]


def _conv_layer(x: torch.Tensor, layer) -> torch.Tensor:
    y = _strided_conv(x, layer.conv.weight, layer.conv.stride[0])
    if layer.conv.bias is not None:
        y += layer.conv.bias
    norm = getattr(layer, "layer_norm", None)
    return norm(y) if isinstance(norm, torch.nn.LayerNorm) else y


def fast_path(model: HubertModel, audio: torch.Tensor) -> bool:
    """Whether `hidden_states` takes the faster front end: an eval-mode post-norm model, float32 audio on a CPU."""
    return audio.device.type == "cpu" and audio.dtype == torch.float32 and not model.training and not model.config.do_stable_layer_norm


@torch.no_grad()
def hidden_states(model: HubertModel, audio: torch.Tensor, on_conv: Callable[[int, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
    """model(audio, output_hidden_states=True).hidden_states of an eval-mode, post-norm HubertModel, by
    the faster front end where `fast_path` allows (elsewhere, the model's own forward, and `on_conv`,
    which sees each conv layer's channels-last output on the fast path, is not called)."""
    if not fast_path(model, audio):
        return list(model(audio, output_hidden_states=True).hidden_states)
    hidden = model.feature_projection(conv_features(model.feature_extractor, audio, on_conv))
    encoder = model.encoder
    hidden = encoder.layer_norm(hidden + encoder.pos_conv_embed(hidden))
    states = [hidden]
    for layer in encoder.layers:
        states.append(layer(states[-1]))
    return states
