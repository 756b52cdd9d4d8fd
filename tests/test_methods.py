import math

import pytest
import torch

from merging.methods import METHODS, Param, dare, drm, linear, linear_into, merge, register, speech_ft, task_arithmetic, ties
from merging.state import MergeError, state_checksum
from tiny import TINY_VARIANTS, tiny_config, tiny_model


def state(seed, **overrides):
    return {name: t.clone() for name, t in tiny_model(tiny_config(**overrides), seed=seed).state_dict().items()}


@pytest.fixture(scope="module")
def models():
    return {"speech": state(0), "music": state(1), "base": state(2)}


class Unpermuted:
    """A stand-in alignment for `permute` that leaves the music weights in their order."""

    def apply(self, music):
        return music


def required(method):
    """The parameters a method cannot run without."""
    return {"alignment": Unpermuted()} if method == "permute" else {}


def roles_for(method, models):
    names = {"pretrained": "speech", "finetuned": "music"}
    return {role: models[names.get(role, role)] for role in METHODS[method].inputs}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def assert_close(a, b, **tol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name, **tol)


def in_layer(name, layer):
    return name.startswith(f"encoder.layers.{layer}.")


# ---- linear -------------------------------------------------------------------------------------

def test_linear_endpoints_are_bitwise_and_midpoint_is_the_mean(models):
    speech, music = models["speech"], models["music"]
    assert_same(linear(speech, music, alpha=0), speech)
    assert_same(linear(speech, music, alpha=1), music)
    assert_close(linear(speech, music, alpha=0.5), {k: (speech[k] + music[k]) / 2 for k in speech})
    assert_close(linear(speech, music, alpha=0.3), {k: 0.7 * speech[k] + 0.3 * music[k] for k in speech})
    assert all(linear(speech, music, alpha=0)[k] is not speech[k] for k in speech)  # a new dict of new tensors


def test_layer_alphas_affect_only_their_layer():
    config = TINY_VARIANTS["heads-8-groups-8-three-layers"]
    speech, music = state(0, **config), state(1, **config)
    merged = linear(speech, music, alpha=0.5, layer_alphas=[0.0, 1.0, 0.25])
    seen = set()
    for name in speech:
        expected = {0: speech[name], 1: music[name], 2: 0.75 * speech[name] + 0.25 * music[name]}
        layer = next((l for l in range(3) if in_layer(name, l)), None)
        seen.add(layer)
        if layer in (0, 1):
            assert torch.equal(merged[name], expected[layer]), name
        else:
            want = expected[2] if layer == 2 else (speech[name] + music[name]) / 2
            torch.testing.assert_close(merged[name], want, msg=name)
    assert seen == {None, 0, 1, 2}  # CNN, projection, positional conv, norms are outside every layer


def test_layer_alphas_of_the_wrong_length_or_range_are_refused(models):
    speech, music = models["speech"], models["music"]
    with pytest.raises(MergeError, match="3 values but the model has 2 transformer layers"):
        linear(speech, music, layer_alphas=[0.1, 0.2, 0.3])
    with pytest.raises(MergeError, match="alpha"):
        linear(speech, music, layer_alphas=[0.1, 1.5])


def test_linear_into_reuses_the_buffers_and_matches_linear(models):
    speech, music = models["speech"], models["music"]
    out = {k: torch.empty_like(v) for k, v in speech.items()}
    pointers = {k: v.data_ptr() for k, v in out.items()}
    for alpha, layer_alphas in [(0.3, None), (0.0, None), (1.0, None), (0.5, [1.0, 0.2])]:
        result = linear_into(out, speech, music, alpha=alpha, layer_alphas=layer_alphas)
        assert result is out and {k: v.data_ptr() for k, v in out.items()} == pointers
        assert_same(out, linear(speech, music, alpha=alpha, layer_alphas=layer_alphas))
    wrong = dict(out, **{"masked_spec_embed": out["masked_spec_embed"].double()})
    with pytest.raises(MergeError, match="masked_spec_embed"):
        linear_into(wrong, speech, music, alpha=0.5)
    with pytest.raises(MergeError, match="out"):
        linear_into({k: v for k, v in out.items() if k != "masked_spec_embed"}, speech, music, alpha=0.5)


