"""Intervals against truth: synthetic per-clip correctness with known accuracies and shared clip sets, many seeded
draws, coverage within its binomial tolerance."""
from __future__ import annotations

import numpy as np
import pytest

from merging.estimate import GapModel, Reference, corrected, difference, draws
from merging.live import TaskResult
from merging.stats import average_interval, difference_interval

DRAWS = 300
# coverage of a 95 % interval over DRAWS independent draws: within 3 binomial standard deviations of 0.95
TOLERANCE = 3 * np.sqrt(0.95 * 0.05 / DRAWS)


def shared_clips(rng, n: int, p: float, flip: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Two tasks labelling the same n clips: right on a clip when it is easy (probability p), each flipped with
    probability `flip` (so they err together); both have population accuracy p(1 − flip) + (1 − p)flip."""
    easy = rng.random(n) < p
    return easy ^ (rng.random(n) < flip), easy ^ (rng.random(n) < flip)


def test_the_average_over_tasks_on_the_same_clips_covers_the_population_average_only_resampled_together():
    rng = np.random.default_rng(0)
    p, flip, n = 0.6, 0.05, 120
    truth = 100 * (p * (1 - flip) + (1 - p) * flip)
    together = apart = 0
    for seed in range(DRAWS):
        a, b = shared_clips(rng, n, p, flip)
        low, high = average_interval({"keyword": a, "speaker": b}, {"keyword": range(n), "speaker": range(n)}, seed=seed)
        together += low <= truth <= high
        low, high = average_interval({"keyword": a, "speaker": b}, {"keyword": range(n), "speaker": range(n, 2 * n)},
                                     seed=seed)
        apart += low <= truth <= high
    assert abs(together / DRAWS - 0.95) <= TOLERANCE + 0.01  # the percentile bootstrap at n = 120
    assert apart / DRAWS < together / DRAWS - 0.05  # resampled as if independent, the interval is too narrow


def test_the_paired_difference_covers_the_true_difference():
    rng = np.random.default_rng(1)
    n, covered = 200, 0
    for seed in range(DRAWS):
        first = rng.random(n) < 0.7
        second = first.copy()
        changed = rng.random(n) < 0.2  # the second merge answers a fifth of the clips afresh, right with 0.55
        second[changed] = rng.random(changed.sum()) < 0.55
        truth = 100 * 0.2 * (0.7 - 0.55)  # population difference of the first over the second
        low, high = difference_interval({"t": first}, {"t": second}, {"t": range(n)}, seed=seed)
        covered += low <= truth <= high
    assert abs(covered / DRAWS - 0.95) <= TOLERANCE + 0.01


def result(correct: np.ndarray, start: int = 0) -> TaskResult:
    return TaskResult(100.0 * correct.mean(), tuple(bool(c) for c in correct), tuple(range(start, start + len(correct))))


def subset_score(rng, full: float, n: int) -> np.ndarray:
    """A merge's subset results: few training clips cost it a gap that shrinks as it does better, then n test clips."""
    expected = full - (14 - 0.12 * full) + rng.normal(0, 1.5)
    return rng.random(n) < np.clip(expected, 1, 99) / 100


def test_corrected_estimates_cover_the_full_suite_score_of_merges_no_reference_was_fitted_on():
    rng = np.random.default_rng(2)
    domains, n, hits, averages, widths, slopes = {"t": "speech", "u": "music"}, 60, 0, 0, [], []
    for _ in range(DRAWS // 2):
        fulls = rng.uniform(30, 90, size=(15, 2))
        references = []
        for i, (ft, fu) in enumerate(fulls[:14]):
            subset = {"t": result(subset_score(rng, ft, n)), "u": result(subset_score(rng, fu, n), n)}
            full = {"t": TaskResult(ft, (), ()), "u": TaskResult(fu, (), ())}
            references.append(Reference(str(i), full, subset))
        ft, fu = fulls[14]
        merge = {"t": result(subset_score(rng, ft, n)), "u": result(subset_score(rng, fu, n), n)}
        tasks, avgs, models = corrected(merge, references, domains)
        hits += int(tasks["t"].low <= ft <= tasks["t"].high) + int(tasks["u"].low <= fu <= tasks["u"].high)
        averages += avgs["avg"].low <= (ft + fu) / 2 <= avgs["avg"].high
        widths.append(tasks["t"].high - tasks["t"].low)
        slopes.append(models["t"].slope)
    # the gap's dependence on the subset score: −0.107 without noise, −0.2 with the shrinkage the subset's own
    # sampling noise calls for (the line predicts the full suite from a noisy score)
    assert np.mean(slopes) == pytest.approx(-0.2, abs=0.05)
    assert hits / DRAWS >= 0.95 - TOLERANCE and averages / (DRAWS // 2) >= 0.95 - 2 * TOLERANCE
    assert np.mean(widths) < 40  # and the intervals still say something


def test_a_reference_is_never_its_own_evidence_and_few_references_give_the_mean_gap():
    model = GapModel.fit([50.0, 60.0, 70.0], [60.0, 70.0, 80.0])
    assert model.slope == 0 and model.intercept == pytest.approx(10) and np.allclose(model.residuals, 0)
    odd = GapModel.fit([50.0, 60.0, 70.0], [60.0, 70.0, 95.0])
    assert odd.residuals[2] == pytest.approx(10 - 25)  # predicted from the other two alone


def test_merges_that_answer_alike_differ_by_nothing_and_a_clear_gap_is_called():
    rng = np.random.default_rng(3)
    n = 80
    references = []
    for i, accuracy in enumerate(np.linspace(0.3, 0.9, 8)):
        correct = rng.random(n) < accuracy
        references.append(Reference(str(i), {"t": TaskResult(100 * accuracy + 8, (), ())}, {"t": result(correct)}))
    models = {"t": GapModel.fit([r.subset["t"].accuracy for r in references], [r.full["t"].accuracy for r in references])}
    same = {"t": result(rng.random(n) < 0.5)}
    assert difference(same, same, (50.0, 50.0), ["t"], references, models) == (0.0, 0.0, 0.0)
    better = {"t": result(np.ones(n, bool))}
    value, low, high = difference(better, same, (100.0, 50.0), ["t"], references, models)
    assert value == 50 and 0 < low < value < high
    assert draws(same, ["t"]).shape == (500,)
