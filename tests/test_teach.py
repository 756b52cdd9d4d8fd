"""Teaching panels: readable heatmaps, units that fire together, the speech-over-music mixer, the timeline."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from merging.align import correlation_align
from merging.encoders import Encoder
from merging.listen import confidence, read, top_labels, windows
from merging.mixing import MIX_PEAK, builtin_clips, mix, rms
from merging.probes import ProbeSuite, ProbeTask
from merging.spec import COMPONENTS, apply_permutations, hubert_spec, random_permutations
from merging.state import MergeError
from merging.synth.assets import load_manifest
from merging.units import pick_unit, unit_traces
from tiny import tiny_model
from viz.figures import correlation_heatmaps
from viz.teach import mix_sweep_figure, timeline_strip, unit_traces_figure

SR = 16000


def encoder(model, name):
    return Encoder(model=model, sample_rate=SR, normalize=False, name=name, source=name)


def chirps(n=8, seconds=0.5, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return [(0.3 * np.sin(2 * np.pi * (f0 + (f1 - f0) * t / seconds) * t) + 0.2 * rng.standard_normal(len(t))).astype(np.float32)
            for f0, f1 in rng.uniform(80, 2000, size=(n, 2))]


@pytest.fixture(scope="module")
def permuted_pair():
    """A tiny encoder, a copy with every group's units shuffled, and the alignment that recovers them."""
    model = tiny_model()
    spec = hubert_spec(model.config)
    perms = random_permutations(spec, COMPONENTS, torch.Generator().manual_seed(3))
    copy = type(model)(model.config).eval()
    copy.load_state_dict(apply_permutations(model.state_dict(), spec, perms))
    speech, music = encoder(model, "speech"), encoder(copy, "music")
    return speech, music, correlation_align(speech, music, chirps(), SR, components=COMPONENTS)


# -- heatmaps ---------------------------------------------------------------------------------------