def test_a_sum_that_overflows_is_not_mistaken_for_a_non_finite_input():
    big = {"w": torch.full((8,), 60000.0, dtype=torch.float16)}  # finite, but its float16 sum is inf
    torch.testing.assert_close(linear(big, big, alpha=0.5)["w"], big["w"])
    assert_same(task_arithmetic(big, big, big), big)


def test_dtype_of_the_first_input_is_kept_and_integer_tensors_are_copied_from_it():
    first = {"w": torch.randn(4, 3, dtype=torch.float16), "count": torch.tensor([3, 4])}
    others = [{"w": torch.randn(4, 3), "count": torch.tensor([7, 8])} for _ in range(2)]
    for method in METHODS:
        inputs = dict(zip(METHODS[method].inputs, [first, *others]))
        merged = merge(method, inputs, **required(method))
        assert merged["w"].dtype == torch.float16 and torch.isfinite(merged["w"]).all(), method
        assert torch.equal(merged["count"], first["count"]) and merged["count"] is not first["count"], method
    into = linear_into({k: torch.empty_like(v) for k, v in first.items()}, first, others[0], alpha=0.5)
    assert torch.equal(into["count"], first["count"]) and into["w"].dtype == torch.float16


def test_every_method_written_into_buffers_equals_its_pure_merge(models):
    written = [name for name, method in METHODS.items() if method.into is not None]
    assert {"linear", "permute", "speech_ft"} <= set(written)
    for name in written:
        method, inputs = METHODS[name], roles_for(name, models)
        params = {**required(name), "alpha": 0.3}
        out = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else torch.zeros_like(v)
               for k, v in inputs[method.inputs[0]].items()}
        result = method.into(out, *(inputs[r] for r in method.inputs), **method.arguments(params))
        assert result is out, name
        assert_close(out, merge(name, inputs, **params), rtol=1e-6, atol=1e-6)


def test_permute_interpolates_toward_the_aligned_music_weights(models):
    from merging.spec import hubert_spec, random_permutations, apply_permutations

    class Shuffled:
        spec = hubert_spec(tiny_config())
        perms = random_permutations(spec, ("cnn", "ffn", "attn"), torch.Generator().manual_seed(5))

        def apply(self, music):
            return apply_permutations(music, self.spec, self.perms)

    speech, music, alignment = models["speech"], models["music"], Shuffled()
    aligned = alignment.apply(music)
    assert_same(merge("permute", {"speech": speech, "music": music}, alignment=alignment, alpha=1), aligned)
    assert_same(merge("permute", {"speech": speech, "music": music}, alignment=alignment, alpha=0), speech)
    assert_close(merge("permute", {"speech": speech, "music": music}, alignment=alignment, alpha=0.3),
                 linear(speech, aligned, alpha=0.3))
    with pytest.raises(MergeError, match="needs an alignment of its music input"):
        merge("permute", {"speech": speech, "music": music})


# ---- task arithmetic ----------------------------------------------------------------------------

def test_task_arithmetic_exact_corners_and_formula(models):
    base, speech, music = models["base"], models["speech"], models["music"]
    assert_same(task_arithmetic(base, speech, music, lambda_speech=0, lambda_music=0), base)
    assert_same(task_arithmetic(base, speech, music, lambda_speech=1, lambda_music=0), speech)
    assert_same(task_arithmetic(base, speech, music, lambda_speech=0, lambda_music=1), music)
    merged = task_arithmetic(base, speech, music, lambda_speech=0.7, lambda_music=-0.4)
    assert_close(merged, {k: base[k] + 0.7 * (speech[k] - base[k]) - 0.4 * (music[k] - base[k]) for k in base})


