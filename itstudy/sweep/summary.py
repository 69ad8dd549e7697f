"""The end of a sweep: trials.csv, the overhead figures and the comparison table on the parent run,
and where to look next. No Ray."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd

from itstudy.baseline_run import BaselineResults
from itstudy.config import Study
from itstudy.metrics import METRICS, in_pooled_figures, reported_task_name
from itstudy.sweep.outcomes import SweepResult, TrialOutcome
from itstudy.sweep.table import FORMAT_METRICS, Row, format_table
from itstudy.sweep.trials import sweep_name
from itstudy.tracking import RunLogger, experiment_name

TIMING = ("prepare_s", "train_loop_s", "train_fit_s")
"""Seconds a trial reports for its data preparation and its training loop (or TorchTrainer fit)."""


def summarize(
    study: Study,
    experiment_file: Path | None,
    uri: str,
    experiment_id: str,
    parent: RunLogger,
    outcomes: list[TrialOutcome],
    baselines: list[BaselineResults],
) -> SweepResult:
    """Log trials.csv, overhead figures and the comparison table on the parent run; build the result."""
    parent.log_text(trials_csv(outcomes), "trials.csv")
    parent.log_metrics(overhead_metrics(outcomes), step=0)
    seeds = sorted({outcome.seed for outcome in outcomes})
    title = (
        f"Study {study.name} (sweep {sweep_name(study)}): exact match, ROUGE-L and the share of answers in the "
        f"label space (%) on the test tasks, mean ± std over seeds {', '.join(map(str, seeds))}"
    )
    table = format_table(title, comparison_rows(outcomes, baselines), paired_tasks(baselines))
    parent.log_text(table + "\n", "comparison.txt")
    table += "\n" + where_to_look(study, experiment_file, uri, experiment_id, parent.run_id, outcomes)
    return SweepResult(
        study=study.name,
        sweep=sweep_name(study),
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent.run_id,
        outcomes=tuple(outcomes),
        baselines=tuple(baselines),
        table=table,
    )


def comparison_rows(outcomes: list[TrialOutcome], baselines: list[BaselineResults]) -> list[Row]:
    """Configurations (in grid order), then the untuned baselines, then the model-free ones."""
    rows = []
    for kind in ("trial", "untuned"):
        labels = list(dict.fromkeys(outcome.label for outcome in outcomes if outcome.kind == kind))
        for label in labels:
            group = [outcome for outcome in outcomes if outcome.kind == kind and outcome.label == label]
            finished = {outcome.seed: outcome.metrics for outcome in group if outcome.status == "FINISHED"}
            rows.append(Row(label, finished, expected=len(group), is_baseline=kind == "untuned"))
    for result in baselines:
        suffix = f" [{result.data_key[:8]}]" if len(baselines) > 1 else ""
        for name in result.baselines:
            runs = {record.seed: record.metrics for record in result.records if record.baseline == name}
            rows.append(Row(f"{name}{suffix}", runs, expected=len(runs), is_baseline=True))
    return rows


def paired_tasks(baselines: list[BaselineResults]) -> list[str]:
    """The classification test tasks of the pooled figures: the tasks every baseline scores."""
    names = {reported_task_name(task.name) for result in baselines for task in result.tasks if task.labels is not None}
    return sorted(name for name in names if in_pooled_figures(name))


def overhead_metrics(outcomes: list[TrialOutcome]) -> dict[str, float]:
    """Median orchestration overhead (s) of the trials timed here, per worker count."""
    metrics = {}
    for workers in sorted({outcome.workers for outcome in outcomes}):
        values = [o.overhead_s for o in outcomes if o.kind == "trial" and o.workers == workers and o.overhead_s is not None]
        if values:
            metrics[f"overhead_median_s_workers{workers}"] = statistics.median(values)
    return metrics


def trials_csv(outcomes: list[TrialOutcome]) -> str:
    """One line per trial: how it ended, its metrics, and where its wall time went (empty when unknown)."""
    records = []
    for o in outcomes:
        started, ended = o.window or (None, None)
        records.append(
            {
                "key": o.key,
                "kind": o.kind,
                "configuration": o.label,
                "seed": o.seed,
                "workers": o.workers,
                "status": o.status,
                **{name: o.metrics.get(name) for name in (*METRICS, *FORMAT_METRICS)},
                "started_s": started,
                "ended_s": ended,
                "wall_s": o.wall_s,
                **{name: o.metrics.get(name) for name in TIMING},
                "overhead_s": o.overhead_s,
            }
        )
    return pd.DataFrame(records).to_csv(index=False)


def where_to_look(
    study: Study, experiment_file: Path | None, uri: str, experiment_id: str, parent_run_id: str, outcomes: list[TrialOutcome]
) -> str:
    """The MLflow run to open, and what to do about failed trials."""
    failed = [outcome.key for outcome in outcomes if outcome.status != "FINISHED"]
    lines = [f"MLflow: {uri}, experiment '{experiment_name(study)}' (id {experiment_id}), sweep run {parent_run_id}"]
    if uri.startswith(("http://", "https://")):
        lines.append(f"Open: {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{parent_run_id}")
    else:
        target = experiment_file or study.name
        lines.append(f"Open the MLflow UI: itstudy ui {target}   (or: mlflow ui --backend-store-uri {uri})")
    if failed:
        lines.append(f"{len(failed)} trial(s) failed ({', '.join(failed)}): rerun the same command to retry them.")
    return "\n".join(lines)