def strength_matrix(n=10, seed=0):
    """Similarity whose matched pairs (speech i, music perm[i]) have distinct strengths, the rest weak."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    strengths = rng.uniform(0.3, 0.95, n)
    similarity = rng.uniform(-0.1, 0.1, (n, n))
    similarity[np.arange(n), perm] = strengths
    return similarity, perm, strengths


def test_after_heatmap_puts_the_strongest_matches_first_and_before_uses_the_same_speech_order():
    similarity, perm, strengths = strength_matrix()
    before, after = correlation_heatmaps(similarity, perm, title="ffn0").data
    order = np.argsort(-strengths)
    np.testing.assert_allclose(np.diag(np.asarray(after.z)), strengths[order], rtol=1e-6)  # bright, falling diagonal
    assert list(after.y) == list(before.y) == [str(i) for i in order]  # unit ids on the axes and on hover
    assert list(after.x) == [str(perm[i]) for i in order] and list(before.x) == [str(i) for i in order]
    np.testing.assert_allclose(np.asarray(before.z), similarity[np.ix_(order, order)], rtol=1e-6)
    assert before.zmin == after.zmin and before.zmax == after.zmax
    assert "speech unit %{y}" in after.hovertemplate and "music unit %{x}" in after.hovertemplate


def test_heatmap_zoom_shows_the_first_units_and_absolute_matching_sorts_by_magnitude():
    similarity, perm, strengths = strength_matrix(20)
    similarity[np.arange(20), perm] *= np.where(np.arange(20) % 2, -1, 1)  # signs do not matter when matching |C|
    fig = correlation_heatmaps(similarity, perm, absolute=True, zoom=5)
    after = np.asarray(fig.data[1].z)
    assert after.shape == (5, 5) and "first 5 of 20" in fig.layout.title.text
    np.testing.assert_allclose(np.diag(after), np.sort(strengths)[::-1][:5], rtol=1e-6)
    assert fig.data[0].zmin == fig.data[1].zmin == 0  # one scale for both, spanning what is shown
    assert fig.data[0].zmax == fig.data[1].zmax == pytest.approx(max(np.abs(np.asarray(t.z)).max() for t in fig.data))


def test_full_size_groups_stay_small_whether_zoomed_or_not():
    rng = np.random.default_rng(0)
    similarity, perm = rng.uniform(-1, 1, (3072, 3072)).astype(np.float32), rng.permutation(3072)
    zoomed = correlation_heatmaps(similarity, perm, zoom=64)
    assert np.asarray(zoomed.data[1].z).shape == (64, 64)
    whole = correlation_heatmaps(similarity, perm, zoom=None, max_side=256)
    assert np.asarray(whole.data[1].z).shape == (256, 256) and "all 3072" in whole.layout.title.text
    assert len(whole.to_json()) < 2_000_000


# -- units that fire together -----------------------------------------------------------------------

def test_pick_unit_finds_the_best_and_worst_match_and_checks_indices(permuted_pair):
    _, _, alignment = permuted_pair
    group = alignment.groups["ffn0"]
    scores = group.similarity.numpy()[np.arange(len(group.perm)), group.perm.numpy()]
    assert pick_unit(group, "best", True) == int(np.argmax(np.abs(scores)))
    assert pick_unit(group, "worst", True) == int(np.argmin(np.abs(scores)))
    assert pick_unit(group, "7", True) == 7
    for bad in (-1, len(group.perm), "middle"):
        with pytest.raises(MergeError):
            pick_unit(group, bad, True)


@pytest.mark.parametrize("name", ["conv3", "ffn1", "attn0.qk", "attn1.vo", "res"])
def test_a_matched_unit_fires_with_its_speech_unit_and_the_same_index_unit_does_not(permuted_pair, name):
    speech, music, alignment = permuted_pair
    clip = chirps(1, seconds=0.7, seed=9)[0]
    group = alignment.groups[name]
    moved = [i for i in range(len(group.perm)) if group.perm[i] != i]
    unit = moved[0]
    traces = unit_traces(speech, music, alignment, name, unit, clip, SR)
    assert traces.matched_unit == int(group.perm[unit]) != unit
    np.testing.assert_allclose(traces.matched, traces.speech, atol=1e-4)  # the same unit, shuffled
    assert traces.clip[0] == pytest.approx(1.0, abs=1e-3) and traces.calibration[0] == pytest.approx(1.0, abs=1e-2)
    assert not np.allclose(traces.same_index, traces.speech, atol=1e-3)
    assert traces.calibration[1] == pytest.approx(float(group.similarity[unit, unit]))
    assert len(traces.seconds) == len(traces.speech) and traces.seconds[-1] > 0.5
    fig = unit_traces_figure(traces)
    names = [trace.name for trace in fig.data]
    assert len(names) == 3 and f"matched music unit {traces.matched_unit}" in names[1] and "+1.00" in names[1]
    assert f"music unit {unit} (same index" in names[2]


def test_unit_traces_refuse_unknown_groups_and_units(permuted_pair):
    speech, music, alignment = permuted_pair
    with pytest.raises(MergeError, match="no group"):
        unit_traces(speech, music, alignment, "ffn9", 0, chirps(1)[0], SR)
    with pytest.raises(MergeError, match="units 0"):
        unit_traces(speech, music, alignment, "ffn0", 10_000, chirps(1)[0], SR)


# -- mixing -----------------------------------------------------------------------------------------

def test_mix_sets_the_music_level_by_rms_and_never_clips():
    rng = np.random.default_rng(0)
    speech = (0.05 * rng.standard_normal(SR)).astype(np.float32)
    music = (0.5 * np.sin(2 * np.pi * 440 * np.arange(SR // 2) / SR)).astype(np.float32)
    kept = speech.copy(), music.copy()
    for level in (-30, -6, 0, 12.5, 30):
        out = mix(speech, music, level, SR)
        assert len(out) == SR and np.abs(out).max() == pytest.approx(MIX_PEAK, rel=1e-5)
        scale = float(out[SR // 2:] @ speech[SR // 2:] / (speech[SR // 2:] @ speech[SR // 2:]))  # music has ended there
        music_part = out[: SR // 2] / scale - speech[: SR // 2]
        assert 20 * np.log10(rms(music_part) / rms(speech)) == pytest.approx(level, abs=0.01)
    assert all(np.array_equal(a, b) for a, b in zip(kept, (speech, music)))


def test_mix_refuses_bad_levels_and_silence_and_bounds_the_length():
    tone = np.sin(np.arange(3 * SR) / 5).astype(np.float32)
    assert len(mix(tone, tone, 0, SR, max_seconds=2)) == 2 * SR
    for level in (31, -31, float("nan"), "10"):
        with pytest.raises(MergeError, match="music level"):
            mix(tone, tone, level, SR)
    with pytest.raises(MergeError, match="speech clip"):
        mix(np.zeros(SR, np.float32), tone, 0, SR)


def test_builtin_clips_are_one_test_clip_per_keyword_and_per_instrument():
    manifest = load_manifest()
    for kind, task in (("speech", "keyword"), ("music", "instrument_family")):
        clips = builtin_clips(kind)
        assert [c.truth[task] for c in clips] == manifest["tasks"][task]["labels"]
        rows = {row["path"]: row for row in manifest["files"]}
        for clip in clips:
            row = rows[clip.path.relative_to(clip.path.parents[3]).as_posix()]
            assert row["split"] == "test" and clip.path.is_file() and clip.truth[task] == row["labels"][task]


# -- reading clips ----------------------------------------------------------------------------------

def test_windows_cover_a_long_clip_and_leave_a_short_one_whole():
    clip = np.arange(int(4.5 * SR), dtype=np.float32)
    starts, parts = windows(clip, SR)
    assert starts[0] == 0 and starts[-1] == pytest.approx(3.5) and np.all(np.diff(starts) <= 0.25 + 1e-9)
    assert all(len(p) == SR for p in parts) and parts[-1][-1] == clip[-1]
    assert len(windows(np.zeros(60 * SR, np.float32), SR)[1]) == 48
    starts, parts = windows(clip[: SR // 2], SR)
    assert list(starts) == [0] and len(parts[0]) == SR // 2


def test_read_gives_the_probes_probabilities_and_confidence_follows_a_label():
    model = encoder(tiny_model(), "speech")
    clips = chirps(6, seconds=1.0)
    task = ProbeTask("tone", "music", ("low", "high"), (0, 1, 2, 3), (0, 1, 0, 1), (4, 5), (0, 1))
    suite = ProbeSuite(clips, [task], SR)
    probes = suite.fit(model)
    readings = read(model, probes, [task], clips[4:], SR)
    for reading, clip in zip(readings, clips[4:]):
        expected = suite.predict(model, clip, SR, probes=probes)["tone"]
        assert reading["tone"] == pytest.approx(expected, abs=1e-5)
    assert confidence(readings, "tone", "high") == [r["tone"]["high"] for r in readings]
    tops = top_labels(readings)["tone"]
    assert [label for label, _ in tops] == [max(r["tone"], key=r["tone"].get) for r in readings]


# -- figures ----------------------------------------------------------------------------------------

def test_sweep_figure_draws_each_encoders_confidence_in_each_true_label():
    curves = {"speech": {"keyword": [0.9, 0.5, 0.1], "instrument_family": [0.1, 0.4, 0.8]},
              "merged": {"keyword": [0.8, 0.6, 0.2], "instrument_family": [0.2, 0.5, 0.9]}}
    fig = mix_sweep_figure([-10, 0, 10], curves, {"keyword": "yes", "instrument_family": "guitar"}, current=0)
    assert [t.name for t in fig.data] == ["speech: yes", "speech: guitar", "merged: yes", "merged: guitar"]
    assert list(fig.data[2].y) == [0.8, 0.6, 0.2] and list(fig.data[0].x) == [-10, 0, 10]
    assert fig.data[0].line.dash != fig.data[1].line.dash and fig.data[0].line.color != fig.data[2].line.color


def test_timeline_joins_windows_with_the_same_label_into_segments():
    tops = {"speech": {"keyword": [("yes", 0.9), ("yes", 0.7), ("no", 0.6)]},
            "music": {"keyword": [("go", 0.5), ("go", 0.5), ("go", 0.5)]}}
    fig = timeline_strip([0.0, 0.5, 1.0], 1.0, 2.0, tops)
    speech, music = fig.data
    assert list(speech.text) == ["yes", "no"] and list(music.text) == ["go"]
    np.testing.assert_allclose(speech.base, [0.0, 1.25]) and np.testing.assert_allclose(speech.x, [1.25, 0.75])
    np.testing.assert_allclose(music.x, [2.0])
    assert speech.customdata[0][2] == pytest.approx(0.8)
    assert list(fig.layout.yaxis.categoryarray) == ["keyword · speech", "keyword · music"]
    json.loads(fig.to_json())


# -- through the running app (gradio_client) ---------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "audio" / "examples"


def plot(output) -> dict:
    if output.get("__type__") == "update":  # a shown or hidden plot
        output = output["value"]
    assert output["type"] == "plotly"
    return json.loads(output["plot"])


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    client = Client(app_server[0], verbose=False)
    client.predict(api_name="/align")
    return client


def test_show_group_zooms_the_heatmaps(client):
    for zoom, side in (("24", 24), ("all", 64)):  # the tiny encoders' FFN has 64 units
        heatmap, _ = client.predict("ffn0", zoom, api_name="/show_group")
        before, after = [t for t in plot(heatmap)["data"] if t["type"] == "heatmap"]
        assert len(after["y"]) == len(before["x"]) == side and before["y"] == after["y"]
    with pytest.raises(Exception, match="not in the list of choices|zoom"):
        client.predict("ffn0", "7", api_name="/show_group")


def test_unit_traces_endpoint_plots_the_best_and_worst_matched_units(client):
    best, note = client.predict("ffn0", "best", 0, api_name="/unit_traces")
    worst, _ = client.predict("ffn0", "worst", 3, api_name="/unit_traces")
    traces = [plot(best)["data"], plot(worst)["data"]]
    assert all(len(t) == 3 for t in traces) and "matched music unit" in traces[0][1]["name"]
    assert "rank 1 of 64" in plot(best)["layout"]["title"]["text"]
    assert "rank 64 of 64" in plot(worst)["layout"]["title"]["text"]
    assert "r = " in note and "same index" in note
    chosen, _ = client.predict("conv2", "5", 1, api_name="/unit_traces")
    assert "speech unit 5" in plot(chosen)["layout"]["title"]["text"]
    for args, message in ((("ffn0", "middle", 0), "unit"), (("ffn0", "best", 10_000), "calibration clip|maximum"),
                          (("layer99", "best", 0), "no group|not in the list")):
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/unit_traces")


def test_unit_traces_need_an_alignment(app_server):
    from gradio_client import Client

    with pytest.raises(Exception, match="run the alignment first|not in the list of choices \\(none yet\\)"):
        Client(app_server[0], verbose=False).predict("ffn0", "best", 0, api_name="/unit_traces")


def mix_choices():
    return builtin_clips("speech")[0], builtin_clips("music")[4]


def test_mix_plays_the_mix_and_the_three_encoders_read_it(client):
    from merging.audio import load_audio

    speech, music = mix_choices()
    clean_speech, clean_music = load_audio(speech.path, SR)[0], load_audio(music.path, SR)[0]
    for level, clean in ((-30, clean_speech), (30, clean_music)):
        audio, table, note = client.predict(speech.label, music.label, level, api_name="/mix")
        mixed = load_audio(audio, SR)[0]
        assert np.abs(mixed).max() == pytest.approx(MIX_PEAK, abs=0.02)
        assert np.corrcoef(mixed[: len(clean)], clean)[0, 1] > 0.95  # at ±30 dB one side dominates
        assert [row[0] for row in table["data"]] == ["keyword", "speaker", "instrument_family", "pitch_class", "chord_quality"]
        assert table["headers"][:4] == ["task", "speech", "merged", "music"] and f"{level:+d} dB" in note
    with pytest.raises(Exception, match="music level|maximum|minimum|range"):
        client.predict(speech.label, music.label, 45, api_name="/mix")
    with pytest.raises(Exception, match="no built-in|not in the list"):
        client.predict("“hello”", music.label, 0, api_name="/mix")


def test_mix_takes_an_upload_for_either_side(client):
    from gradio_client import handle_file

    speech, music = mix_choices()
    upload = EXAMPLES / "speech_seven_en-gb-scotland-f3.ogg"
    _, _, note = client.predict(speech.label, music.label, 0, handle_file(str(upload)), api_name="/mix")
    assert upload.name in note and speech.label not in note


def test_mix_sweep_follows_the_true_labels_of_every_encoder(client):
    speech, music = mix_choices()
    figure, note = client.predict(speech.label, music.label, 0, api_name="/mix_sweep")
    traces = plot(figure)["data"]
    assert [t["name"] for t in traces] == [f"{role}: {label}" for role in ("speech", "music")
                                           for label in (speech.truth["keyword"], music.truth["instrument_family"])]
    assert all(list(t["x"]) == list(range(-30, 31, 5)) and all(0 <= y <= 1 for y in t["y"]) for t in traces)
    assert "clips' labels" in note
    client.predict(method="linear", alpha=0.5, api_name="/merge")
    traces = plot(client.predict(speech.label, music.label, 0, api_name="/mix_sweep")[0])["data"]
    assert [t["name"].split(":")[0] for t in traces] == ["speech", "speech", "merged", "merged", "music", "music"]


def test_clip_timeline_appears_for_long_clips_only(client):
    from gradio_client import handle_file

    client.predict(method="linear", alpha=0.5, api_name="/merge")
    strip = client.predict(handle_file(str(EXAMPLES / "speech_over_music_on_guitar.ogg")), api_name="/clip_timeline")
    figure = plot(strip)
    lanes = figure["layout"]["yaxis"]["categoryarray"]
    assert len(lanes) == 15 and "keyword · merged" in lanes
    assert figure["layout"]["xaxis"]["range"] == [0, pytest.approx(4.0, abs=0.05)]
    short = client.predict(handle_file(str(EXAMPLES / "speech_yes_en-us-m1.ogg")), api_name="/clip_timeline")
    assert short["visible"] is False and short["value"] is None