def test_task_arithmetic_layer_lambdas(models):
    base, speech, music = models["base"], models["speech"], models["music"]
    merged = task_arithmetic(base, speech, music, lambda_speech=0.5, lambda_music=0.5, layer_lambdas=[(0, 0), (1, 0)])
    for name in base:
        if in_layer(name, 0):
            assert torch.equal(merged[name], base[name]), name
        elif in_layer(name, 1):
            assert torch.equal(merged[name], speech[name]), name
        else:
            torch.testing.assert_close(merged[name], (speech[name] + music[name]) / 2, msg=name)
    with pytest.raises(MergeError, match="1 values but the model has 2"):
        task_arithmetic(base, speech, music, layer_lambdas=[(0.5, 0.5)])
    with pytest.raises(MergeError, match="pairs"):
        task_arithmetic(base, speech, music, layer_lambdas=[0.5, 0.5])
    with pytest.raises(MergeError, match=r"layer_lambdas music must be a number in \[-1, 2\]"):
        task_arithmetic(base, speech, music, layer_lambdas=[(0.5, 0.5), (0.5, 2.5)])


# ---- ties ---------------------------------------------------------------------------------------

def vectors(base, *deltas):
    return [{"w": base.clone()}] + [{"w": base + torch.tensor(d)} for d in deltas]


def test_ties_hand_computed_trim_elect_disjoint_mean():
    base = torch.arange(6.0)
    # density 0.5 keeps 3 of 6 entries of each task vector (one tensor: the whole vector):
    #   τs = [3, -.1, .2, 2, -4, .3] -> [3, 0, 0, 2, -4, 0];  τm = [1, 2, -.5, -3, .1, .2] -> [1, 2, 0, -3, 0, 0]
    # with λ = (1, 2): λ·τ̂ sums [5, 4, 0, -4, -4, 0] elect signs + + + - - +
    #   entry 0: both agree -> (3 + 2·1)/2;  entry 1: music only -> 2·2;  entry 2: both trimmed -> 0
    #   entry 3: speech (+2) disagrees, music agrees -> 2·(-3);  entry 4: speech only -> -4
    inputs = vectors(base, [3, -0.1, 0.2, 2, -4, 0.3], [1, 2, -0.5, -3, 0.1, 0.2])
    merged = ties(*inputs, lambda_speech=1, lambda_music=2, density=0.5)
    torch.testing.assert_close(merged["w"] - base, torch.tensor([2.5, 4, 0, -6, -4, 0]))
    untrimmed = ties(*inputs, lambda_speech=1, lambda_music=1, density=1)
    # sums [4, 1.9, -.3, -1, -3.9, .5] elect + + - - - +: only entries 0 and 5 have two agreeing models
    torch.testing.assert_close(untrimmed["w"] - base, torch.tensor([2, 2, -0.5, -3, -4, 0.25]))
    # mergekit's form: Σ λ·τ̂ / Σ λ over the agreeing models, so the λs are relative weights
    normalised = ties(*inputs, lambda_speech=1, lambda_music=2, density=0.5, trim="per_tensor")
    torch.testing.assert_close(normalised["w"] - base, torch.tensor([5 / 3, 2, 0, -3, -4, 0]))
    halved = ties(*inputs, lambda_speech=0.5, lambda_music=1, density=0.5, trim="per_tensor")
    torch.testing.assert_close(halved["w"], normalised["w"])


def test_ties_of_identical_task_vectors_is_that_model_and_of_no_change_is_the_base(models):
    base, speech = models["base"], models["speech"]
    assert_close(ties(base, speech, speech, density=1.0), speech)
    assert_same(ties(base, base, base), base)
    floating = [name for name in base if base[name].is_floating_point()]
    for trim in ("task_vector", "per_tensor"):
        merged = ties(base, speech, base, density=0.2, trim=trim)
        changed = {name: (merged[name] != base[name]).float() for name in floating}
        overall = sum(c.sum() for c in changed.values()) / sum(c.numel() for c in changed.values())
        assert abs(overall.item() - 0.2) < 0.01, trim
        if trim == "per_tensor":  # every tensor on its own
            assert abs(changed["encoder.layers.0.feed_forward.intermediate_dense.weight"].mean().item() - 0.2) < 0.01


