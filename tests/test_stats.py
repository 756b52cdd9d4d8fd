import numpy as np
import pytest

from merging.stats import average_interval, clip_sets, difference_interval, resampled_accuracies


def own(correct: dict) -> dict:
    """Each task on clips of its own (no two tasks share a clip)."""
    start, out = 0, {}
    for task, values in correct.items():
        out[task] = range(start, start + len(values))
        start += len(values)
    return out


def clips(n, accuracy, seed=0):
    rng = np.random.default_rng(seed)
    values = np.zeros(n, dtype=bool)
    values[rng.permutation(n)[:round(accuracy * n)]] = True
    return values


def test_interval_contains_the_point_estimate_and_is_about_the_binomial_width():
    correct = clips(200, 0.6)
    low, high = average_interval({"keyword": correct}, own({"keyword": correct}))
    assert low < 60.0 < high
    half_width = 1.96 * np.sqrt(0.6 * 0.4 / 200) * 100  # normal approximation: 6.8 points
    assert abs((high - low) / 2 - half_width) < 1.0


def test_interval_shrinks_with_more_clips():
    small = average_interval({"t": clips(50, 0.7)}, {"t": range(50)})
    large = average_interval({"t": clips(800, 0.7)}, {"t": range(800)})
    assert large[1] - large[0] < 0.6 * (small[1] - small[0])


def test_fixed_seed_is_reproducible_and_another_seed_differs():
    correct = {"a": clips(150, 0.4), "b": clips(200, 0.8, seed=1)}
    assert average_interval(correct, own(correct), seed=3) == average_interval(correct, own(correct), seed=3)
    assert average_interval(correct, own(correct), seed=3) != average_interval(correct, own(correct), seed=4)


def test_degenerate_tasks_give_zero_width_intervals():
    assert average_interval({"t": np.ones(120, bool)}, {"t": range(120)}) == (100.0, 100.0)
    assert average_interval({"t": np.zeros(120, bool)}, {"t": range(120)}) == (0.0, 0.0)


def test_tasks_on_their_own_clips_are_resampled_independently():
    a, b = clips(200, 0.5), clips(200, 0.5, seed=1)
    low, high = average_interval({"a": a, "b": b}, own({"a": a, "b": b}))
    single = average_interval({"a": a}, {"a": range(200)})
    # averaging two independent tasks narrows the interval by about √2
    assert 0.55 < (high - low) / (single[1] - single[0]) < 0.85
    # a task's resamples do not depend on which other tasks are present
    together = resampled_accuracies({"a": a, "b": b}, own({"a": a, "b": b}))["a"]
    assert np.array_equal(together, resampled_accuracies({"a": a}, {"a": range(200)})["a"])


def test_tasks_that_label_the_same_clips_are_resampled_together():
    same = {"keyword": range(200), "speaker": range(200)}
    a = clips(200, 0.5)
    # two tasks right on the same clips: the average is as uncertain as one task, not √2 less
    together = average_interval({"keyword": a, "speaker": a}, same)
    single = average_interval({"keyword": a}, same)
    assert together == pytest.approx(single)
    apart = average_interval({"keyword": a, "speaker": a}, own({"keyword": a, "speaker": a}))
    assert apart[1] - apart[0] < 0.8 * (together[1] - together[0])
    draws = resampled_accuracies({"keyword": a, "speaker": ~a}, same)
    assert np.allclose(draws["keyword"] + draws["speaker"], 100.0)  # one draw of clips serves both
    assert clip_sets({**same, "pitch": range(200, 300)}) == {tuple(range(200)): ["keyword", "speaker"],
                                                             tuple(range(200, 300)): ["pitch"]}
    with pytest.raises(ValueError, match="share some test clips but not all"):
        clip_sets({"keyword": range(200), "speaker": range(100, 300)})


def test_paired_difference_of_identical_scores_is_zero_and_of_a_clear_gap_excludes_zero():
    a = clips(200, 0.6)
    assert difference_interval({"t": a}, {"t": a}, {"t": range(200)}) == (0.0, 0.0)
    better = a | clips(200, 0.3, seed=5)
    low, high = difference_interval({"t": better}, {"t": a}, {"t": range(200)})
    assert 0 < low <= high
    with pytest.raises(ValueError):
        difference_interval({"t": a}, {"t": a[:100]}, {"t": range(200)})


def test_empty_input_is_refused():
    with pytest.raises(ValueError):
        average_interval({}, {})
    with pytest.raises(ValueError):
        average_interval({"t": []}, {"t": []})
