"""`itstudy baseline`: run model-free baselines on a study's test tasks and record each in MLflow.

For every (baseline, seed) the predictions are scored with `itstudy.metrics` and written to one
MLflow run (tags `itstudy.kind=baseline`, `itstudy.baseline`, `itstudy.seed`, ...; params: the
data config and where the label spaces came from; metrics per task, category and overall;
artifacts predictions.jsonl and task_metrics.csv; the test set as dataset lineage), a child of
the sweep's run when one is given.

A run is named for reading (`random seed=1`) and identified by its tag `itstudy.trial_key`,
`baseline-<name>-s<seed>-<data key[:8]>`, where the data key hashes exactly what a baseline reads
(test instances, demonstrations, label spaces). Running the command
again therefore reuses FINISHED runs instead of duplicating them and says so; a run that did not
finish is run again. The training-set sample does not enter the key: baselines never see it, so
one baseline run serves every data size of a sweep.

The printed table gives exact match per task and overall as mean ± sample standard deviation over
seeds; overall figures come both as the instance mean (all test instances pooled, what Tk-Instruct
and the paper report) and as the task mean (each task weighs the same).

Refuses, before any data is read or run created: unknown baseline names ("untuned" needs a model
and runs in the training package) and an empty seed list.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import pandas as pd

from itstudy.baselines import BASELINES, run_baseline
from itstudy.config import ConfigError, Study, to_plain
from itstudy.data import StudyData, Task, load_study_data
from itstudy.data.selection import selection_digest
from itstudy.metrics import aggregate, score_predictions, task_rows
from itstudy.tables import MISSING, mean_sd, text_table
from itstudy.tracking import (
    RunLogger,
    check_tracking,
    ensure_experiment,
    experiment_name,
    get_or_create_run,
    resolve_tracking_uri,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskRow:
    """One row of the table: a test task, its label count (None for generation) and instance count."""

    name: str
    labels: int | None
    instances: int


@dataclass(frozen=True)
class BaselineRecord:
    """One (baseline, seed): its MLflow run and the metrics it logged (percent)."""

    baseline: str
    seed: int
    run_id: str
    run_name: str
    reused: bool
    """True when a FINISHED run of the same name and key was found and nothing was recomputed."""
    metrics: dict[str, float]


@dataclass(frozen=True)
class BaselineResults:
    """Every (baseline, seed) of one invocation, over one set of test tasks."""

    tasks: tuple[TaskRow, ...]
    records: tuple[BaselineRecord, ...]
    data_key: str
    source: str
    notes: tuple[str, ...]
    tracking_uri: str
    experiment_id: str

    @property
    def baselines(self) -> list[str]:
        return list(dict.fromkeys(record.baseline for record in self.records))

    @property
    def seeds(self) -> list[int]:
        return list(dict.fromkeys(record.seed for record in self.records))

    def values(self, baseline: str, metric: str) -> list[float]:
        """`metric` of `baseline` over seeds, in seed order; empty where the baseline skipped it."""
        return [r.metrics[metric] for r in self.records if r.baseline == baseline and metric in r.metrics]


def run_baselines(
    study: Study, names: list[str], seeds: list[int], parent_run_id: str | None = None
) -> BaselineResults:
    """Run each baseline with each seed on the study's test tasks; record or reuse one MLflow run each."""
    unknown = [name for name in names if name not in BASELINES]
    if unknown or not names:
        hint = " ('untuned' needs a model: it runs with the training package)" if "untuned" in unknown else ""
        raise ConfigError(f"baselines {unknown or names}: expected names from {sorted(BASELINES)}{hint}")
    if not seeds:
        raise ConfigError("baseline seeds: expected at least one seed")
    uri = resolve_tracking_uri(study.tracking)
    check_tracking(uri)
    # Test tasks are the first N instances of each task whatever the seed, so one load serves all seeds.
    data = load_study_data(study.data, study.seed)
    experiment_id = ensure_experiment(uri, experiment_name(study))
    records = [
        record_baseline(study, data, name, seed, uri, experiment_id, parent_run_id) for seed in seeds for name in names
    ]
    return BaselineResults(
        tasks=tuple(_test_task(task) for task in data.test),
        records=tuple(records),
        data_key=baseline_data_key(data.test),
        source=data.source,
        notes=data.notes,
        tracking_uri=uri,
        experiment_id=experiment_id,
    )


