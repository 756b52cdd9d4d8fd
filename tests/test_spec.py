import pytest
import torch

from merging.spec import (
    COMPONENTS, KINDS, apply_permutations, hubert_spec, identity_permutations, invert, random_permutations,
)
from merging.state import MergeError, state_checksum
from tiny import TINY_VARIANTS, tiny_config, tiny_model

AUDIO = torch.randn(2, 6400, generator=torch.Generator().manual_seed(0))


def hidden_states(model, audio=AUDIO):
    with torch.no_grad():
        return model(audio, output_hidden_states=True).hidden_states


def permuted_model(model, perms):
    spec = hubert_spec(model.config)
    clone = type(model)(model.config).eval()
    clone.load_state_dict(apply_permutations(model.state_dict(), spec, perms))
    return clone


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_spec_covers_every_weight_and_axis_sizes_match(variant):
    model = tiny_model(tiny_config(**TINY_VARIANTS[variant]))
    spec = hubert_spec(model.config)
    state = model.state_dict()
    assert set(spec.axes) == set(state)
    for name, axes in spec.axes.items():
        assert len(axes) == state[name].dim(), name
        for index, axis in enumerate(axes):
            if axis is not None:
                group = spec.groups[axis.group]
                expected = group.block if axis.within_blocks else group.size
                assert state[name].shape[index] == expected, (name, index)


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
@pytest.mark.parametrize("seed", [0, 1])
def test_random_permutations_keep_hidden_states_up_to_residual_order(variant, seed):
    model = tiny_model(tiny_config(**TINY_VARIANTS[variant]), seed=seed)
    spec = hubert_spec(model.config)
    perms = random_permutations(spec, generator=torch.Generator().manual_seed(seed))
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    before, after = hidden_states(model), hidden_states(permuted_model(model, perms))
    for layer, (a, b) in enumerate(zip(before, after)):
        # sorted channels: a permutation-free comparison
        torch.testing.assert_close(a.sort(-1).values, b.sort(-1).values, atol=1e-4, rtol=0, msg=f"layer {layer}")
        torch.testing.assert_close(a[..., perms["res"]], b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("components", [("cnn",), ("ffn",), ("attn",), ("cnn", "ffn", "attn")])
def test_without_residual_permutation_hidden_states_are_identical(components):
    model = tiny_model()
    perms = random_permutations(hubert_spec(model.config), components, torch.Generator().manual_seed(3))
    for a, b in zip(hidden_states(model), hidden_states(permuted_model(model, perms))):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_breaking_a_rule_changes_the_outputs():
    """The invariance test must be able to fail: a residual order that splits conv groups breaks it."""
    model = tiny_model()
    spec = hubert_spec(model.config)
    perms = random_permutations(spec, ("ffn",), torch.Generator().manual_seed(0))
    bad = torch.arange(spec.groups["res"].size)
    bad[[0, -1]] = bad[[-1, 0]]  # swaps units across two conv groups
    with pytest.raises(MergeError, match="whole blocks"):
        apply_permutations(model.state_dict(), spec, {"res": bad})
    # the same swap applied without the local rule (plain index on every axis) changes hidden states
    state = model.state_dict()
    conv = "encoder.pos_conv_embed.conv.parametrizations.weight.original1"
    wrong = dict(apply_permutations(state, spec, perms))
    wrong[conv] = state[conv].flip(1)
    clone = type(model)(model.config).eval()
    clone.load_state_dict(wrong)
    assert (hidden_states(model)[-1] - hidden_states(clone)[-1]).abs().max() > 1e-2


def test_inverse_restores_the_state_exactly_and_input_is_untouched():
    model = tiny_model()
    spec = hubert_spec(model.config)
    state = model.state_dict()
    checksum = state_checksum(state)
    perms = random_permutations(spec, generator=torch.Generator().manual_seed(5))
    permuted = apply_permutations(state, spec, perms)
    assert state_checksum(state) == checksum
    assert state_checksum(permuted) != checksum
    restored = apply_permutations(permuted, spec, {k: invert(p) for k, p in perms.items()})
    assert state_checksum(restored) == checksum
    assert state_checksum(apply_permutations(state, spec, identity_permutations(spec))) == checksum


def test_attention_heads_move_as_blocks_shared_by_qk_and_vo():
    spec = hubert_spec(tiny_config())
    perms = random_permutations(spec, ("attn",), torch.Generator().manual_seed(1))
    head = spec.groups["attn0.qk"].block
    assert torch.equal(perms["attn0.qk"].view(-1, head)[:, 0] // head, perms["attn0.vo"].view(-1, head)[:, 0] // head)


def test_bad_permutations_and_unknown_groups_are_refused():
    spec = hubert_spec(tiny_config())
    state = tiny_model().state_dict()
    with pytest.raises(MergeError, match="unknown permutation group"):
        apply_permutations(state, spec, {"nope": torch.arange(3)})
    with pytest.raises(MergeError, match="needs a permutation"):
        apply_permutations(state, spec, {"ffn0": torch.zeros(64, dtype=torch.long)})
    with pytest.raises(MergeError, match="unknown component"):
        spec.select(("cnn", "bogus"))
    assert set(COMPONENTS) == {g.component for g in spec.groups.values()}


def test_groups_carry_their_component_kind_and_layer():
    config = tiny_config(num_hidden_layers=3)
    spec = hubert_spec(config)
    for name, group in spec.groups.items():
        assert group.kind in KINDS and group.name == name
        if group.kind == "res":
            assert group.layer is None and group.component == "res"
        elif group.kind == "conv":
            assert group.component == "cnn" and group.size == config.conv_dim[group.layer]
        else:
            assert 0 <= group.layer < 3 and group.component == ("ffn" if group.kind == "ffn" else "attn")
    assert {(g.kind, g.layer) for g in spec.groups.values() if g.component == "attn"} == {
        (kind, layer) for kind in ("qk", "vo") for layer in range(3)}
    assert spec.groups["attn2.vo"].tied_blocks == "attn2.qk"
