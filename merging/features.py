"""Running an encoder on audio: model inputs, batching, and activations captured with hooks."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from transformers import HubertModel


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


def activation_keys(model: HubertModel, groups: Sequence[str]) -> list[str]:
    """The activations each permutation group is matched on (see DESIGN.md, Correlation)."""
    keys: list[str] = []
    for group in groups:
        if group.endswith(".qk"):
            keys += [group[:-3] + ".q", group[:-3] + ".k"]
        else:
            keys.append(group)
    return keys


def _hook_points(model: HubertModel, key: str):
    """(module, 'output' | 'input') whose tensor holds the activations for `key`."""
    if key.startswith("conv"):
        return model.feature_extractor.conv_layers[int(key[4:])], "output"
    if key.startswith("ffn"):
        return model.encoder.layers[int(key[3:])].feed_forward.output_dense, "input"
    layer, part = key[4:].split(".")
    attention = model.encoder.layers[int(layer)].attention
    return {"q": (attention.q_proj, "output"), "k": (attention.k_proj, "output"), "vo": (attention.out_proj, "input")}[part]


@contextmanager
def captured(model: HubertModel, keys: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Hooks that store, per key, the latest (batch, frames, units) activations of `model`."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for key in keys:
        if key == "res":
            continue  # taken from the hidden states
        module, where = _hook_points(model, key)
        if where == "output":
            hook = lambda _m, _i, out, key=key: store.__setitem__(key, out.transpose(1, 2) if key.startswith("conv") else out)
            handles.append(module.register_forward_hook(hook))
        else:
            hook = lambda _m, inputs, key=key: store.__setitem__(key, inputs[0])
            handles.append(module.register_forward_pre_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def activations(encoder, audio: torch.Tensor, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations as (batch, frames, units) per key; 'res' stacks every layer's hidden states on the batch axis."""
    model = encoder.model
    with captured(model, keys) as store:
        output = model(audio, output_hidden_states="res" in keys)
    if "res" in keys:
        store["res"] = torch.cat(output.hidden_states, dim=0)
    return dict(store)


def match_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Linearly resample (batch, frames', units) activations to `frames` (encoders at different rates)."""
    if x.shape[1] == frames:
        return x
    return F.interpolate(x.transpose(1, 2), size=frames, mode="linear", align_corners=False).transpose(1, 2)
