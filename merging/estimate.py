"""What a stage's scores say about the full suite's, and how sure they are.

A stage below the full suite scores the merge on a stratified subset: probes fitted on k training clips per class,
scored on k test clips per class. Every stage estimates one thing: the merge's full-suite score (the benchmark's
number). The full suite would mostly score higher (more training clips) by a gap that depends on the merge.
*References*, merges whose full-suite scores are known (the inputs, and every merge already scored on the full
suite) scored on the same subset, show that gap: per task, a line through their (subset score, gap) points predicts
the merge's gap (their mean gap when they are few or all alike). The error is measured the same way: each reference
predicted from the others (leave one out) leaves a residual. A task's interval is the estimate ± a t quantile times
the residuals' root mean square (never below the binomial spread of the merge's own subset score); a domain's
average uses the residuals averaged over its tasks, so tasks that err together stay together. A difference between
two merges at one stage is the paired bootstrap of their subset scores on the same clips, its variance inflated by
how much more the references' estimated differences err than their own paired bootstrap explains. The full suite's intervals are the benchmark's: the
bootstrap over its test clips, tasks that label the same clips resampled together.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from .stats import RESAMPLES, average_interval, difference_interval, resampled_accuracies

LEVEL = 0.95
MIN_SLOPE_REFERENCES = 5  # fewer references: the mean gap, not a line
AVERAGES = {"speech_avg": "speech", "music_avg": "music", "avg": None}  # a summary's name -> its domain


@dataclass(frozen=True)
class Estimate:
    """A score at one stage: the estimate of the full-suite accuracy (%), its 95 % interval, the test clips it rests
    on, and the uncorrected accuracy on this stage's own clips."""

    score: float
    low: float
    high: float
    test_clips: int
    raw: float


@dataclass(frozen=True)
class Reference:
    """A merge (or an input) with known full-suite results and its results on one stage's subset (per task, each a
    `live.TaskResult`: accuracy, per-clip correctness and the clips)."""

    key: str
    full: Mapping
    subset: Mapping


def tasks_of(domains: Mapping[str, str], domain: str | None) -> list[str]:
    return [task for task, d in domains.items() if domain is None or d == domain]


def t_quantile(count: int) -> float:
    """The two-sided 95 % quantile for an error spread measured on `count` residuals (normal when there are many)."""
    return float(scipy_stats.t.ppf(0.5 + LEVEL / 2, max(count - 1, 1)))


