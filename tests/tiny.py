"""Tiny HuBERT-architecture configs and models for fast behaviour tests."""
from __future__ import annotations

import torch
from transformers import HubertConfig, HubertModel


def tiny_config(**overrides) -> HubertConfig:
    """A ~50k-parameter HubertConfig; keyword overrides change any field."""
    fields = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
    )
    fields.update(overrides)
    return HubertConfig(**fields)


TINY_VARIANTS = {
    "group-norm": {},
    "layer-norm": dict(feat_extract_norm="layer", conv_bias=True),
    "stable-layer-norm": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
    "heads-2-groups-2": dict(num_attention_heads=2, num_conv_pos_embedding_groups=2),
    "heads-8-groups-8-three-layers": dict(
        hidden_size=64, num_attention_heads=8, num_conv_pos_embedding_groups=8, num_hidden_layers=3
    ),
}


def tiny_model(config: HubertConfig | None = None, seed: int = 0) -> HubertModel:
    """A randomly initialised HubertModel in eval mode, with non-trivial norm weights and biases."""
    torch.manual_seed(seed)
    model = HubertModel(config or tiny_config()).eval()
    with torch.no_grad():  # default init leaves LayerNorms at 1/0, which would hide permutation bugs
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias") or name == "masked_spec_embed":
                param.add_(0.1 * torch.randn_like(param))
    return model