def baseline_data_key(test_tasks: tuple[Task, ...]) -> str:
    """A hash of all a baseline reads: test instances and demonstrations (selection_digest), label spaces and
    counterfactual partners (the pair probe's figures depend on them)."""
    labels = [
        [task.name, list(task.label_space.labels) if task.label_space else None, task.counterfactual_of]
        for task in test_tasks
    ]
    payload = selection_digest((), test_tasks) + json.dumps(labels, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def baseline_run_name(name: str, seed: int, key: str) -> str:
    return f"baseline-{name}-s{seed}-{key[:8]}"


def baseline_display_name(name: str, seed: int) -> str:
    """The run name the MLflow UI shows whole; the digest stays in the key tag."""
    return f"{name} seed={seed}"


def record_baseline(
    study: Study,
    data: StudyData,
    name: str,
    seed: int,
    uri: str,
    experiment_id: str,
    parent_run_id: str | None = None,
) -> BaselineRecord:
    """Run one baseline with one seed and record it, unless a FINISHED run of it already exists."""
    key = baseline_data_key(data.test)
    run_name = baseline_run_name(name, seed, key)
    identity = {"itstudy.kind": "baseline", "itstudy.trial_key": run_name, "itstudy.data_key": key}
    tags = {
        "itstudy.study": study.name,
        "itstudy.baseline": name,
        "itstudy.seed": seed,
        "itstudy.test_task_kind": study.data.test_task_kind,
    }
    run = get_or_create_run(
        uri, experiment_id, baseline_display_name(name, seed), identity, tags, parent_run_id, reuse_status="FINISHED"
    )
    if not run.created:
        log.info("baseline %s seed %d: reusing finished MLflow run %s", name, seed, run.run_id)
        return BaselineRecord(name, seed, run.run_id, run_name, True, run.metrics)

    with RunLogger(uri, run.run_id) as logger:
        outcome = run_baseline(name, data.test, seed)
        logger.log_params({"baseline": name, "seed": seed, "data": to_plain(study)["data"]})
        logger.log_params({"label_space.sources": sorted({t.label_space.source for t in data.test if t.label_space})})
        logger.log_params({"skipped_tasks": len(outcome.skipped)})
        logger.log_environment()
        n_instances = sum(len(task.instances) for task in data.test)
        logger.log_dataset(key, data.source, name=f"{study.name}-test", n_instances=n_instances)
        if outcome.skipped:
            logger.log_text("".join(f"{task}\t{why}\n" for task, why in outcome.skipped.items()), "skipped_tasks.tsv")
        if data.notes:
            logger.log_text("\n".join(data.notes) + "\n", "data_notes.txt")
        scored = score_predictions(outcome.predictions)
        metrics = aggregate(scored)
        logger.log_predictions([item.record() for item in scored], task_rows(scored), metrics)
    return BaselineRecord(name, seed, run.run_id, run_name, False, metrics)


def _test_task(task: Task) -> TaskRow:
    return TaskRow(task.name, len(task.label_space.labels) if task.label_space else None, len(task.instances))


def format_baseline_table(results: BaselineResults) -> str:
    """Per-task and overall exact match (%), mean ± sample std over seeds, and where the runs are."""
    baselines = results.baselines
    rows = [
        {
            "task": task.name,
            "labels": MISSING if task.labels is None else task.labels,
            "n": task.instances,
            **{name: mean_sd(results.values(name, f"exact_match_for_{task.name}")) for name in baselines},
        }
        for task in results.tasks
    ]
    total = sum(task.instances for task in results.tasks)
    for label, metric in (("instance mean", "exact_match"), ("task mean", "exact_match_task_mean")):
        overall = {name: mean_sd(results.values(name, metric)) for name in baselines}
        rows.append({"task": f"overall, {label}", "labels": "", "n": total, **overall})
    title = (
        f"Exact match (%) on {len(results.tasks)} test tasks of {results.source}, "
        f"mean ± std over seeds {', '.join(map(str, results.seeds))}"
    )
    reused = sum(record.reused for record in results.records)
    return "\n".join(
        [
            text_table(pd.DataFrame(rows), title=title),
            f"({total} instances; instance mean pools them all, task mean weighs each task equally; "
            f"'{MISSING}' = baseline not applicable to the task)",
            f"MLflow {results.tracking_uri}, experiment {results.experiment_id}: "
            f"{len(results.records) - reused} runs recorded, {reused} reused (already finished)",
        ]
    )


def baseline_command(study: Study, names: list[str], seeds: list[int]) -> BaselineResults:
    """The `itstudy baseline` command: run, record, print the table."""
    results = run_baselines(study, names, seeds)
    for record in results.records:
        if record.reused:
            print(f"reused finished MLflow run {record.run_name} ({record.run_id})")
    print(format_baseline_table(results))
    return results
