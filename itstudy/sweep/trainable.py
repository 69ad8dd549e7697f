"""What runs inside one Ray Tune trial: one training run, or the untuned-model baseline.

A trial is a Tune function trainable, `run_trial(config, context)`. `config` holds only the
trial's point (grid values and, under a search, the sampled values); `context` (a
`SweepContext`, passed with `tune.with_parameters`) holds the study, the tracking store and
the sweep's parent run. Keeping the store out of `config` matters on resume: Tune restores
`config` from its saved state, while `context` is always the current invocation's.

Inside the trial:
1. check that this Ray worker sees the tracking URI the driver chose (pushed through the
   runtime environment) and reaches the same store: the parent run must be readable (a
   misconfigured worker fails here, loudly, not by silently logging somewhere else);
2. find the trial's MLflow child run by its key, or create it: a resumed trial continues its
   run instead of adding a second one. A run already FINISHED means the trial is done: its
   metrics (from its metric record) are reported to Tune again and nothing is trained (Tune's
   own state may lag the last seconds before a driver was killed); otherwise what an earlier
   attempt recorded but could not send is sent first;
3. run it: one worker trains right here with the training loop and `TuneReporter` (no Ray
   Train controller to start: measured in cluster/README.md); several workers run a
   `TorchTrainer` inside the trial, named by the trial key so that a restarted trial resumes
   from its last checkpoint; the untuned baseline evaluates the initial model zero-shot;
4. end the run FINISHED, or FAILED with `error.txt` (`RunLogger` as a context manager), and
   report to Tune the figures the loop measured (never read back from MLflow, which an outage
   may have kept them from) with the time spent in data preparation and in the training loop,
   from which the summary derives orchestration overhead.

Every metric point goes to the run's write-ahead record in `context.journal_dir` first
(`itstudy.tracking.journal`): MLflow gets each (key, step) once, and what it missed stays there
for `itstudy sync`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.tune
import transformers

from itstudy.config import study_from_dict
from itstudy.sweep.trials import Trial, make_trial, untuned_trial
from itstudy.tracking import (
    FoundRun,
    MetricJournal,
    RunLogger,
    TrackingError,
    check_tracking,
    disk_full_named,
    get_or_create_run,
    get_run,
    measured_metrics,
    reopen_run,
    replay,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep invocation shares."""

    study: dict
    """The study as plain data (its grid still set); each trial applies its point to it."""
    tracking_uri: str
    """The store as the workers reach it (the driver's URI, loopback swapped on multi-node clusters)."""
    experiment_id: str
    parent_run_id: str
    train_storage_path: str
    """Absolute folder (or URI) where multi-worker trials keep their Ray Train runs."""
    journal_dir: str
    """Absolute folder holding each child run's metric record, `<run id>.jsonl`."""


def resolve_trial(config: dict[str, Any], context: SweepContext) -> Trial:
    """The trial a Tune config stands for: the study at the config's point (grid + sampled values).

    A Tune config is {"trial": {"kind": "trial" | "untuned", "point": {...}, "sampled": {...}}}.
    """
    entry = config["trial"]
    study = study_from_dict(context.study, origin="sweep context")
    trial = make_trial(study, {**entry["point"], **entry.get("sampled", {})})
    return untuned_trial(trial) if entry["kind"] == "untuned" else trial


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """The Tune function trainable (see the module docstring); a full disk is raised as `DiskFull`, which the
    sweep does not retry (`itstudy.sweep.tuning.StopOnDiskFull`)."""
    with disk_full_named(context.tracking_uri, Path(context.journal_dir).parent):
        _run_trial(config, context)


def _run_trial(config: dict[str, Any], context: SweepContext) -> None:
    trial = resolve_trial(config, context)
    kind = config["trial"]["kind"]
    transformers.utils.logging.disable_progress_bar()  # a bar per checkpoint write floods the driver's log
    check_worker_tracking(context)
    run = child_run(trial, kind, context)
    journal = MetricJournal(Path(context.journal_dir) / f"{run.run_id}.jsonl")
    if run.status == "FINISHED":
        ray.tune.report({**(measured_metrics(journal.latest()) or run.metrics), "already_finished": 1.0})
        return
    reopen_run(context.tracking_uri, run.run_id)
    _send_earlier_record(journal, context.tracking_uri)
    with RunLogger(context.tracking_uri, run.run_id, journal=journal) as logger:  # ends the run FINISHED, or FAILED
        logger.set_tags({"itstudy.tune_trial_id": ray.tune.get_context().get_trial_id()})
        if kind == "untuned":
            metrics, timing = _run_untuned(trial, logger)
        else:
            metrics, timing = _run_training(trial, logger, context)
        logger.log_metrics(timing, step=0)
    # The last report carries the run's final figures (Optuna and the summary read them) and timing.
    ray.tune.report({**metrics, **timing})


def _send_earlier_record(journal: MetricJournal, uri: str) -> None:
    """What an earlier attempt of this trial recorded but did not send (it was killed, or MLflow was down)."""
    try:
        replay(journal, uri)
    except Exception as error:  # MLflow still down: the record stays for the driver's sync
        log.warning("run %s: recorded metrics not sent yet (%s); kept in %s", journal.run_id, error, journal.path)


