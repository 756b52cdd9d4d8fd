"""The task-vector methods against their papers and the authors' code, re-implemented here independently."""
import pytest
import torch

from merging.methods import dare, drm, merge, task_arithmetic, ties
from tiny import tiny_config, tiny_model


def vec(*values):
    return torch.tensor(values, dtype=torch.float32)


@pytest.fixture(scope="module")
def students():
    states = [{k: v.clone() for k, v in tiny_model(tiny_config(), seed=seed).state_dict().items()} for seed in (0, 1, 2)]
    base = states[2]
    g = torch.Generator().manual_seed(3)  # students near a shared base, as task vectors are
    speech, music = ({k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
                      for k, v in base.items()} for _ in range(2))
    return {"base": base, "speech": speech, "music": music}


def sign_elected_mean(parts):
    """Per entry: the sign of the parts' sum is elected (+ for a zero sum); the mean of the agreeing parts."""
    elected = torch.where(parts.sum(0) >= 0, 1.0, -1.0)
    agreeing = parts * (parts.sign() == elected)
    return agreeing.sum(0) / (agreeing != 0).sum(0).clamp(min=1)


# ---- TIES ---------------------------------------------------------------------------------------

def test_ties_hand_case_trims_each_task_vector_as_a_whole():
    """density 0.5 over the 8 entries of each task vector: speech keeps its `a`, music its `b`."""
    base = {"a": torch.zeros(4), "b": torch.zeros(4)}
    speech = {"a": vec(4, -3, 2, 1), "b": vec(0.04, -0.03, 0.02, 0.01)}
    music = {"a": vec(-0.01, 0.03, 0.01, -0.02), "b": vec(-1, 3, 1, -2)}
    inputs = {"base": base, "speech": speech, "music": music}
    merged = merge("ties", inputs, density=0.5)
    torch.testing.assert_close(merged["a"], vec(4, -3, 2, 1))
    torch.testing.assert_close(merged["b"], vec(-1, 3, 1, -2))
    doubled = merge("ties", inputs, density=0.5, lambda_speech=2, lambda_music=2)
    torch.testing.assert_close(doubled["a"], vec(8, -6, 4, 2))
    torch.testing.assert_close(doubled["b"], vec(-2, 6, 2, -4))
    per_tensor = merge("ties", inputs, density=0.5, trim="per_tensor")  # mergekit's form: each tensor's top half
    torch.testing.assert_close(per_tensor["a"], vec(4, -3, 0, -0.02))


def official_ties(base, models, density):
    """The official TIES code's steps on flattened task vectors: top-k mask per task vector (here keeping
    round(density·n) entries), sign by mass, disjoint mean; θ = base + merged."""
    names = list(base)
    flat = torch.stack([torch.cat([(m[n] - base[n]).flatten() for n in names]) for m in models])
    keep = round(density * flat.shape[1])
    thresholds = flat.abs().sort(dim=1, descending=True).values[:, keep - 1:keep]
    trimmed = flat * (flat.abs() >= thresholds)
    signs = trimmed.sum(0).sign()
    signs[signs == 0] = signs.sum().sign()
    agreeing = torch.where(signs > 0, trimmed > 0, trimmed < 0) * trimmed
    merged = agreeing.sum(0) / (agreeing != 0).sum(0).clamp(min=1)
    out, start = {}, 0
    for n in names:
        out[n] = base[n] + merged[start:start + base[n].numel()].view_as(base[n])
        start += base[n].numel()
    return out


def test_ties_equals_the_official_steps_on_a_whole_model(students):
    floating = {role: {k: v for k, v in s.items() if v.is_floating_point()} for role, s in students.items()}
    ours = ties(floating["base"], floating["speech"], floating["music"], density=0.2)
    reference = official_ties(floating["base"], [floating["speech"], floating["music"]], 0.2)
    for name in ours:
        torch.testing.assert_close(ours[name], reference[name], atol=1e-6, rtol=0, msg=name)


# ---- one λ semantics ----------------------------------------------------------------------------

