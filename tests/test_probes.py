import numpy as np
import pytest
import torch

import merging.probes as probes
from merging.encoders import Encoder
from merging.probes import ProbeSuite, ProbeTask, fit_probe
from merging.state import MergeError
from tiny import tiny_model


def encoder(model):
    return Encoder(model=model, sample_rate=16000, normalize=False, name="tiny", source="tiny")


def tone_suite(n_train=40, n_test=20):
    """Low vs high tones: a task any encoder's features can separate."""
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 16000
    clips, labels = [], []
    for i in range(n_train + n_test):
        high = i % 2
        f = rng.uniform(1500, 2500) if high else rng.uniform(100, 300)
        clips.append((0.5 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
        labels.append(high)
    idx = list(range(n_train + n_test))
    task = ProbeTask("pitch_height", "music", ("low", "high"), tuple(idx[:n_train]), tuple(labels[:n_train]),
                     tuple(idx[n_train:]), tuple(labels[n_train:]))
    shuffled = ProbeTask("noise", "speech", ("a", "b"), tuple(idx[:n_train]), tuple(rng.integers(0, 2, n_train).tolist()),
                         tuple(idx[n_train:]), tuple(rng.integers(0, 2, n_test).tolist()))
    return ProbeSuite(clips, [task, shuffled])


def test_probe_learns_a_separable_task_and_scores_are_reproducible():
    suite, enc = tone_suite(), encoder(tiny_model())
    scores = suite.score(enc, seed=0)
    assert scores.accuracy["pitch_height"] >= 90
    assert scores.average("music") == scores.accuracy["pitch_height"]
    assert scores.average() == pytest.approx((scores.accuracy["pitch_height"] + scores.accuracy["noise"]) / 2)
    assert suite.score(enc, seed=0).accuracy == scores.accuracy


def test_fit_probe_layer_weights_find_the_informative_layer():
    rng = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=rng)
    features = torch.randn(300, 4, 8, generator=rng)
    features[:, 2, 0] += 3.0 * y  # only layer 2 knows the class
    probe = fit_probe(features, y, 3)
    assert np.argmax(probe.layer_weights()) == 2
    assert (probe.logits(features).argmax(1) == y).float().mean() > 0.9


def test_features_are_cached_by_weights(monkeypatch):
    suite, enc = tone_suite(8, 4), encoder(tiny_model())
    calls = []
    real = probes.layer_features
    monkeypatch.setattr(probes, "layer_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    suite.score(enc)
    suite.score(enc)
    assert len(calls) == 1
    suite.score(encoder(tiny_model(seed=5)))
    assert len(calls) == 2


def test_predict_returns_probabilities_for_any_length_and_refuses_bad_clips():
    suite, enc = tone_suite(), encoder(tiny_model())
    for seconds in (0.3, 2.7):
        clip = (0.5 * np.sin(2 * np.pi * 2000 * np.arange(int(seconds * 16000)) / 16000)).astype(np.float32)
        result = suite.predict(enc, clip, 16000)
        assert set(result) == {"pitch_height", "noise"}
        for probabilities in result.values():
            assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert result["pitch_height"]["high"] > 0.5
    with pytest.raises(MergeError):
        suite.predict(enc, np.zeros(100, dtype=np.float32), 16000)


def test_builtin_suite_has_every_task_with_disjoint_splits():
    suite = probes.builtin_suite()
    assert {t.name: t.domain for t in suite.tasks} == {"keyword": "speech", "speaker": "speech", "instrument_family": "music",
                                                       "pitch_class": "music", "chord_quality": "music"}
    for task in suite.tasks:
        assert len(task.test) >= 100 and not set(task.train) & set(task.test)
        assert set(task.test_y) == set(range(len(task.labels)))
    notes = {t.name: t for t in suite.tasks}
    assert notes["pitch_class"].train == notes["instrument_family"].train  # the same clips, loaded once
    assert len(suite.clips) == len({i for t in suite.tasks for i in t.train + t.test})


def test_builtin_suite_limits_keep_the_first_clips_of_each_split_and_share_them():
    from merging.audio import load_audio
    from merging.synth.assets import ASSETS_DIR, load_manifest

    small = probes.builtin_suite(max_train=12, max_test=5)
    manifest = load_manifest()
    for task in small.tasks:
        probe_set = manifest["tasks"][task.name]["probe_set"]
        for split, indices, ys in (("train", task.train, task.train_y), ("test", task.test, task.test_y)):
            rows = [f for f in manifest["files"] if f["split"] == split and f["probe_set"] == probe_set][:len(indices)]
            assert len(indices) == (12 if split == "train" else 5)
            assert [task.labels[y] for y in ys] == [row["labels"][task.name] for row in rows]
            np.testing.assert_array_equal(small.clips[indices[-1]], load_audio(ASSETS_DIR / rows[-1]["path"], 16000)[0])
    assert len(small.clips) == 3 * (12 + 5)  # speech, notes and chords clips, each loaded once


def test_feature_batch_size_does_not_change_features():
    suite, enc = tone_suite(6, 3), encoder(tiny_model())
    one = ProbeSuite(suite.clips, suite.tasks, batch_size=1).features(enc)
    torch.testing.assert_close(one, suite.features(enc), atol=1e-5, rtol=0)
