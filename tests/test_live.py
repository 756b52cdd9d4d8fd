import math

import numpy as np
import pytest
import torch

from merging.encoders import Encoder
from merging.live import (LiveProbes, TaskResult, corrected_estimate, full_subset, score_subset,
                          stratified_subset)
from merging.probes import ProbeSuite, ProbeTask
from tiny import tiny_model


def encoder(model):
    return Encoder(model=model, sample_rate=16000, normalize=False, name="tiny", source="tiny")


def tone_suite(per_class_train=12, per_class_test=6):
    """Two probe sets: tones labelled by pitch band (4 classes) and loudness (2 classes) on the same clips,
    and chords of 3 kinds on their own clips."""
    rng = np.random.default_rng(0)
    t = np.arange(2000) / 16000
    clips, tasks = [], []
    band, loud, kind = {"train": [], "test": []}, {"train": [], "test": []}, {"train": [], "test": []}
    index = {"train": [], "test": []}, {"train": [], "test": []}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        for i in range(4 * per_class):
            f = (200, 500, 1200, 3000)[i % 4] * rng.uniform(0.9, 1.1)
            gain = (0.1, 0.6)[(i // 4) % 2]
            clips.append((gain * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
            index[0][split].append(len(clips) - 1)
            band[split].append(i % 4)
            loud[split].append((i // 4) % 2)
        for i in range(3 * per_class):
            fs = [300 * r for r in ((1, 1.25, 1.5), (1, 1.2, 1.5), (1, 1.5, 2))[i % 3]]
            clip = sum(np.sin(2 * np.pi * f * rng.uniform(0.98, 1.02) * t) for f in fs) / 3
            clips.append((clip + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
            index[1][split].append(len(clips) - 1)
            kind[split].append(i % 3)

    def task(name, domain, labels, idx, y):
        return ProbeTask(name, domain, labels, tuple(idx["train"]), tuple(y["train"]), tuple(idx["test"]), tuple(y["test"]))

    tasks = [task("band", "music", ("a", "b", "c", "d"), index[0], band),
             task("loudness", "speech", ("soft", "loud"), index[0], loud),
             task("chord", "music", ("major", "minor", "open"), index[1], kind)]
    return ProbeSuite(clips, tasks)


def labels_of(task, split, indices):
    y = dict(zip(getattr(task, split), getattr(task, f"{split}_y")))
    return [y[i] for i in indices]


def test_stratified_subset_takes_k_clips_of_every_class_from_each_split_nested_and_seeded():
    suite = tone_suite()
    small = stratified_subset(suite, 2, seed=3)
    for task in suite.tasks:
        for split in ("train", "test"):
            chosen = getattr(small, split)[task.name]
            assert set(chosen) <= set(getattr(task, split))
            counts = np.bincount(labels_of(task, split, chosen), minlength=len(task.labels))
            assert counts.min() >= 2
    band = np.bincount(labels_of(suite.tasks[0], "train", small.train["band"]), minlength=4)
    assert band.tolist() == [2, 2, 2, 2]  # the set's task with most classes gets exactly k
    assert small.train["band"] == small.train["loudness"]  # one subset serves the tasks of one probe set
    larger = stratified_subset(suite, 4, seed=3, within=small)
    assert set(small.clips()) < set(larger.clips())
    assert stratified_subset(suite, 2, seed=3) == small
    assert stratified_subset(suite, 2, seed=4) != small


def test_every_clip_of_a_small_class_is_taken_when_k_exceeds_it():
    suite = tone_suite(per_class_train=3, per_class_test=2)
    subset = stratified_subset(suite, 10)
    assert subset.clips() == full_subset(suite).clips()


def merged_pair():
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    merged = tiny_model(seed=0)
    with torch.no_grad():
        merged.load_state_dict({k: 0.7 * v + 0.3 * second.state_dict()[k] for k, v in first.state_dict().items()})
    return encoder(first), encoder(second), encoder(merged)


def test_the_full_stage_equals_the_benchmark_scoring_after_quick_stages_reused_their_features():
    suite = tone_suite()
    first, second, merged = merged_pair()
    live = LiveProbes(suite, resamples=3, ladder=(1, 2))
    parents = live.parent(first), live.parent(second)
    steps = list(live.steps(merged, *parents, 0.3, plan=[1, 2, 0], chunk=7))  # features in chunks of 7 clips
    stages = [scores for _, scores in steps if scores is not None]
    assert [s.stage for s in stages] == ["quick", "2 per class", "full"]
    assert len(steps) > len(stages) + 10 and [f for f, _ in steps] == sorted(f for f, _ in steps)
    benchmark = ProbeSuite(suite.clips, suite.tasks).score(merged, seed=0)  # what `merging benchmark` runs per row
    full = stages[-1]
    assert full.accuracy == benchmark.accuracy
    assert {t: e.test_clips for t, e in full.tasks.items()} == benchmark.test_clips
    for task, estimate in full.tasks.items():
        assert (estimate.low, estimate.high) == pytest.approx(benchmark.interval(task=task))
    assert live.parent(first).full == ProbeSuite(suite.clips, suite.tasks).score(first, seed=0).accuracy


def test_stages_report_their_clips_intervals_and_summary():
    suite = tone_suite()
    first, second, merged = merged_pair()
    live = LiveProbes(suite, resamples=3, ladder=(1, 2))
    quick = next(live.stages(merged, live.parent(first), live.parent(second), 0.3, plan=[1, 0]))
    subset = live.subset(1)
    assert quick.stage == "quick" and quick.clips == len(subset.clips())
    summary = quick.summary()
    assert summary["stage"] == "quick"
    assert summary["test_clips"] == {task: len(subset.test[task]) for task in summary["scores"]}
    assert set(summary["intervals"]) == {"band", "loudness", "chord", "speech_avg", "music_avg", "avg"}
    for name, (low, high) in summary["intervals"].items():
        value = summary["scores"].get(name, summary.get(name))
        assert 0 <= low <= value <= high <= 100


def result(correct):
    return TaskResult(100.0 * sum(correct) / len(correct), tuple(correct))


def test_the_correction_adds_the_parents_gap_interpolated_by_position():
    merged, first, second = result([1, 1, 0, 0]), result([1, 0, 0, 0]), result([1, 1, 1, 0])
    estimate = corrected_estimate(merged, first, second, (45.0, 85.0), 0.25, 0.0)
    gap = 0.75 * (45 - 25) + 0.25 * (85 - 75)
    assert estimate.score == pytest.approx(50 + gap)
    assert estimate.raw == 50 and estimate.test_clips == 4
    assert estimate.low < estimate.score < estimate.high
    wider = corrected_estimate(merged, first, second, (45.0, 85.0), 0.25, 40.0)
    assert wider.high - wider.low > estimate.high - estimate.low
    clipped = corrected_estimate(result([1, 1, 1, 1]), first, second, (100.0, 100.0), 0.5, 0.0)
    assert clipped.score == 100 and clipped.high == 100


def test_a_parent_is_estimated_exactly_by_its_own_gap():
    parent = result([1, 0, 1, 1, 0])
    estimate = corrected_estimate(parent, parent, result([0, 0, 1, 1, 1]), (71.0, 30.0), 0.0, 0.0)
    assert estimate.score == pytest.approx(71.0)


def test_the_plan_fits_the_quick_stage_to_the_budget_and_answers_with_the_full_suite_when_that_fits():
    suite = tone_suite()
    live = LiveProbes(suite, ladder=(1, 2, 4), budget_seconds=1.0)
    assert live.plan() == [1, 0]  # nothing measured yet: the smallest stage
    sizes = {k: len(live.subset(k).clips()) for k in (1, 2, 4)}
    live.clip_seconds = 1.0 / (sizes[2] + 1)
    assert live.plan()[0] == 2 and live.plan()[-1] == 0
    assert live.plan(budget_seconds=0.5)[0] == 1  # a budget shared with others' waiting requests
    live.clip_seconds = 1.0 / (sizes[1] + 1)
    assert live.plan()[0] == 1
    live.clip_seconds = 1.0 / (len(suite.clips) + 1)
    assert live.plan() == [0]
    live.budget_seconds = 1e-9
    assert live.plan()[0] == 1


def test_training_noise_is_measured_on_the_parents():
    suite = tone_suite()
    first, _, _ = merged_pair()
    live = LiveProbes(suite, resamples=4, ladder=(1,))
    parent = live.parent(first)
    live.calibrate(parent, 1)
    assert set(parent.train_variance[1]) == {"band", "loudness", "chord"}
    assert all(v >= 0 and math.isfinite(v) for v in parent.train_variance[1].values())
    assert parent.stage[1] == score_subset(suite, live.subset(1), parent.take, iterations=live.quick_iterations)


def test_probe_bars_draw_each_interval_and_test_clip_count():
    from viz.figures import probe_bars

    bars = probe_bars({"speech": {"keyword": 90.0, "pitch": 20.0}, "merged": {"keyword": 70.0, "pitch": 40.0}},
                      {"keyword": "speech", "pitch": "music"},
                      intervals={"merged": {"keyword": (60.0, 75.0), "pitch": (30.0, 52.0)}},
                      test_clips={"merged": {"keyword": 43, "pitch": 33}})
    merged = bars.data[1]
    assert list(merged.error_y.array) == [5.0, 12.0] and list(merged.error_y.arrayminus) == [10.0, 10.0]
    assert "n=43" in merged.text[0] and "n=33" in merged.text[1]
    assert bars.data[0].error_y.array is None


def test_the_tradeoff_curve_shows_both_methods_and_stars_the_merge_with_its_interval():
    from viz.figures import tradeoff_curve

    curves = {"linear": [{"alpha": 0.5, "speech_avg": 30, "music_avg": 36}],
              "permute": [{"alpha": 0.5, "speech_avg": 44, "music_avg": 43}]}
    fig = tradeoff_curve(curves, {"speech_avg": 50, "music_avg": 40, "speech_interval": (45, 58), "music_interval": (35, 41)})
    assert [d.name for d in fig.data] == ["linear", "permute", "this merge"]
    star = fig.data[-1]
    assert list(star.error_y.array) == [8] and list(star.error_y.arrayminus) == [5]
    assert list(star.error_x.array) == [1] and list(star.error_x.arrayminus) == [5]


def test_without_parents_a_stage_is_the_uncorrected_score_on_its_own_clips_and_its_features_carry_on():
    from merging.live import UNCORRECTED, ClipFeatures

    suite = tone_suite()
    first, second, merged = merged_pair()
    live = LiveProbes(suite, resamples=3, ladder=(1, 2))
    features = ClipFeatures(suite, merged)
    early = next(live.stages(merged, None, None, 0.3, plan=[1]))  # before the inputs are scored
    assert early.stage == UNCORRECTED and early.accuracy == {t: e.raw for t, e in early.tasks.items()}
    for task, estimate in early.tasks.items():
        assert 0 <= estimate.low <= estimate.score <= estimate.high <= 100 and estimate.high > estimate.low
    list(live.steps(merged, None, None, 0.3, plan=[1], features=features))
    computed = set(features.rows)
    later = [s for _, s in live.steps(merged, live.parent(first), live.parent(second), 0.3, plan=[1, 0],
                                      features=features) if s is not None]
    assert [s.stage for s in later] == ["quick", "full"] and computed <= set(features.rows)
    assert later[0].clips == len(live.subset(1).clips())  # the same clips' features, not computed again
