import math

import numpy as np
import pytest
import torch

from merging.encoders import Encoder
from merging.live import (UNCORRECTED, ClipFeatures, LiveProbes, full_subset, score_subset, stage_difference,
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
    live = LiveProbes(suite, ladder=(1, 2))
    live.parent(first), live.parent(second)  # the references
    steps = list(live.steps(merged, plan=[1, 2, 0], chunk=7))  # features in chunks of 7 clips
    stages = [scores for _, scores in steps if scores is not None]
    assert [s.stage for s in stages] == ["quick", "2 per class", "full"]
    assert len(steps) > len(stages) + 10 and [f for f, _ in steps] == sorted(f for f, _ in steps)
    benchmark = ProbeSuite(suite.clips, suite.tasks).score(merged, seed=0)  # what `merging benchmark` runs per row
    full = stages[-1]
    assert full.accuracy == benchmark.accuracy
    assert {t: e.test_clips for t, e in full.tasks.items()} == benchmark.test_clips
    for task, estimate in full.tasks.items():
        assert (estimate.low, estimate.high) == pytest.approx(benchmark.interval(task=task))
    for domain in ("speech", "music", None):  # averages: the benchmark's intervals, same clips resampled together
        assert (full.average(domain).low, full.average(domain).high) == pytest.approx(benchmark.interval(domain))
    assert live.parent(first).full == ProbeSuite(suite.clips, suite.tasks).score(first, seed=0).accuracy


def test_stages_report_their_clips_intervals_references_and_summary():
    suite = tone_suite()
    first, second, merged = merged_pair()
    live = LiveProbes(suite, ladder=(1, 2))
    live.parent(first), live.parent(second)
    quick = next(live.stages(merged, plan=[1, 0]))
    subset = live.subset(1)
    assert quick.stage == "quick" and quick.clips == len(subset.clips()) and len(quick.references) == 2
    summary = quick.summary()
    assert summary["stage"] == "quick" and summary["references"] == 2
    assert summary["test_clips"] == {task: len(subset.test[task]) for task in summary["scores"]}
    assert set(summary["intervals"]) == {"band", "loudness", "chord", "speech_avg", "music_avg", "avg"}
    for name, (low, high) in summary["intervals"].items():
        value = summary["scores"].get(name, summary.get(name))
        assert 0 <= low <= value <= high <= 100


def returned(generator):
    """A generator's return value, once it has run to its end."""
    try:
        while True:
            next(generator)
    except StopIteration as done:
        return done.value


def test_a_merge_scored_on_the_full_suite_becomes_a_reference_for_every_ladder_stage():
    suite = tone_suite()
    first, second, merged = merged_pair()
    live = LiveProbes(suite, ladder=(1, 2))
    live.parent(first)
    full = list(live.stages(merged, plan=[0], key="merge A"))[-1]
    assert set(full.ladder) == {1, 2}
    rows = ProbeSuite(suite.clips, suite.tasks).features(merged)
    assert full.ladder[1] == score_subset(suite, live.subset(1), lambda idx: rows[list(idx)],
                                          iterations=live.quick_iterations)
    width = merged.model.config.hidden_size
    references = returned(live.references(1, width))  # the input's subset scores are computed when first needed
    assert len(references) == 2 and "merge A" in {r.key for r in references}
    assert [r.key for r in returned(live.references(1, width, exclude="merge A"))] == [
        r.key for r in references if r.key != "merge A"]
    alone = next(live.stages(merged, plan=[1], key="merge A"))  # never corrected by itself: one reference left
    assert alone.stage == UNCORRECTED and len(alone.references) == 0


def test_with_fewer_than_two_references_a_stage_is_uncorrected_and_its_features_carry_on():
    suite = tone_suite()
    first, second, merged = merged_pair()
    live = LiveProbes(suite, ladder=(1, 2))
    features = ClipFeatures(suite, merged)
    early = next(live.stages(merged, plan=[1]))  # before the inputs are scored
    assert early.stage == UNCORRECTED and early.accuracy == {t: e.raw for t, e in early.tasks.items()}
    for task, estimate in early.tasks.items():
        assert 0 <= estimate.low <= estimate.score <= estimate.high <= 100
    list(live.steps(merged, plan=[1], features=features))
    computed = set(features.rows)
    live.parent(first), live.parent(second)
    later = [s for _, s in live.steps(merged, plan=[1, 0], features=features) if s is not None]
    assert [s.stage for s in later] == ["quick", "full"] and computed <= set(features.rows)


def test_a_difference_at_one_stage_is_paired_and_at_the_full_suite_is_the_benchmarks():
    from merging.benchmark import Row, difference

    suite = tone_suite()
    first, second, merged = merged_pair()
    live = LiveProbes(suite, ladder=(1, 2))
    live.parent(first), live.parent(second)
    a = list(live.stages(merged, plan=[1, 0], key="a", remember=False))
    b = list(live.stages(first, plan=[1, 0], key="b", remember=False))
    value, low, high = stage_difference(a[0], a[0])
    assert value == 0 and low <= 0 <= high and high - low < 1e-9 + (a[0].average().high - a[0].average().low)
    value, low, high = stage_difference(a[-1], b[-1], "music")
    rows = [Row(name, None, None, ProbeSuite(suite.clips, suite.tasks).score(enc, seed=0)) for name, enc in
            (("a", merged), ("b", first))]
    expected, (exp_low, exp_high) = difference(rows[0], rows[1], "music")
    assert (value, low, high) == pytest.approx((expected, exp_low, exp_high))


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
