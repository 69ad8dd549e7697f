"""The end of a sweep: trials.csv, children.csv, the overhead figures, the mean of each configuration and
baseline (`mean_exact_match/...`) and the comparison table on the parent run, and where to look next. No Ray."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pandas as pd

from itstudy.baseline_run import BaselineResults
from itstudy.config import Study
from itstudy.metrics import METRICS, in_pooled_figures, reported_task_name
from itstudy.sweep.outcomes import SweepResult, TrialOutcome
from itstudy.sweep.table import FORMAT_METRICS, Row, format_table
from itstudy.sweep.trials import sweep_name
from itstudy.tracking import RunLogger, comparison_view_link, experiment_name, find_runs

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
    parent.log_text(children_csv(uri, experiment_id, parent.run_id), "children.csv")
    rows = comparison_rows(outcomes, baselines)
    parent.log_metrics({**overhead_metrics(outcomes), **summary_metrics(rows)}, step=0)
    seeds = sorted({outcome.seed for outcome in outcomes})
    title = (
        f"Study {study.name} (sweep {sweep_name(study)}): exact match, ROUGE-L and the share of answers in the "
        f"label space (%) on the test tasks, mean ± std over seeds {', '.join(map(str, seeds))}"
    )
    table = format_table(title, rows, paired_tasks(baselines))
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


SUMMARY_METRICS = ("exact_match", "label_space_rate")
"""Metrics whose mean over seeds the sweep run carries per configuration and baseline."""


def summary_metrics(rows: list[Row]) -> dict[str, float]:
    """`mean_<metric>/<configuration or baseline>`: the table's means, so the sweep run shows the result
    (the UI groups them under one prefix per metric)."""
    metrics = {}
    for row in rows:
        for metric in SUMMARY_METRICS:
            if row.values(metric):
                metrics[f"mean_{metric}/{_metric_key_text(row.label)}"] = statistics.fmean(row.values(metric))
    return metrics


def _metric_key_text(label: str) -> str:
    # MLflow metric keys allow letters, digits, _ - . / and spaces; a label's "+" is not one of them.
    return re.sub(r"[^\w.\- ]", " ", label.replace("_", " "))


def children_csv(uri: str, experiment_id: str, parent_run_id: str) -> str:
    """Every child run of the sweep (the UI's overview lists only the first 10): name, kind, status,
    exact match, run id, the trial key that identifies it."""
    children = find_runs(uri, experiment_id, {"mlflow.parentRunId": parent_run_id})
    records = [
        {
            "name": run.info.run_name,
            "kind": run.data.tags.get("itstudy.baseline") or run.data.tags.get("itstudy.kind"),
            "status": run.info.status,
            "exact_match": run.data.metrics.get("exact_match"),
            "run_id": run.info.run_id,
            "trial_key": run.data.tags.get("itstudy.trial_key"),
        }
        for run in sorted(children, key=lambda run: run.info.run_name)
    ]
    return pd.DataFrame(records).to_csv(index=False)


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
    view = comparison_view_link(experiment_id)
    if uri.startswith(("http://", "https://")):
        lines.append(f"Open: {uri.rstrip('/')}/{view}   (the sweep run: #/experiments/{experiment_id}/runs/{parent_run_id})")
    else:
        target = experiment_file or study.name
        lines.append(f"Open the MLflow UI: itstudy ui {target}, then http://127.0.0.1:5000/{view}")
    if failed:
        lines.append(f"{len(failed)} trial(s) failed ({', '.join(failed)}): rerun the same command to retry them.")
    return "\n".join(lines)