# ---- dare ---------------------------------------------------------------------------------------

def test_dare_is_reproducible_per_seed_and_independent_of_global_rng(models):
    base, speech, music = models["base"], models["speech"], models["music"]
    torch.manual_seed(1)
    first = dare(base, speech, music, seed=5)
    torch.manual_seed(2)
    assert_same(dare(base, speech, music, seed=5), first)
    other = dare(base, speech, music, seed=6)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_dare_drop_zero_is_task_arithmetic_and_survivors_are_rescaled(models):
    base, speech, music = models["base"], models["speech"], models["music"]
    assert_same(dare(base, speech, music, lambda_speech=0.3, lambda_music=0.6, drop=0),
                task_arithmetic(base, speech, music, lambda_speech=0.3, lambda_music=0.6))
    name = "encoder.layers.1.feed_forward.output_dense.weight"
    delta = dare(base, speech, base, lambda_speech=0.5, drop=0.9, seed=1)[name] - base[name]
    kept = delta != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.02
    torch.testing.assert_close(delta[kept], 0.5 * (speech[name] - base[name])[kept] / 0.1)


def test_dare_masks_differ_between_tensors_and_models():
    base = {"a": torch.zeros(64), "b": torch.zeros(64)}
    ones = {"a": torch.ones(64), "b": torch.ones(64)}
    merged = dare(base, ones, base, lambda_speech=1, drop=0.5, seed=0)
    assert not torch.equal(merged["a"], merged["b"])  # same data, different names: different masks
    both = dare(base, ones, ones, lambda_speech=1, lambda_music=1, drop=0.5, seed=0)["a"]
    assert set(both.unique().tolist()) == {0.0, 2.0, 4.0}  # speech and music masks are independent


def test_dare_expected_value_is_task_arithmetic():
    g = torch.Generator().manual_seed(0)
    base, speech, music = ({"w": torch.randn(300, generator=g)} for _ in range(3))
    expected = task_arithmetic(base, speech, music, lambda_speech=0.6, lambda_music=0.4)["w"]
    runs = torch.stack([dare(base, speech, music, lambda_speech=0.6, lambda_music=0.4, drop=0.5, seed=s)["w"] for s in range(400)])
    sigma = ((0.6 * (speech["w"] - base["w"])) ** 2 + (0.4 * (music["w"] - base["w"])) ** 2).sqrt() / math.sqrt(400)
    assert ((runs.mean(0) - expected).abs() < 5 * sigma + 1e-6).all()


# ---- drm ----------------------------------------------------------------------------------------

def test_drm_with_one_task_vector_zero_reconstructs_the_other(models):
    base, speech = models["base"], models["speech"]
    merged = drm(base, speech, base, lambda_speech=0.7, density=1.0, rank_tol=0.0)
    assert_close(merged, {k: base[k] + 0.7 * (speech[k] - base[k]) for k in base}, atol=1e-5, rtol=1e-5)
    assert_same(drm(base, base, base), base)
    assert_close(drm(base, speech, speech, density=1.0, rank_tol=0.0), speech, atol=1e-5, rtol=1e-5)


def test_drm_ignores_a_model_with_zero_weight(models):
    base, speech, music = models["base"], models["speech"], models["music"]
    assert_same(drm(base, speech, music, lambda_music=0, density=0.3), drm(base, speech, base, density=0.3))


def matrix_case(ds, dm, **params):
    zero = torch.zeros_like(torch.tensor(ds, dtype=torch.float32))
    base, speech, music = vectors(zero, ds, dm)
    return drm(base, speech, music, **{"density": 1.0, **params})["w"]