def check_worker_tracking(context: SweepContext) -> None:
    """Refuse to start unless this worker got the driver's tracking URI and sees the same store."""
    seen = os.environ.get("MLFLOW_TRACKING_URI")
    if seen != context.tracking_uri:
        raise TrackingError(
            f"this Ray worker sees MLFLOW_TRACKING_URI={seen!r} but the sweep logs to {context.tracking_uri!r}: "
            f"the runtime environment did not reach the worker (was Ray initialised before run_sweep?)"
        )
    check_tracking(context.tracking_uri)
    try:
        get_run(context.tracking_uri, context.parent_run_id)
    except Exception as error:  # any failure: this worker's store is not the driver's
        raise TrackingError(
            f"tracking URI {context.tracking_uri!r} on this worker does not hold the sweep's parent run "
            f"{context.parent_run_id} ({type(error).__name__}); on a multi-node cluster use an `mlflow server` "
            f"that every node reaches, not a local SQLite file"
        ) from None


def child_run_identity(trial_key: str, context: SweepContext) -> dict[str, str]:
    """The tags that identify a trial's MLflow child run within this sweep."""
    return {"itstudy.trial_key": trial_key, "mlflow.parentRunId": context.parent_run_id}


def child_run(trial: Trial, kind: str, context: SweepContext) -> FoundRun:
    """The trial's child run, found by its key (a resumed trial continues it) or created."""
    tags = {**trial_tags(trial, kind), "itstudy.study": trial.study.name, "itstudy.status": "RUNNING"}
    identity = child_run_identity(trial.key, context)
    return get_or_create_run(
        context.tracking_uri, context.experiment_id, run_name(trial), identity, tags, parent_run_id=context.parent_run_id
    )


def run_name(trial: Trial) -> str:
    """The MLflow run name: what varies first, readable whole in the UI's run list, e.g.
    `def-simplified+ex-original n20 seed=2` or `untuned def-original+ex-delusive n20 seed=1`; the
    identity digest stays in the `itstudy.trial_key` tag, by which the run is found again."""
    return " ".join([*trial.label.split("_"), f"seed={trial.study.seed}"])


def trial_tags(trial: Trial, kind: str) -> dict[str, str]:
    tags = trial.tags()
    if kind == "untuned":
        tags.update({"itstudy.kind": "baseline", "itstudy.baseline": "untuned"})
    return tags


# --- the three ways a trial runs ---------------------------------------------------------------


def _run_training(trial: Trial, logger: RunLogger, context: SweepContext) -> tuple[dict[str, float], dict[str, float]]:
    """Train the trial; (the loop's final metrics, timing)."""
    from itstudy.training.runner import build_trainer, prepare_job

    started = time.perf_counter()
    job = prepare_job(trial.study, run_id=logger.run_id, tracking_uri=context.tracking_uri)
    job = dataclasses.replace(job, journal_path=str(logger.journal.path))
    prepared = time.perf_counter()
    if trial.study.resources.workers_per_trial == 1:
        # The lighter path: the loop runs in this Tune trial, no Train controller to start.
        from itstudy.training.loop import run_worker
        from itstudy.training.reporter import TuneReporter

        metrics = run_worker(job, TuneReporter())
        return metrics, {"prepare_s": prepared - started, "train_loop_s": time.perf_counter() - prepared}
    from ray.tune.integration.ray_train import TuneReportCallback

    # Named by the trial key: a restarted trial resumes this Train run from its last checkpoint.
    trainer = build_trainer(
        job, run_name=trial.key, storage_path=context.train_storage_path, callbacks=[TuneReportCallback()]
    )
    result = trainer.fit()
    if result.checkpoint:  # the Train run's storage, not the Tune trial's: point MLflow at it
        logger.set_tags({"itstudy.checkpoint": result.checkpoint.path})
    timing = {"prepare_s": prepared - started, "train_fit_s": time.perf_counter() - prepared}
    if "loop_s" in result.metrics:  # the loop's own time, when the Train workers report it
        timing["train_loop_s"] = result.metrics["loop_s"]
    metrics = {key: value for key, value in result.metrics.items() if key != "step" and _is_number(value)}
    return metrics, timing


def _run_untuned(trial: Trial, logger: RunLogger) -> tuple[dict[str, float], dict[str, float]]:
    """The untuned baseline: the initial model (pretrained, or a seeded random init) zero-shot on the
    test prompts; (its metrics, timing)."""
    from itstudy.metrics import aggregate, score_predictions, task_rows
    from itstudy.training.evaluate import dev_metrics, evaluation_predictions
    from itstudy.training.models import build_model, compute_dtype, parameter_counts
    from itstudy.training.prepare import prepare_run
    from itstudy.training.reporter import TuneReporter

    study = trial.study
    started = time.perf_counter()
    tokenizer, data = prepare_run(study)
    prepared = time.perf_counter()
    device = TuneReporter().device
    dtype = compute_dtype(study.model.precision, device)
    model = build_model(study.model.name, tokenizer, study.seed).to(device)
    predictions = evaluation_predictions(model, tokenizer, data.test, study, dtype=dtype)
    logger.log_config(study)
    logger.log_environment()
    # as a training run logs it, so the report can place the untuned model on the parameter axis
    logger.log_params({"run": {"model_parameters": parameter_counts(model)["total"]}})
    scored = score_predictions(predictions)
    logger.log_prompts(data.sample_prompts)
    metrics = {**aggregate(scored), **dev_metrics(model, tokenizer, data.dev, study, dtype=dtype)}
    logger.log_predictions([item.record() for item in scored], task_rows(scored), metrics)
    return metrics, {"prepare_s": prepared - started, "train_loop_s": time.perf_counter() - prepared}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
