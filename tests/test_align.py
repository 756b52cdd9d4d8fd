import dataclasses
import itertools

import numpy as np
import pytest
import torch

from merging.align import (
    CrossCorrelation, conv_frames_kept, correlation_align, frame_positions, frames_at, solve_blocked, weight_align,
)
from merging.encoders import Encoder
from merging.features import activation_taps, activations, encoder_input, match_frames, tapped
from merging.spec import COMPONENTS, apply_permutations, hubert_spec, random_permutations
from merging.state import MergeError, state_checksum
from tiny import TINY_VARIANTS, tiny_config, tiny_model


def encoder(model, name="speech", sample_rate=16000):
    return Encoder(model=model, sample_rate=sample_rate, normalize=False, name=name, source=name)


def calibration(n=12, seconds=0.5, sample_rate=16000, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    clips = []
    for _ in range(n):  # noise plus a random chirp: varied enough to make every unit move
        f0, f1 = rng.uniform(80, 2000, size=2)
        clips.append((0.3 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / seconds) * t) + 0.2 * rng.standard_normal(len(t))).astype(np.float32))
    return clips


def permuted_copy(model, components=COMPONENTS, seed=1):
    spec = hubert_spec(model.config)
    perms = random_permutations(spec, components, torch.Generator().manual_seed(seed))
    copy = type(model)(model.config).eval()
    copy.load_state_dict(apply_permutations(model.state_dict(), spec, perms))
    return copy, perms


@pytest.mark.parametrize("variant", ["group-norm", "stable-layer-norm", "heads-8-groups-8-three-layers"])
def test_correlation_alignment_recovers_a_permuted_copy(variant):
    model = tiny_model(tiny_config(**TINY_VARIANTS[variant]))
    copy, _ = permuted_copy(model)
    alignment = correlation_align(encoder(model), encoder(copy, "music"), calibration(), 16000, components=COMPONENTS)
    assert set(alignment.groups) == set(hubert_spec(model.config).groups)
    assert state_checksum(alignment.apply(copy.state_dict())) == state_checksum(model.state_dict())
    for group in alignment.groups.values():
        assert group.after == pytest.approx(1.0, abs=5e-3), group.name  # eps 1e-7 on quiet units
        assert group.before < 0.9, group.name
        assert group.similarity.shape == (len(group.perm), len(group.perm))


def test_aligning_a_model_to_itself_gives_identity_and_signed_matching_works():
    model = tiny_model()
    alignment = correlation_align(encoder(model), encoder(model, "music"), calibration(6), 16000,
                                  components=("cnn", "ffn"), absolute=False)
    assert {g.component for g in alignment.groups.values()} == {"cnn", "ffn"}
    for group in alignment.groups.values():
        assert torch.equal(group.perm, torch.arange(len(group.perm)))
        assert group.before == pytest.approx(1.0, abs=1e-3) and group.after == pytest.approx(group.before)
    summary = alignment.summary()
    assert summary["components"] == ["cnn", "ffn"] and "activations" in summary["timings_s"]


def test_paper_ablation_sets_only_touch_their_groups():
    model, other = tiny_model(seed=0), tiny_model(seed=1)
    for components in [(), ("cnn",), ("cnn", "ffn"), ("ffn", "attn"), ("cnn", "ffn", "attn"), ("res",)]:
        alignment = correlation_align(encoder(model), encoder(other, "music"), calibration(4), 16000, components=components)
        assert {g.component for g in alignment.groups.values()} == set(components)
        for group in alignment.groups.values():
            assert group.after >= group.before - 1e-6 or group.component == "attn", group.name  # attn: qk+vo jointly


def test_independent_models_gain_correlation_on_matched_units():
    model, other = tiny_model(seed=0), tiny_model(seed=1)
    alignment = correlation_align(encoder(model), encoder(other, "music"), calibration(), 16000)
    for group in alignment.groups.values():
        objective = group.similarity.abs()
        n = len(group.perm)
        assert objective[torch.arange(n), group.perm].sum() >= objective.diagonal().sum() - 1e-4


def test_encoders_at_different_sample_rates_are_matched_frame_by_frame(monkeypatch):
    # The music encoder hears the clips resampled to 24 kHz (1.5x the samples, so 1.5x the frames); its
    # activations are resampled in time to the speech encoder's frames before they are correlated.
    model = tiny_model()
    copy, _ = permuted_copy(model, ("cnn", "ffn"))
    seen = []
    update = CrossCorrelation.update
    monkeypatch.setattr(CrossCorrelation, "update", lambda self, a, b: (seen.append((a.shape, b.shape)), update(self, a, b)))
    music = encoder(copy, "music", sample_rate=24000)
    inputs = encoder_input(music, calibration(2, seconds=0.5), 16000)
    assert inputs.shape[-1] == 12000
    alignment = correlation_align(encoder(model), music, calibration(6, seconds=0.5), 16000, components=("ffn",))
    assert seen and all(a == b for a, b in seen)
    assert all(sorted(g.perm.tolist()) == list(range(len(g.perm))) for g in alignment.groups.values())


