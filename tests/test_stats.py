import numpy as np
import pytest

from merging.stats import average_interval, difference_interval, resampled_accuracies


def clips(n, accuracy, seed=0):
    rng = np.random.default_rng(seed)
    values = np.zeros(n, dtype=bool)
    values[rng.permutation(n)[:round(accuracy * n)]] = True
    return values


def test_interval_contains_the_point_estimate_and_is_about_the_binomial_width():
    correct = clips(200, 0.6)
    low, high = average_interval({"keyword": correct})
    assert low < 60.0 < high
    half_width = 1.96 * np.sqrt(0.6 * 0.4 / 200) * 100  # normal approximation: 6.8 points
    assert abs((high - low) / 2 - half_width) < 1.0


def test_interval_shrinks_with_more_clips():
    small = average_interval({"t": clips(50, 0.7)})
    large = average_interval({"t": clips(800, 0.7)})
    assert large[1] - large[0] < 0.6 * (small[1] - small[0])


def test_fixed_seed_is_reproducible_and_another_seed_differs():
    correct = {"a": clips(150, 0.4), "b": clips(200, 0.8, seed=1)}
    assert average_interval(correct, seed=3) == average_interval(correct, seed=3)
    assert average_interval(correct, seed=3) != average_interval(correct, seed=4)


def test_degenerate_tasks_give_zero_width_intervals():
    assert average_interval({"t": np.ones(120, bool)}) == (100.0, 100.0)
    assert average_interval({"t": np.zeros(120, bool)}) == (0.0, 0.0)


def test_average_resamples_each_task_independently():
    a, b = clips(200, 0.5), clips(200, 0.5, seed=1)
    low, high = average_interval({"a": a, "b": b})
    single = average_interval({"a": a})
    # averaging two independent tasks narrows the interval by about √2
    assert 0.55 < (high - low) / (single[1] - single[0]) < 0.85
    # a task's resamples do not depend on which other tasks are present
    together = resampled_accuracies({"a": a, "b": b})["a"]
    assert np.array_equal(together, resampled_accuracies({"a": a})["a"])
    assert not np.array_equal(resampled_accuracies({"a": a})["a"], resampled_accuracies({"b": a})["b"])


def test_paired_difference_of_identical_scores_is_zero_and_of_a_clear_gap_excludes_zero():
    a = clips(200, 0.6)
    assert difference_interval({"t": a}, {"t": a}) == (0.0, 0.0)
    better = a | clips(200, 0.3, seed=5)
    low, high = difference_interval({"t": better}, {"t": a})
    assert 0 < low <= high
    with pytest.raises(ValueError):
        difference_interval({"t": a}, {"t": a[:100]})


def test_empty_input_is_refused():
    with pytest.raises(ValueError):
        average_interval({})
    with pytest.raises(ValueError):
        average_interval({"t": []})
