"""Metric names as MLflow holds them, and back: per-task figures under one prefix. Imports nothing of MLflow."""

from __future__ import annotations

from collections.abc import Mapping

PER_TASK_PREFIX = "per_task/"
"""Where MLflow keeps the per-task and per-category figures (`<metric>_for_<group>`, `itstudy.metrics`):
under one prefix, which the UI folds into one section instead of a chart per task at the top of a run."""


def mlflow_metric_name(key: str) -> str:
    """The name a measured metric has in MLflow: per-group figures under `PER_TASK_PREFIX`."""
    return PER_TASK_PREFIX + key if "_for_" in key else key


def measured_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics read back from MLflow (or a run's record) under the names the code measured them by."""
    return {key.removeprefix(PER_TASK_PREFIX): value for key, value in metrics.items()}