def test_drm_hand_checkable_matrices():
    e00 = [[1.0, 0, 0], [0, 0, 0]]
    scaled = lambda c: [[c * x for x in row] for row in e00]  # noqa: E731
    # rank one: both deltas live on one joint component; the larger λ-weighted mass wins the sign
    torch.testing.assert_close(matrix_case(scaled(3), scaled(-1)), torch.tensor(scaled(3.0)))
    torch.testing.assert_close(matrix_case(scaled(3), scaled(-1), lambda_speech=0.5, lambda_music=2),
                               torch.tensor(scaled(-2.0)))
    torch.testing.assert_close(matrix_case(scaled(3), scaled(1)), torch.tensor(scaled(2.0)))  # agreement: mean
    # orthogonal task vectors do not interfere: they are added, not averaged
    torch.testing.assert_close(matrix_case([[3.0, 0], [0, 0]], [[0, 0], [0, 2.0]], lambda_speech=0.5),
                               torch.tensor([[1.5, 0], [0, 2.0]]))
    # components below rank_tol·S_max are dropped
    small = [[1.0, 0], [0, 0.005]]
    torch.testing.assert_close(matrix_case(small, [[0, 0], [0, 0.0]]), torch.tensor([[1.0, 0], [0, 0]]))
    torch.testing.assert_close(matrix_case(small, [[0, 0], [0, 0.0]], rank_tol=0.0), torch.tensor(small))


def test_drm_prunes_in_the_renormalised_basis():
    # Δ = diag(10, 1)·R: U = I, S = (10, 1), Vᵀ = R. Keeping half the entries of V̂ᵀ = R keeps its diagonal
    # (cos > sin) in both rows, so the weak component survives; pruning diag(S)·Vᵀ instead would drop it.
    c, s = math.cos(0.3), math.sin(0.3)
    delta = [[10 * c, 10 * s], [-s, c]]
    merged = matrix_case(delta, [[0, 0], [0, 0.0]], density=0.5)
    torch.testing.assert_close(merged, torch.tensor([[10 * c, 0], [0, c]]))


def test_drm_vectors_use_sign_election_and_disjoint_mean():
    base, speech, music = vectors(torch.zeros(4), [1, -2, 0, 3], [1, 1, 2, -1])
    torch.testing.assert_close(drm(base, speech, music)["w"], torch.tensor([1.0, -2, 2, 3]))
    # λ = (1, 2): masses [3, 0, 4, 1]; a zero mass elects +, so entry 1 keeps music's 2
    torch.testing.assert_close(drm(base, speech, music, lambda_music=2)["w"], torch.tensor([1.5, 2, 4, 3]))


# ---- speech_ft ----------------------------------------------------------------------------------

def test_speech_ft_interpolates_toward_the_finetuned_model(models):
    pretrained, finetuned = models["speech"], models["music"]
    assert_same(speech_ft(pretrained, finetuned, alpha=0), pretrained)
    assert_same(speech_ft(pretrained, finetuned, alpha=1), finetuned)
    assert_close(speech_ft(pretrained, finetuned), {k: pretrained[k] + 0.25 * (finetuned[k] - pretrained[k]) for k in pretrained})


# ---- every method -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_inputs_are_never_mutated(method, models):
    inputs = roles_for(method, models)
    before = {role: state_checksum(s) for role, s in inputs.items()}
    merge(method, inputs, **required(method))
    assert {role: state_checksum(s) for role, s in inputs.items()} == before


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused_naming_the_tensor(method, bad, models):
    name = "encoder.layers.1.attention.k_proj.weight"
    for role in METHODS[method].inputs:
        inputs = dict(roles_for(method, models))
        inputs[role] = dict(inputs[role], **{name: inputs[role][name].clone()})
        inputs[role][name][0, 0] = bad
        for params in [{}] + ([{"alpha": 0}, {"alpha": 1}] if "alpha" in METHODS[method].defaults else []):
            with pytest.raises(MergeError, match=f"{role}.*{name}.*NaN or Inf"):
                merge(method, inputs, **params, **required(method))


