"""Means, confidence intervals and verdicts over test tasks and seeds: one rule for the report and
the table a sweep prints. Plain numpy: no Ray, no MLflow.

A condition (a variant at a training size, or a baseline) is scored as a matrix: one row per test
task, one column per seed, each cell a percentage (EM or ROUGE-L); NaN marks a missing run or task.

- Mean: the mean over all present (task, seed) cells.
- 95% confidence interval: a two-way percentile bootstrap. Each resample draws the tasks with
  replacement and, independently, the seeds with replacement, and takes the mean of the crossed
  cells, so the interval carries both task-sampling and seed (training) noise.
- Seed spread: the standard deviation, across seeds, of each seed's mean over tasks.
- A paired difference (variant minus original, or model minus baseline) is the same estimate on
  the cell-wise difference matrix, so tasks and seeds are paired before resampling.
- Verdict: equivalent when the whole 95% interval lies inside [-margin, +margin]; otherwise better
  or worse when the interval excludes 0; otherwise inconclusive.

Refuses matrices of different shapes for a paired difference. Everything is seeded: the same
scores give the same intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
DEFAULT_MARGIN = 2.0

METHOD = (
    f"Mean over (task, seed) cells. {CONFIDENCE:.0%} CI: percentile bootstrap with "
    f"{BOOTSTRAP_SAMPLES} resamples that draw test tasks and seeds independently with replacement "
    f"(numpy seed {BOOTSTRAP_SEED}). Seed sd: standard deviation across seeds of each seed's task mean. "
    "Differences are paired by task and seed before resampling."
)


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval and the spread over seeds (all in percent points)."""

    mean: float
    ci_low: float
    ci_high: float
    seed_sd: float
    """NaN with fewer than two seeds."""
    n_tasks: int
    n_seeds: int

    @property
    def cells(self) -> int:
        return self.n_tasks * self.n_seeds

    def text(self) -> str:
        """`43.1 [40.2, 45.9]`, the form used in every table."""
        if math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.1f} [{self.ci_low:.1f}, {self.ci_high:.1f}]"


def _bootstrap_means(scores: np.ndarray, samples: int, seed: int) -> np.ndarray:
    # Written by hand because scipy.stats.bootstrap resamples one axis of paired observations;
    # here tasks and seeds are crossed factors resampled independently. Drawing how often each
    # task and seed is picked, instead of index arrays, lets one einsum compute every resample's
    # mean, NaNs included.
    rng = np.random.default_rng(seed)
    task_counts = _draw_counts(rng, scores.shape[0], samples)
    seed_counts = _draw_counts(rng, scores.shape[1], samples)
    present = ~np.isnan(scores)
    total = np.einsum("bt,ts,bs->b", task_counts, np.where(present, scores, 0.0), seed_counts)
    weight = np.einsum("bt,ts,bs->b", task_counts, present.astype(float), seed_counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / weight


def _draw_counts(rng: np.random.Generator, n: int, samples: int) -> np.ndarray:
    """samples x n: how often each of n items is drawn in n draws with replacement."""
    # bincount over offset indices is ten times faster than rng.multinomial for this shape.
    picks = rng.integers(0, n, size=(samples, n)) + n * np.arange(samples)[:, None]
    return np.bincount(picks.ravel(), minlength=samples * n).reshape(samples, n)


def estimate(scores: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> Estimate:
    """Mean, bootstrap CI and seed spread of a (tasks x seeds) score matrix with NaN for missing cells."""
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2:
        raise ValueError(f"scores: expected a (tasks x seeds) matrix, got shape {scores.shape}")
    scores = scores[~np.all(np.isnan(scores), axis=1)]  # tasks with no run at all
    if scores.size:
        scores = scores[:, ~np.all(np.isnan(scores), axis=0)]  # seeds with no task at all
    if not scores.size:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0, 0)
    n_tasks, n_seeds = scores.shape
    means = _bootstrap_means(scores, samples, seed)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.nanpercentile(means, [tail, 100 - tail])
    seed_means = np.nanmean(scores, axis=0)
    seed_sd = float(np.std(seed_means, ddof=1)) if n_seeds > 1 else math.nan
    return Estimate(float(np.nanmean(scores)), float(low), float(high), seed_sd, n_tasks, n_seeds)


def paired_difference(
    scores: np.ndarray, reference: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> Estimate:
    """`scores - reference`, paired cell by cell (same task, same seed) before resampling."""
    scores, reference = np.asarray(scores, dtype=float), np.asarray(reference, dtype=float)
    if scores.shape != reference.shape:
        raise ValueError(f"paired difference: shapes {scores.shape} and {reference.shape} do not pair by task and seed")
    return estimate(scores - reference, samples, seed)


def verdict(difference: Estimate, margin: float = DEFAULT_MARGIN, unit: str = "EM") -> str:
    """Wording of a paired difference against an equivalence margin of ±margin points."""
    if difference.cells < 2:
        return "inconclusive" if difference.cells else "no paired runs"
    if -margin <= difference.ci_low and difference.ci_high <= margin:
        return f"equivalent within ±{margin:g} {unit}"
    if difference.ci_low > 0:
        return "better"
    if difference.ci_high < 0:
        return "worse"
    return "inconclusive"
