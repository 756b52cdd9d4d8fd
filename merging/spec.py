"""Permutation spec of the HuBERT architecture: which permutation acts on which axis of which weight.

Git Re-Basin's `PermutationSpec` idea: a declarative map from every weight to the permutation
group acting on each of its axes, so that one generic routine (`apply_permutations`) permutes any
state dict of the architecture. A permutation is a LongTensor `p` read as "new unit i = old unit p[i]".
The rules encoded here, and why each keeps the network's function, are in docs/permutations.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from transformers import HubertConfig, HubertModel

from .state import MergeError, StateDict

COMPONENTS = ("cnn", "res", "ffn", "attn")
KINDS = ("conv", "res", "qk", "vo", "ffn")  # what a group's units are: conv channels, residual stream, ...


@dataclass(frozen=True)
class PermGroup:
    """One permutation: `size` units, moved as whole blocks of `block` units (heads, conv groups).

    `component` is the ablation set it belongs to, `kind` which units it moves (conv channels, the
    residual stream, an attention layer's query/key or value/output units, an FFN's hidden units)
    and `layer` the index of its conv or transformer layer (None for the residual stream)."""

    name: str
    size: int
    component: str
    kind: str
    layer: int | None = None
    block: int = 1
    tied_blocks: str | None = None  # another group whose block order this one must share


@dataclass(frozen=True)
class Axis:
    """A group acting on one axis of a weight; `within_blocks`: only the group's within-block order,
    taken per block of another axis (the grouped positional conv's input channels)."""

    group: str
    within_blocks: bool = False


@dataclass(frozen=True)
class PermutationSpec:
    groups: dict[str, PermGroup]
    axes: dict[str, tuple[Axis | None, ...]]  # weight name -> the group on each axis (None: not permuted)
    num_layers: int = 0
    extra: dict = field(default_factory=dict)

    def select(self, components: tuple[str, ...] | list[str]) -> list[str]:
        """Names of the groups that belong to the given components."""
        unknown = set(components) - set(COMPONENTS)
        if unknown:
            raise MergeError(f"unknown component(s) {sorted(unknown)}; choose from {list(COMPONENTS)}")
        return [name for name, group in self.groups.items() if group.component in components]


def _axis_rules(config: HubertConfig) -> list[tuple[str, object]]:
    """(regex, axes or function of the match giving axes) for every weight of a HubertModel; a name
    stands for `Axis(name)`."""
    last_conv = f"conv{len(config.conv_dim) - 1}"
    return [
        (r"masked_spec_embed", ("res",)),
        (r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight",
         lambda m: (f"conv{m[1]}", f"conv{int(m[1]) - 1}" if int(m[1]) > 0 else None, None)),
        (r"feature_extractor\.conv_layers\.(\d+)\.(conv\.bias|layer_norm\.weight|layer_norm\.bias)",
         lambda m: (f"conv{m[1]}",)),
        (r"feature_projection\.layer_norm\.(weight|bias)", (last_conv,)),
        (r"feature_projection\.projection\.weight", ("res", last_conv)),
        (r"feature_projection\.projection\.bias", ("res",)),
        (r"encoder\.pos_conv_embed\.conv\.bias", ("res",)),
        # weight norm over dims (0, 1): its per-tap magnitude is unchanged by any re-ordering
        (r"encoder\.pos_conv_embed\.conv\.(parametrizations\.weight\.original0|weight_g)", (None, None, None)),
        (r"encoder\.pos_conv_embed\.conv\.(parametrizations\.weight\.original1|weight_v|weight)",
         ("res", Axis("res", within_blocks=True), None)),
        (r"encoder\.layer_norm\.(weight|bias)", ("res",)),
        (r"encoder\.layers\.(\d+)\.(layer_norm|final_layer_norm)\.(weight|bias)", ("res",)),
        (r"encoder\.layers\.(\d+)\.attention\.(q|k)_proj\.weight", lambda m: (f"attn{m[1]}.qk", "res")),
        (r"encoder\.layers\.(\d+)\.attention\.(q|k)_proj\.bias", lambda m: (f"attn{m[1]}.qk",)),
        (r"encoder\.layers\.(\d+)\.attention\.v_proj\.weight", lambda m: (f"attn{m[1]}.vo", "res")),
        (r"encoder\.layers\.(\d+)\.attention\.v_proj\.bias", lambda m: (f"attn{m[1]}.vo",)),
        (r"encoder\.layers\.(\d+)\.attention\.out_proj\.weight", lambda m: ("res", f"attn{m[1]}.vo")),
        (r"encoder\.layers\.(\d+)\.attention\.out_proj\.bias", ("res",)),
        (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.weight", lambda m: (f"ffn{m[1]}", "res")),
        (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.bias", lambda m: (f"ffn{m[1]}",)),
        (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.weight", lambda m: ("res", f"ffn{m[1]}")),
        (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.bias", ("res",)),
    ]


def _axes(rule_axes: tuple) -> tuple[Axis | None, ...]:
    return tuple(Axis(axis) if isinstance(axis, str) else axis for axis in rule_axes)


def _groups(config: HubertConfig) -> dict[str, PermGroup]:
    hidden, heads = config.hidden_size, config.num_attention_heads
    pos_groups = config.num_conv_pos_embedding_groups
    if hidden % heads or hidden % pos_groups:
        raise MergeError(f"hidden_size {hidden} must divide into {heads} heads and {pos_groups} conv groups")
    groups = [PermGroup(f"conv{i}", dim, "cnn", "conv", i) for i, dim in enumerate(config.conv_dim)]
    groups.append(PermGroup("res", hidden, "res", "res", block=hidden // pos_groups))
    for layer in range(config.num_hidden_layers):
        head_dim = hidden // heads
        groups.append(PermGroup(f"attn{layer}.qk", hidden, "attn", "qk", layer, head_dim))
        groups.append(PermGroup(f"attn{layer}.vo", hidden, "attn", "vo", layer, head_dim, tied_blocks=f"attn{layer}.qk"))
        groups.append(PermGroup(f"ffn{layer}", config.intermediate_size, "ffn", "ffn", layer))
    return {group.name: group for group in groups}


def hubert_spec(config: HubertConfig, names: list[str] | None = None) -> PermutationSpec:
    """The permutation spec of a `HubertModel` with this config (any size and norm layout).

    `names` are the weight names to cover; by default those of `HubertModel(config)`, listed on the
    meta device so nothing is allocated. A weight no rule covers is an error, never silently skipped.
    """
    if names is None:
        with torch.device("meta"):
            names = list(HubertModel(config).state_dict())
    rules = [(re.compile(pattern), axes) for pattern, axes in _axis_rules(config)]
    axes: dict[str, tuple[Axis | None, ...]] = {}
    for name in names:
        for pattern, rule in rules:
            match = pattern.fullmatch(name)
            if match:
                axes[name] = _axes(rule(match) if callable(rule) else rule)
                break
        else:
            raise MergeError(f"no permutation rule for weight '{name}': not a HuBERT-architecture encoder?")
    return PermutationSpec(_groups(config), axes, config.num_hidden_layers)


def identity_permutations(spec: PermutationSpec, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    return {name: torch.arange(spec.groups[name].size) for name in names or spec.groups}


def blocked_permutation(block_order: torch.Tensor, within: list[torch.Tensor], block: int) -> torch.Tensor:
    """Compose a block order (new block b = old block block_order[b]) with per-new-block inner orders."""
    return torch.cat([block_order[b] * block + within[b] for b in range(len(block_order))])


def random_permutations(
    spec: PermutationSpec, components: tuple[str, ...] = COMPONENTS, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Random valid permutations for the groups of the chosen components (blocks and ties respected)."""
    perms: dict[str, torch.Tensor] = {}
    block_orders: dict[str, torch.Tensor] = {}
    for name in spec.select(components):
        group = spec.groups[name]
        n_blocks = group.size // group.block
        if group.tied_blocks:
            order = block_orders[group.tied_blocks]
        else:
            order = torch.randperm(n_blocks, generator=generator)
        block_orders[name] = order
        within = [torch.randperm(group.block, generator=generator) for _ in range(n_blocks)]
        perms[name] = blocked_permutation(order, within, group.block)
    return perms


def check_permutation(group: PermGroup, perm: torch.Tensor) -> None:
    """Raise MergeError unless `perm` is a permutation of the group that moves whole blocks."""
    if perm.shape != (group.size,) or not torch.equal(torch.sort(perm).values, torch.arange(group.size)):
        raise MergeError(f"'{group.name}' needs a permutation of {group.size} units")
    blocks = perm.view(-1, group.block) // group.block
    if not (blocks == blocks[:, :1]).all():
        raise MergeError(f"'{group.name}' must move whole blocks of {group.block} units")


def invert(perm: torch.Tensor) -> torch.Tensor:
    return torch.argsort(perm)


def _local_index(perm: torch.Tensor, block: int) -> torch.Tensor:
    """For each new unit's block, the old within-block index of every position of that block."""
    return perm.view(-1, block) % block


def apply_permutations(state: StateDict, spec: PermutationSpec, perms: dict[str, torch.Tensor]) -> StateDict:
    """A new state dict with `perms` applied; groups missing from `perms` stay as they are.

    Untouched tensors are shared with the input, not copied: treat the result as read-only, like
    the input. The input is never modified.
    """
    for name, perm in perms.items():
        if name not in spec.groups:
            raise MergeError(f"unknown permutation group '{name}'")
        check_permutation(spec.groups[name], perm)
    out: StateDict = {}
    for name, tensor in state.items():
        axes = spec.axes.get(name)
        if axes is None:
            raise MergeError(f"weight '{name}' is not in the permutation spec")
        for index, axis in enumerate(axes):
            perm = perms.get(axis.group) if axis is not None else None
            if perm is None:
                continue
            perm = perm.to(tensor.device)
            if axis.within_blocks:
                block = spec.groups[axis.group].block
                rows = _local_index(perm, block).repeat_interleave(block, dim=0)  # (out, block)
                tensor = torch.gather(tensor, index, rows.view(*rows.shape, *([1] * (tensor.dim() - 2))).expand_as(tensor))
            else:
                tensor = tensor.index_select(index, perm)
        out[name] = tensor
    return out
