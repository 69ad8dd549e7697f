"""The comparison table a sweep ends with: every configuration beside the baselines, over seeds.

One row per configuration (the trial key without seed and digest), then one row per baseline:
exact match and ROUGE-L overall (percent), mean ± sample standard deviation over the seeds that
finished. The last column compares each configuration with the best baseline and says whether
the difference is within seed noise (|difference| <= the two spreads combined in quadrature),
which the paper asks every instruction-tuning claim to report. Plain Python: no Ray, no MLflow.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from itstudy.metrics import METRICS
from itstudy.tables import mean_sd, text_table

VERSUS = "vs best baseline (exact_match)"


@dataclass(frozen=True)
class Row:
    """One line of the table: a label and each seed's final metrics."""

    label: str
    runs: tuple[dict[str, float], ...]
    """Final metrics of every finished seed."""
    expected: int
    """Seeds planned; more than len(runs) when some failed or did not run."""
    is_baseline: bool = False

    def values(self, metric: str) -> list[float]:
        return [run[metric] for run in self.runs if metric in run]

    def seeds(self) -> str:
        """How many seeds finished, as n, or n/expected when some did not."""
        return f"{len(self.runs)}" if len(self.runs) == self.expected else f"{len(self.runs)}/{self.expected}"


def mean_spread(values: Sequence[float]) -> tuple[float, float] | None:
    """(mean, sample std; 0 for one value), or None without values."""
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _versus(row: Row, best: Row | None) -> str:
    mine, theirs = mean_spread(row.values("exact_match")), best and mean_spread(best.values("exact_match"))
    if row.is_baseline or mine is None or not theirs:
        return ""
    difference = mine[0] - theirs[0]
    noise = math.hypot(mine[1], theirs[1])
    verdict = "within seed noise" if abs(difference) <= noise else "beyond seed noise"
    return f"{difference:+.1f} vs {best.label} ({verdict})"


def format_table(title: str, rows: Sequence[Row]) -> str:
    """The table as text; `rows` in display order, configurations first, baselines after."""
    baselines = [row for row in rows if row.is_baseline and row.values("exact_match")]
    best = max(baselines, key=lambda row: statistics.fmean(row.values("exact_match")), default=None)
    frame = pd.DataFrame(
        [
            {
                "configuration": row.label,
                "seeds": row.seeds(),
                **{metric: mean_sd(row.values(metric)) for metric in METRICS},
                VERSUS: _versus(row, best),
            }
            for row in rows
        ],
        columns=["configuration", "seeds", *METRICS, VERSUS],
    )
    return text_table(frame, title)