@pytest.mark.parametrize("method, params", [
    ("task_arithmetic", {}), ("ties", {}), ("ties", {"density": 1.0}), ("dare", {"seed": 4}),
    ("dare", {"seed": 4, "combine": "ties"}), ("drm", {}), ("drm", {"variant": "vertical"}),
])
def test_lambda_two_doubles_lambda_ones_delta(students, method, params):
    base = students["base"]
    ones = merge(method, students, lambda_speech=1, lambda_music=1, **params)
    twos = merge(method, students, lambda_speech=2, lambda_music=2, **params)
    for name, b in base.items():
        if b.is_floating_point():
            torch.testing.assert_close(twos[name] - b, 2 * (ones[name] - b), atol=2e-6, rtol=1e-5, msg=name)


def test_per_tensor_ties_keeps_lambda_as_a_relative_weight(students):
    ones = merge("ties", students, lambda_speech=1, lambda_music=1, trim="per_tensor")
    twos = merge("ties", students, lambda_speech=2, lambda_music=2, trim="per_tensor")
    for name in ones:
        torch.testing.assert_close(ones[name], twos[name], msg=name)


# ---- DARE ---------------------------------------------------------------------------------------

def test_dare_mean_over_many_seeds_approaches_task_arithmetic():
    g = torch.Generator().manual_seed(0)
    base, speech, music = ({"w": torch.randn(2000, generator=g, dtype=torch.float64)} for _ in range(3))
    expected = task_arithmetic(base, speech, music, lambda_speech=0.7, lambda_music=0.3)["w"] - base["w"]
    runs = torch.stack([dare(base, speech, music, lambda_speech=0.7, lambda_music=0.3, drop=0.5, seed=s)["w"] - base["w"]
                        for s in range(300)])
    error = (runs.mean(0) - expected).norm() / expected.norm()
    assert error < 0.1  # one run alone is off by about 1 (variance p/(1-p) per entry)
    assert (runs[0] - expected).norm() / expected.norm() > 0.5


def test_dare_ties_is_sign_election_and_disjoint_mean_of_the_rescaled_task_vectors():
    g = torch.Generator().manual_seed(1)
    base, speech, music = ({"w": torch.randn(400, generator=g)} for _ in range(3))
    # the same seed draws the same masks for a role and tensor, so λ=(1,0) and (0,1) give each τ̃ alone
    tilde_s = dare(base, speech, music, lambda_speech=1, lambda_music=0, drop=0.6, seed=7)["w"] - base["w"]
    tilde_m = dare(base, speech, music, lambda_speech=0, lambda_music=1, drop=0.6, seed=7)["w"] - base["w"]
    expected = sign_elected_mean(torch.stack([0.8 * tilde_s, 1.5 * tilde_m]))
    merged = dare(base, speech, music, lambda_speech=0.8, lambda_music=1.5, drop=0.6, seed=7, combine="ties")
    torch.testing.assert_close(merged["w"] - base["w"], expected)
    both = (tilde_s != 0) & (tilde_m != 0) & (tilde_s.sign() == tilde_m.sign())
    assert both.any() and not torch.allclose((merged["w"] - base["w"])[both], (0.8 * tilde_s + 1.5 * tilde_m)[both])


# ---- DRM ----------------------------------------------------------------------------------------

def _top_jointly(x, density):
    """Entries of x among the round(density·n) largest in magnitude over all of x (ties kept)."""
    keep = round(density * x.numel())
    threshold = x.abs().flatten().sort(descending=True).values[keep - 1]
    return x * (x.abs() >= threshold)


def _elect_and_average(parts):
    """The authors' sign resolution by mass (a zero mass takes the majority sign) and disjoint average."""
    signs = parts.sum(0, keepdim=True).sign()
    signs[signs == 0] = signs.sum().sign()
    kept = parts.masked_fill(parts.sign() != signs, 0.0)
    return kept.sum(0) / kept.count_nonzero(0).clamp(min=1)