@pytest.mark.parametrize("method", list(METHODS))
def test_mismatched_keys_and_shapes_are_refused(method, models):
    inputs = roles_for(method, models)
    last = METHODS[method].inputs[-1]
    missing = {k: v for k, v in inputs[last].items() if k != "masked_spec_embed"}
    with pytest.raises(MergeError, match="masked_spec_embed"):
        merge(method, {**inputs, last: missing}, **required(method))
    reshaped = dict(inputs[last], masked_spec_embed=torch.zeros(7))
    with pytest.raises(MergeError, match=r"masked_spec_embed.*shape"):
        merge(method, {**inputs, last: reshaped}, **required(method))
    with pytest.raises(MergeError, match="has weight .extra.weight."):
        merge(method, {**inputs, last: {**inputs[last], "extra.weight": torch.zeros(1)}}, **required(method))


OUT_OF_RANGE = {
    "linear": [{"alpha": -0.1}, {"alpha": 1.01}, {"alpha": float("nan")}, {"alpha": "half"}],
    "permute": [{"alpha": -0.1}, {"alpha": 1.5}],
    "task_arithmetic": [{"lambda_speech": -1.5}, {"lambda_music": 2.5}],
    "ties": [{"density": 0}, {"density": 1.2}, {"lambda_speech": -0.5}, {"lambda_music": 3}],
    "dare": [{"drop": 1.0}, {"drop": -0.1}, {"lambda_music": 2.1}, {"seed": 1.5}],
    "drm": [{"density": 0}, {"density": 1.5}, {"rank_tol": 1}, {"rank_tol": -0.1}, {"lambda_speech": -2}],
    "speech_ft": [{"alpha": -0.5}, {"alpha": 2}],
}


@pytest.mark.parametrize("method, params", [(m, p) for m, cases in OUT_OF_RANGE.items() for p in cases])
def test_out_of_range_parameters_are_refused(method, params, models):
    with pytest.raises(MergeError, match=next(iter(params))):
        merge(method, roles_for(method, models), **params, **required(method))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", list(METHODS))
def test_cuda_merges_match_cpu_and_refuse_nan(method, models):
    inputs = roles_for(method, models)
    cuda = {role: {k: v.cuda() for k, v in s.items()} for role, s in inputs.items()}
    params = {"density": 0.5} if "density" in METHODS[method].defaults else {}
    params |= required(method)
    on_cpu, on_cuda = merge(method, inputs, **params), merge(method, cuda, **params)
    assert all(t.is_cuda for t in on_cuda.values())
    assert_close({k: v.cpu() for k, v in on_cuda.items()}, on_cpu, atol=1e-4, rtol=1e-4)
    if method == "linear":
        out = {k: torch.empty_like(v) for k, v in cuda["speech"].items()}
        assert_same(linear_into(out, cuda["speech"], cuda["music"], alpha=0.5), on_cuda)
    last = METHODS[method].inputs[-1]
    bad = dict(cuda[last], masked_spec_embed=cuda[last]["masked_spec_embed"].clone())
    bad["masked_spec_embed"][3] = float("nan")
    with pytest.raises(MergeError, match="masked_spec_embed"):
        merge(method, {**cuda, last: bad}, **required(method))


# ---- registry -----------------------------------------------------------------------------------

def test_registry_describes_and_dispatches(models):
    assert set(METHODS) >= {"linear", "task_arithmetic", "ties", "dare", "drm", "speech_ft"}
    assert METHODS["linear"].inputs == ("speech", "music") and METHODS["linear"].defaults == {"alpha": 0.5, "layer_alphas": None}
    assert METHODS["drm"].inputs == ("base", "speech", "music") and METHODS["speech_ft"].inputs == ("pretrained", "finetuned")
    assert all(m.description for m in METHODS.values())
    assert_same(merge("linear", {"speech": models["speech"], "music": models["music"]}, alpha=0.2),
                linear(models["speech"], models["music"], alpha=0.2))