def test_frames_are_matched_by_linear_resampling_in_time():
    ramp = torch.linspace(0, 1, 37).reshape(1, 37, 1).repeat(2, 1, 3)
    matched = match_frames(ramp, 24)
    assert matched.shape == (2, 24, 3)
    assert torch.all(matched[:, 1:] > matched[:, :-1])  # order kept
    assert torch.allclose(matched[0, :, 0], torch.linspace(0, 1, 24), atol=0.05)
    assert match_frames(ramp, 37) is ramp


def test_weight_matching_recovers_a_permuted_copy():
    model = tiny_model(tiny_config(**TINY_VARIANTS["heads-2-groups-2"]))
    copy, _ = permuted_copy(model, seed=4)
    spec = hubert_spec(model.config)
    alignment = weight_align(model.state_dict(), copy.state_dict(), spec)
    assert state_checksum(alignment.apply(copy.state_dict())) == state_checksum(model.state_dict())
    for group in alignment.groups.values():
        assert group.after == pytest.approx(1.0, abs=1e-5), group.name


def test_blocked_assignment_keeps_blocks_and_ties():
    rng = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 8, generator=rng), torch.randn(8, 8, generator=rng)
    pa, pb = solve_blocked([a, b], block=4)
    assert torch.equal(pa.view(2, 4)[:, 0] // 4, pb.view(2, 4)[:, 0] // 4)
    assert torch.equal(pa.view(2, 4) // 4, (pa.view(2, 4) // 4)[:, :1].expand(2, 4))
    def best_inner(tile):  # exhaustive over the 24 orders of a 4-unit block
        return max(float(tile[torch.arange(4), torch.tensor(p)].sum()) for p in itertools.permutations(range(4)))

    tiles = [m.view(2, 4, 2, 4) for m in (a, b)]
    brute = max(sum(best_inner(t[blk, :, order[blk], :]) for t in tiles for blk in range(2)) for order in [(0, 1), (1, 0)])
    achieved = float(a[torch.arange(8), pa].sum() + b[torch.arange(8), pb].sum())
    assert achieved == pytest.approx(brute, abs=1e-5)


@pytest.mark.parametrize("flush_rows", [1 << 15, 1000])  # float32 running sums only, and moved into float64 totals
def test_streaming_correlation_matches_numpy_on_offset_data(monkeypatch, flush_rows):
    monkeypatch.setattr(CrossCorrelation, "FLUSH_ROWS", flush_rows)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3000, 5)) * 0.01 + 1000.0  # large offset: naive float32 sums would cancel
    b = a @ rng.standard_normal((5, 4)) + rng.standard_normal((3000, 4)) * 0.001
    acc = CrossCorrelation()
    for chunk in range(0, 3000, 700):
        acc.update(torch.tensor(a[chunk:chunk + 700], dtype=torch.float32), torch.tensor(b[chunk:chunk + 700], dtype=torch.float32))
    expected = np.corrcoef(a.T, b.T)[:5, 5:]
    np.testing.assert_allclose(acc.matrix().numpy(), expected, atol=1e-3)
    assert torch.equal(acc.matrix(), acc.matrix())  # reading leaves the statistics as they were


def test_incompatible_pairs_and_empty_calibration_are_refused():
    small, big = tiny_model(), tiny_model(tiny_config(num_hidden_layers=3))
    with pytest.raises(MergeError, match="num_hidden_layers"):
        correlation_align(encoder(small), encoder(big, "music"), calibration(2), 16000)
    with pytest.raises(MergeError, match="calibration"):
        correlation_align(encoder(small), encoder(small, "music"), [], 16000)


