"""The comparison table a sweep ends with: every configuration beside the baselines, over seeds.

One row per configuration (the trial key without seed and digest), then one row per baseline:
exact match, ROUGE-L and the label-space rate overall (percent; rank-classification EM too when
any run logged it), mean ± sample standard deviation over the seeds that finished. The last
column compares each configuration with the best baseline by the report's rule
(`itstudy.stats`): the difference in exact match paired by test task and seed, its 95% bootstrap
CI over tasks and seeds, and the verdict (equivalent within the margin, better, worse,
inconclusive). The paired tasks are the classification test tasks, the ones every baseline
scores. Every figure is from the test tasks, and the title says so: the dev figures a sweep
chose on (`dev_<metric>`) are not shown. Plain Python: no Ray, no MLflow.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from itstudy.metrics import METRICS
from itstudy.stats import paired_difference, verdict
from itstudy.tables import mean_sd, text_table

FORMAT_METRICS = ("label_space_rate", "rank_exact_match")
"""Format metrics beside EM and ROUGE-L, in trials.csv and in the table."""
WHEN_LOGGED = ("rank_exact_match",)
"""Columns the table shows only when a run logged them (model-free baselines have no rank EM)."""
VERSUS = "vs best baseline (EM, paired by task and seed, 95% CI)"
SPLIT_NOTE = "test tasks; nothing was chosen on them"


@dataclass(frozen=True)
class Row:
    """One line of the table: a label and each seed's final metrics."""

    label: str
    runs: dict[int, dict[str, float]]
    """Final metrics (overall and `<metric>_for_<task>`) of every finished seed, by seed."""
    expected: int
    """Seeds planned; more than len(runs) when some failed or did not run."""
    is_baseline: bool = False

    def values(self, metric: str) -> list[float]:
        return [run[metric] for run in self.runs.values() if metric in run]

    def seeds(self) -> str:
        """How many seeds finished, as n, or n/expected when some did not."""
        return f"{len(self.runs)}" if len(self.runs) == self.expected else f"{len(self.runs)}/{self.expected}"

    def task_matrix(self, tasks: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        """tasks x seeds exact match, NaN where a seed did not finish or did not score a task."""
        return np.array(
            [[self.runs.get(seed, {}).get(f"exact_match_for_{task}", np.nan) for seed in seeds] for task in tasks],
            dtype=float,
        ).reshape(len(tasks), len(seeds))


def _versus(row: Row, best: Row | None, tasks: Sequence[str]) -> str:
    if row.is_baseline or best is None or not tasks or not row.runs:
        return ""
    seeds = sorted({*row.runs, *best.runs})
    difference = paired_difference(row.task_matrix(tasks, seeds), best.task_matrix(tasks, seeds))
    if difference.cells == 0:
        return f"no paired runs with {best.label}"
    interval = f"{difference.mean:+.1f} [{difference.ci_low:+.1f}, {difference.ci_high:+.1f}]"
    return f"{interval} vs {best.label}: {verdict(difference)}"


def format_table(title: str, rows: Sequence[Row], tasks: Sequence[str]) -> str:
    """The table as text; `rows` in display order, configurations first, baselines after.

    `tasks`: the test tasks the comparison pairs over (without any, the comparison column is empty).
    """
    baselines = [row for row in rows if row.is_baseline and row.values("exact_match")]
    best = max(baselines, key=lambda row: statistics.fmean(row.values("exact_match")), default=None)
    metrics = [*METRICS, *(m for m in FORMAT_METRICS if m not in WHEN_LOGGED or any(row.values(m) for row in rows))]
    frame = pd.DataFrame(
        [
            {
                "configuration": row.label,
                "seeds": row.seeds(),
                **{metric: mean_sd(row.values(metric)) for metric in metrics},
                VERSUS: _versus(row, best, tasks),
            }
            for row in rows
        ],
        columns=["configuration", "seeds", *metrics, VERSUS],
    )
    return text_table(frame, f"{title} ({SPLIT_NOTE})")
