from types import SimpleNamespace

import numpy as np

from viz.figures import correlation_heatmaps, diagonal_by_layer, permutation_lines, probe_bars, tradeoff_curve


def test_heatmaps_show_the_permuted_matrix_after_on_one_scale():
    rng = np.random.default_rng(0)
    perm = rng.permutation(6)
    similarity = np.eye(6)[:, np.argsort(perm)]  # identity once the music units are permuted by perm
    fig = correlation_heatmaps(similarity, perm, title="ffn0")
    before, after = fig.data
    np.testing.assert_allclose(np.asarray(after.z), np.eye(6))
    assert not np.allclose(np.asarray(before.z), np.eye(6))
    assert before.zmin == after.zmin == -1 and before.zmax == after.zmax == 1


def test_large_heatmaps_are_block_averaged():
    fig = correlation_heatmaps(np.ones((3072, 3072)), np.arange(3072), zoom=None, max_side=256)
    assert np.asarray(fig.data[0].z).shape == (256, 256)


def test_other_figures_carry_their_data():
    groups = {"conv0": SimpleNamespace(before=0.1, after=0.6), "ffn0": SimpleNamespace(before=0.0, after=0.3)}
    fig = diagonal_by_layer(groups)
    assert list(fig.data[1].y) == [0.6, 0.3] and list(fig.data[0].x) == ["conv0", "ffn0"]
    assert "50% of 4 units move" in permutation_lines([1, 0, 2, 3]).layout.title.text
    bars = probe_bars({"speech": {"keyword": 90.0}, "merged": {"keyword": 80.0}}, {"keyword": "speech"})
    assert [list(b.y) for b in bars.data] == [[90.0], [80.0]]
    curve = tradeoff_curve({"linear": [{"alpha": 0, "speech_avg": 80, "music_avg": 40}]}, {"speech_avg": 70, "music_avg": 50})
    assert list(curve.data[0].x) == [40] and curve.data[1].name == "this merge"


def test_point_labels_and_bar_colours_can_be_given():
    curve = tradeoff_curve({"ties": [{"alpha": 0.5, "label": "λ=0.5/0.5", "speech_avg": 60, "music_avg": 50}]})
    assert list(curve.data[0].text) == ["λ=0.5/0.5"]
    bars = probe_bars({"pretrained": {"keyword": 1.0}}, {"keyword": "speech"}, colours={"pretrained": "#123456"})
    assert bars.data[0].marker.color == "#123456"