def test_an_alignment_is_a_frozen_value_and_apply_recomputes_from_its_input():
    speech = tiny_model(seed=1)
    alignment = weight_align(speech.state_dict(), tiny_model(seed=2).state_dict(), hubert_spec(speech.config))
    with pytest.raises(dataclasses.FrozenInstanceError):
        alignment.groups["ffn0"].perm = torch.arange(64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        alignment.method = "other"
    assert not hasattr(alignment, "__dict__") or "_last" not in vars(alignment)
    music = {k: v.clone() for k, v in tiny_model(seed=2).state_dict().items()}
    first = alignment.apply(music)
    name = next(k for k, v in music.items() if v.is_floating_point() and v.ndim == 2)
    music[name].mul_(2)  # an in-place change of the input is always seen: nothing is kept
    assert torch.equal(alignment.apply(music)[name], apply_permutations(music, alignment.spec, alignment.perms)[name])
    assert not torch.equal(alignment.apply(music)[name], first[name])


def test_groups_are_described_by_structured_fields():
    model = tiny_model(tiny_config(num_hidden_layers=3))
    alignment = correlation_align(encoder(model), encoder(model, "music"), calibration(3), 16000, components=COMPONENTS)
    spec = hubert_spec(model.config)
    for name, group in alignment.groups.items():
        assert group.group == spec.groups[name]
        assert (group.component, group.kind, group.layer) == (spec.groups[name].component, spec.groups[name].kind, spec.groups[name].layer)
    summary = alignment.summary(with_perms=False)["groups"]
    assert summary["attn2.vo"]["kind"] == "vo" and summary["attn2.vo"]["layer"] == 2 and summary["res"]["layer"] is None


def test_stratified_frame_positions_cover_the_clip_in_order():
    positions = frame_positions(3199, 196, torch.Generator().manual_seed(0))
    assert len(positions) == 196 and torch.all(positions[1:] > positions[:-1])
    assert positions[0] < 3199 / 196 and positions[-1] >= 3199 - 3199 / 196 - 1 and positions[-1] < 3199
    edges = (torch.arange(197, dtype=torch.float64) * 3199 / 196).floor()
    assert torch.all((edges[:-1] <= positions) & (positions < edges[1:]))  # one frame from each stratum
    assert frame_positions(100, 196, torch.Generator()) is None


@pytest.mark.parametrize("frames", [37, 24])
def test_frames_at_reads_the_resampled_time_line_at_the_kept_positions(frames):
    x = torch.randn(2, 37, 5, generator=torch.Generator().manual_seed(0))
    positions = frame_positions(24, 9, torch.Generator().manual_seed(1))
    expected = match_frames(x, 24)[:, positions]
    torch.testing.assert_close(frames_at(x, positions, 24), expected)
    torch.testing.assert_close(frames_at(x, None, 24), match_frames(x, 24))
    torch.testing.assert_close(frames_at(x[:, :frames], None, frames), x[:, :frames])


def test_subsampled_conv_frames_give_the_statistics_of_every_frame():
    model, other = tiny_model(seed=0), tiny_model(seed=1)
    clips = calibration(12, seconds=1.0)
    every = correlation_align(encoder(model), encoder(other, "music"), clips, 16000, components=("cnn",), conv_frames_per_frame=None)
    kept = correlation_align(encoder(model), encoder(other, "music"), clips, 16000, components=("cnn",))
    assert conv_frames_kept(model, 16000)[0] == 4 * 49 < 3199  # the early layers really are subsampled
    for name, group in every.groups.items():
        assert (group.similarity - kept.groups[name].similarity).abs().max() < 0.1, name
        assert kept.groups[name].after == pytest.approx(group.after, abs=0.02), name


def test_parallel_assignments_equal_one_at_a_time(monkeypatch):
    model, other = tiny_model(seed=0), tiny_model(seed=1)
    args = (encoder(model), encoder(other, "music"), calibration(4), 16000)
    parallel = correlation_align(*args, components=COMPONENTS)
    monkeypatch.setattr("merging.align.assignment_workers", lambda: 1)
    serial = correlation_align(*args, components=COMPONENTS)
    assert list(parallel.groups) == list(serial.groups)
    assert all(torch.equal(parallel.groups[n].perm, serial.groups[n].perm) for n in serial.groups)


def test_progress_starts_with_the_first_clip_and_estimates_the_time_left():
    model, other = tiny_model(seed=0), tiny_model(seed=1)
    calls = []
    correlation_align(encoder(model), encoder(other, "music"), calibration(6), 16000, batch_size=2,
                      progress=lambda fraction, message: calls.append((fraction, message)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and 0 < fractions[0] <= 0.2
    assert calls[0][1].startswith("calibration clips 0/6, speech pass · about ") and calls[0][1].endswith(" s left for the clips")
    assert len(calls) > 6 and calls[-1][1] == "assignments"


@pytest.mark.parametrize("variant", ["group-norm", "layer-norm", "stable-layer-norm"])
def test_tapped_pass_gives_the_activations_of_the_models_own_forward(variant):
    model = tiny_model(tiny_config(**TINY_VARIANTS[variant]))
    spec = hubert_spec(model.config)
    taps = activation_taps(list(spec.groups.values()))
    audio = encoder_input(encoder(model), calibration(2), 16000)
    fast = activations(encoder(model), audio, taps)
    reference = {}
    with tapped(model, taps, reference.__setitem__), torch.no_grad():
        states = model(audio, output_hidden_states=True).hidden_states
    reference[next(tap for tap in taps if tap.kind == "res")] = torch.cat(states, dim=0)
    assert set(fast) == set(reference) == set(taps)
    for tap in taps:
        torch.testing.assert_close(fast[tap], reference[tap], atol=1e-4, rtol=1e-4, msg=str(tap))