def authors_drm(deltas, density, vertical=False, joint=True, rank_tol=0.01):
    """Decom-Renorm-Merge of 2-D deltas, written from the authors' description and code: joint SVD of the
    deltas side by side (horizontal) or stacked (vertical), components above 1 % of the largest singular
    value, each model's block of the unshared singular vectors renormalised (norms into the singular
    values), pruned over all models' entries together, sign resolved by mass, disjoint average.
    One deliberate difference: the cut keeps round(density·n) entries, where the authors' kthvalue
    keeps one entry more."""
    n, m = deltas[0].shape
    U, S, Vh = torch.linalg.svd(torch.cat(deltas, dim=0 if vertical else 1), full_matrices=False)
    r = int((S > S.max() * rank_tol).sum())
    U, S, Vh = U[:, :r], S[:r], Vh[:r]
    blocks = U.split(n, dim=0) if vertical else Vh.split(m, dim=1)
    axis = 0 if vertical else 1
    norms = [b.norm(dim=axis, keepdim=True) for b in blocks]
    units = torch.stack([b / nb for b, nb in zip(blocks, norms)])
    units = _top_jointly(units, density) if joint else torch.stack([_top_jointly(u, density) for u in units])
    if vertical:
        parts = torch.stack([S[None, :] * nb for nb in norms]) * units  # U_i·diag(S_i)
        return _elect_and_average(parts) @ Vh
    parts = torch.stack([S[:, None] * nb for nb in norms]) * units  # diag(S_i)·V_iᵀ
    return U @ _elect_and_average(parts)


def random_deltas(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=dtype)
    low_rank = torch.randn(shape[0], 3, generator=g, dtype=dtype) @ torch.randn(3, shape[1], generator=g, dtype=dtype)
    speech = base + low_rank + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
    music = base - 0.5 * low_rank + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
    return {"w": base}, {"w": speech}, {"w": music}


@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (7, 7)])
@pytest.mark.parametrize("variant", ["horizontal", "vertical"])
@pytest.mark.parametrize("prune", ["joint", "per_model"])
def test_drm_on_two_d_weights_equals_the_authors_method(shape, variant, prune):
    base, speech, music = random_deltas(shape, seed=sum(shape))
    deltas = [speech["w"] - base["w"], music["w"] - base["w"]]
    for density in (0.2, 0.5):
        ours = drm(base, speech, music, density=density, variant=variant, prune=prune)["w"] - base["w"]
        reference = authors_drm(deltas, density, vertical=variant == "vertical", joint=prune == "joint")
        torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_joint_and_per_model_pruning_differ_when_one_model_is_spread_thin():
    base, speech, music = random_deltas((16, 16), seed=5)
    joint = drm(base, speech, music, density=0.2)["w"]
    per_model = drm(base, speech, music, density=0.2, prune="per_model")["w"]
    assert not torch.allclose(joint, per_model)


def test_drm_merges_conv_kernels_one_row_tensors_and_vectors_untrimmed():
    g = torch.Generator().manual_seed(2)
    shapes = {"pos_conv.weight_g": (1, 1, 9), "row": (1, 9), "conv.weight": (6, 3, 5), "bias": (6,)}
    base = {name: torch.zeros(shape) for name, shape in shapes.items()}
    speech, music = ({name: torch.randn(shape, generator=g) for name, shape in shapes.items()} for _ in range(2))
    merged = drm(base, speech, music, density=0.2, lambda_speech=1.5)
    for name in shapes:
        torch.testing.assert_close(merged[name], sign_elected_mean(torch.stack([1.5 * speech[name], music[name]])), msg=name)
        assert (merged[name] != 0).all(), name  # every tap kept: nothing trimmed
    as_drm = drm(base, speech, music, density=0.2, conv="drm")  # the option: kernels viewed as out × rest
    reference = authors_drm([speech["conv.weight"].reshape(6, -1), music["conv.weight"].reshape(6, -1)], 0.2)
    torch.testing.assert_close(as_drm["conv.weight"], reference.view(6, 3, 5))
    untrimmed = drm(base, speech, music, density=0.2)
    assert not torch.allclose(as_drm["conv.weight"], untrimmed["conv.weight"], atol=1e-3)
    torch.testing.assert_close(as_drm["pos_conv.weight_g"], untrimmed["pos_conv.weight_g"])  # one row: still untrimmed