def test_registry_refuses_unknown_methods_roles_and_parameters(models):
    pair = {"speech": models["speech"], "music": models["music"]}
    with pytest.raises(MergeError, match="unknown merge method 'slerp'.*linear.*drm"):
        merge("slerp", pair)
    with pytest.raises(MergeError, match="base, speech, music, but 'base' is missing"):
        merge("ties", pair)
    with pytest.raises(MergeError, match="speech, music, not 'base'"):
        merge("linear", {**pair, "base": models["base"]})
    with pytest.raises(MergeError, match="no parameter 'density'.*alpha, layer_alphas"):
        merge("linear", pair, density=0.5)


def test_register_adds_a_method_from_outside(models):
    shift = Param("shift", 0.0, "added to every weight", "shift", low=-1, high=1)

    @register("test_pick", "the music weights, for the test", params=(shift,), paper="none")
    def pick(speech, music, *, shift):
        return {k: v + shift for k, v in music.items()}

    try:
        assert METHODS["test_pick"].inputs == ("speech", "music") and METHODS["test_pick"].defaults == {"shift": 0.0}
        pair = {"speech": models["speech"], "music": models["music"]}
        assert_same(merge("test_pick", pair), models["music"])  # the declared default filled in
        assert_close(pick(models["speech"], models["music"], shift=0.5), {k: v + 0.5 for k, v in models["music"].items()})
        with pytest.raises(MergeError, match=r"shift must be a number in \[-1, 1\], got 2"):
            pick(models["speech"], models["music"], shift=2)  # the decorated function checks its arguments too
        with pytest.raises(ValueError, match="already registered"):
            register("linear", "another linear", params=(shift,))(pick)
    finally:
        METHODS.pop("test_pick")


def test_register_refuses_a_signature_that_differs_from_the_declared_parameters():
    shift = Param("shift", 0.0, "added to every weight")
    with pytest.raises(ValueError, match="differ from the declared"):
        register("test_bad", "undeclared scale", params=(shift,))(lambda speech, music, *, shift, scale: music)
    with pytest.raises(ValueError, match="aligns 'base'"):
        register("test_bad", "aligns an input it lacks", aligns="base")(lambda speech, music, *, alignment: music)
    with pytest.raises(ValueError, match="default 'x' is not one of its choices"):
        Param("mode", "x", "a choice", kind="choice", choices=("a", "b"))
    assert "test_bad" not in METHODS


def test_method_arguments_keep_a_methods_own_controls_and_refuse_a_set_optional_one():
    from merging.methods import method_arguments

    controls = {"alpha": 0.3, "lambda_speech": 0.7, "lambda_music": 0.2, "layer_alphas": None}
    assert method_arguments("linear", controls) == {"alpha": 0.3}
    assert method_arguments("dare", controls) == {"lambda_speech": 0.7, "lambda_music": 0.2}
    assert method_arguments("permute", {**controls, "layer_alphas": [0.1, 0.2]}) == {"alpha": 0.3, "layer_alphas": [0.1, 0.2]}
    assert method_arguments("ties", {**controls, "layer_alphas": []}) == {"lambda_speech": 0.7, "lambda_music": 0.2}
    with pytest.raises(MergeError, match="per-layer α applies to linear and permute, not to ties: clear it"):
        method_arguments("ties", {**controls, "layer_alphas": [0.1]})
    with pytest.raises(MergeError, match=r"lambda_speech must be a number in \[0, 2\], got -0.5"):
        method_arguments("ties", {"lambda_speech": -0.5})
    with pytest.raises(MergeError, match="unknown merge method 'average'"):
        method_arguments("average", controls)