def _gap_line(subset: np.ndarray, gap: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the gap as a function of the subset score: a least-squares line when there are enough
    references spread apart, else their mean gap."""
    if len(subset) >= MIN_SLOPE_REFERENCES and np.ptp(subset) > 1.0:
        slope, intercept = np.polyfit(subset, gap, 1)
        return float(intercept), float(slope)
    return float(np.mean(gap)), 0.0


@dataclass(frozen=True)
class GapModel:
    """One task's predicted gap (full − subset) from its subset score, and the references' leave-one-out errors of
    the full-suite estimate it gives (estimate − truth)."""

    intercept: float
    slope: float
    residuals: np.ndarray

    @classmethod
    def fit(cls, subset: Sequence[float], full: Sequence[float]) -> GapModel:
        subset, gap = np.asarray(subset, float), np.asarray(full, float) - np.asarray(subset, float)
        intercept, slope = _gap_line(subset, gap)
        residuals = []
        for i in range(len(subset)):
            others = np.arange(len(subset)) != i
            a, b = _gap_line(subset[others], gap[others])
            residuals.append(a + b * subset[i] - gap[i])
        return cls(intercept, slope, np.asarray(residuals))

    def predict(self, subset: float) -> float:
        return subset + self.intercept + self.slope * subset


def _clamp(value: float) -> float:
    return min(max(value, 0.0), 100.0)


def _binomial_sd(accuracy: float, n: int) -> float:
    p = min(max(accuracy / 100, 0.5 / n), 1 - 0.5 / n)  # never zero: 0/n correct still leaves doubt
    return 100 * math.sqrt(p * (1 - p) / n)


def draws(results: Mapping, tasks: Sequence[str], seed: int = 0) -> np.ndarray:
    """Bootstrap draws of the mean accuracy over `tasks` (tasks on the same clips resampled together). Merges
    scored on the same clips get the same resampled clips, so their draws subtract as a paired bootstrap."""
    resampled = resampled_accuracies({t: results[t].correct for t in tasks}, {t: results[t].clips for t in tasks},
                                     resamples=RESAMPLES // 4, seed=seed)
    return np.mean([resampled[t] for t in tasks], axis=0)


def corrected(results: Mapping, references: Sequence[Reference], domains: Mapping[str, str]
              ) -> tuple[dict[str, Estimate], dict[str, Estimate], dict[str, GapModel]]:
    """Per task and per average (`AVERAGES`): the full-suite estimate from the merge's subset `results` and the
    references on the same subset (at least two), with their 95 % intervals; and the gap models used."""
    models = {t: GapModel.fit([r.subset[t].accuracy for r in references], [r.full[t].accuracy for r in references])
              for t in domains}
    q = t_quantile(len(references))
    tasks = {}
    for t, model in models.items():
        raw, n = results[t].accuracy, len(results[t].correct)
        score = _clamp(model.predict(raw))
        spread = max(math.sqrt(float(np.mean(model.residuals ** 2))), _binomial_sd(raw, n))
        tasks[t] = Estimate(score, _clamp(score - q * spread), _clamp(score + q * spread), n, raw)
    averages = {}
    for name, domain in AVERAGES.items():
        chosen = tasks_of(domains, domain)
        score = float(np.mean([tasks[t].score for t in chosen]))
        residuals = np.mean([models[t].residuals for t in chosen], axis=0)
        spread = max(math.sqrt(float(np.mean(residuals ** 2))), float(np.std(draws(results, chosen), ddof=1)))
        averages[name] = Estimate(score, _clamp(score - q * spread), _clamp(score + q * spread),
                                  sum(tasks[t].test_clips for t in chosen), float(np.mean([tasks[t].raw for t in chosen])))
    return tasks, averages, models


def bootstrapped(results: Mapping, domains: Mapping[str, str], seed: int = 0) -> tuple[dict, dict]:
    """Per task and per average: the scores of `results` with their percentile bootstrap intervals over the test
    clips (tasks that label the same clips resampled together): the full suite's intervals, the benchmark's."""
    clips = {t: results[t].clips for t in domains}
    tasks = {t: Estimate(results[t].accuracy, *average_interval({t: results[t].correct}, clips, seed=seed),
                         len(results[t].correct), results[t].accuracy) for t in domains}
    averages = {}
    for name, domain in AVERAGES.items():
        chosen = tasks_of(domains, domain)
        score = float(np.mean([results[t].accuracy for t in chosen]))
        low, high = average_interval({t: results[t].correct for t in chosen}, clips, seed=seed)
        averages[name] = Estimate(score, low, high, sum(len(results[t].correct) for t in chosen), score)
    return tasks, averages


def inflation(references: Sequence[Reference], models: Mapping[str, GapModel], tasks: Sequence[str]) -> float:
    """How much more the references' estimated differences err than sampling the same clips explains (at least 1):
    their paired residual differences' mean square over their paired bootstrap variance, for a mean over `tasks`."""
    residuals = np.mean([models[t].residuals for t in tasks], axis=0)
    sampled = [draws(r.subset, tasks) for r in references]
    pairs = [(i, j) for i in range(len(references)) for j in range(i + 1, len(references))]
    paired = np.mean([np.var(sampled[i] - sampled[j], ddof=1) for i, j in pairs]) if pairs else 0.0
    squared = np.mean([(residuals[i] - residuals[j]) ** 2 for i, j in pairs]) if pairs else 0.0
    return max(float(squared / paired), 1.0) if paired > 0 else 1.0


def difference(first: Mapping, second: Mapping, estimates: tuple[float, float], tasks: Sequence[str],
               references: Sequence[Reference], models: Mapping[str, GapModel]) -> tuple[float, float, float]:
    """(difference, low, high) of two merges' full-suite estimates `estimates` over `tasks`, both scored at one stage
    (`first`, `second`: their results on the same subset; `references` and `models`: that stage's): the paired
    bootstrap of their subset scores, its variance inflated as the references show (merges that answer alike on every
    clip differ by nothing)."""
    paired = float(np.var(draws(first, tasks) - draws(second, tasks), ddof=1))
    spread = math.sqrt(inflation(references, models, tasks) * paired)
    value = estimates[0] - estimates[1]
    q = t_quantile(len(references))
    return value, value - q * spread, value + q * spread


def full_difference(first: Mapping, second: Mapping, tasks: Sequence[str], seed: int = 0) -> tuple[float, float, float]:
    """(difference, low, high) of two full-suite results over `tasks`: the paired bootstrap over the test clips."""
    value = float(np.mean([first[t].accuracy - second[t].accuracy for t in tasks]))
    low, high = difference_interval({t: first[t].correct for t in tasks}, {t: second[t].correct for t in tasks},
                                    {t: first[t].clips for t in tasks}, seed=seed)
    return value, low, high
