"""What runs inside one Ray Tune trial: one training run, or the untuned-model baseline.

A trial is a Tune function trainable, `run_trial(config, context)`. `config` holds only the
trial's point (grid values and, under a search, the sampled values); `context` (a
`SweepContext`, passed with `tune.with_parameters`) holds the study, the tracking store and
the sweep's parent run. Keeping the store out of `config` matters on resume: Tune restores
`config` from its saved state, while `context` is always the current invocation's.

Inside the trial:
1. check that this Ray worker sees the tracking URI the driver chose (pushed through the
   runtime environment) and reaches the same store: the parent run must be readable
   (user-pains 2 and 5: a misconfigured worker fails here, loudly, not silently elsewhere);
2. find the trial's MLflow child run by its key, or create it: a resumed trial continues its
   run instead of adding a second one. A run already FINISHED means the trial is done: its
   metrics are reported to Tune again and nothing is trained (Tune's own state may lag the
   last seconds before a driver was killed);
3. run it: one worker trains right here with the training loop and `TuneReporter` (no Ray
   Train controller to start: measured in cluster/README.md); several workers run a
   `TorchTrainer` inside the trial, named by the trial key so that a restarted trial resumes
   from its last checkpoint; the untuned baseline evaluates the initial model zero-shot;
4. end the run FINISHED, or FAILED with `error.txt`, and report the time spent in data
   preparation and in the training loop, from which the driver derives orchestration overhead.

Ray is imported here and in the driver only.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.tune
import transformers

from itstudy.config import study_from_dict
from itstudy.sweep.trials import Trial, make_trial, untuned_trial
from itstudy.tracking import (
    RunLogger,
    TrackingError,
    check_tracking,
    create_run,
    find_runs,
    get_run,
)

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


def resolve_trial(config: dict[str, Any], context: SweepContext) -> Trial:
    """The trial a Tune config stands for: the study at the config's point (grid + sampled values).

    A Tune config is {"trial": {"kind": "trial" | "untuned", "point": {...}, "sampled": {...}}}.
    """
    entry = config["trial"]
    study = study_from_dict(context.study, origin="sweep context")
    trial = make_trial(study, {**entry["point"], **entry.get("sampled", {})})
    return untuned_trial(trial) if entry["kind"] == "untuned" else trial


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """The Tune function trainable (see the module docstring)."""
    trial = resolve_trial(config, context)
    kind = config["trial"]["kind"]
    transformers.utils.logging.disable_progress_bar()  # a bar per checkpoint write floods the driver's log
    check_worker_tracking(context)
    run_id, finished = child_run(trial, kind, context)
    if finished is not None:
        ray.tune.report({**finished, "already_finished": 1.0})
        return
    logger = RunLogger(context.tracking_uri, run_id)
    reopen(logger)
    logger.set_tags({"itstudy.tune_trial_id": ray.tune.get_context().get_trial_id()})
    try:
        timing = _run_untuned(trial, run_id, context) if kind == "untuned" else _run_training(trial, run_id, context)
    except BaseException as error:
        logger.log_error("".join(traceback.format_exception(error)))
        logger.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    logger.log_metrics(timing, step=0)
    logger.end("FINISHED")
    # The last report carries the run's final figures (Optuna and the summary read them) and timing.
    ray.tune.report({**get_run(context.tracking_uri, run_id).data.metrics, **timing})


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


def child_run(trial: Trial, kind: str, context: SweepContext) -> tuple[str, dict[str, float] | None]:
    """(run id, final metrics if the run already FINISHED) of the trial's child run, created if missing."""
    identity = {"itstudy.trial_key": trial.key, "mlflow.parentRunId": context.parent_run_id}
    runs = find_runs(context.tracking_uri, context.experiment_id, identity)
    if runs:
        run = runs[0]
        return run.info.run_id, (dict(run.data.metrics) if run.info.status == "FINISHED" else None)
    tags = {**trial_tags(trial, kind), "itstudy.study": trial.study.name, "itstudy.status": "RUNNING"}
    run_id = create_run(context.tracking_uri, context.experiment_id, trial.key, tags, parent_run_id=context.parent_run_id)
    return run_id, None


def reopen(logger: RunLogger) -> None:
    """Mark a run RUNNING again when a rerun continues it (its earlier end set FINISHED/FAILED/KILLED)."""
    # RunLogger has no call of its own for this; its public MLflow client does it.
    logger.client.update_run(logger.run_id, status="RUNNING")
    logger.set_tags({"itstudy.status": "RUNNING"})


def trial_tags(trial: Trial, kind: str) -> dict[str, str]:
    tags = trial.tags()
    if kind == "untuned":
        tags.update({"itstudy.kind": "baseline", "itstudy.baseline": "untuned"})
    return tags


# --- the three ways a trial runs ---------------------------------------------------------------


def _run_training(trial: Trial, run_id: str, context: SweepContext) -> dict[str, float]:
    from itstudy.training.runner import build_trainer, prepare_job

    started = time.perf_counter()
    job = prepare_job(trial.study, run_id=run_id, tracking_uri=context.tracking_uri)
    prepared = time.perf_counter()
    if trial.study.resources.workers_per_trial == 1:
        # The lighter path: the loop runs in this Tune trial, no Train controller to start.
        from itstudy.training.loop import run_worker
        from itstudy.training.reporter import TuneReporter

        reporter = TuneReporter()
        _note_resume(reporter.restored_checkpoint(), run_id, context)
        run_worker(job, reporter)
        return {"prepare_s": prepared - started, "train_loop_s": time.perf_counter() - prepared}
    from ray.tune.integration.ray_train import TuneReportCallback

    # Named by the trial key: a restarted trial resumes this Train run from its last checkpoint.
    trainer = build_trainer(
        job, run_name=trial.key, storage_path=context.train_storage_path, callbacks=[TuneReportCallback()]
    )
    result = trainer.fit()
    if result.checkpoint:  # the Train run's storage, not the Tune trial's: point MLflow at it
        RunLogger(context.tracking_uri, run_id).set_tags({"itstudy.checkpoint": result.checkpoint.path})
    timing = {"prepare_s": prepared - started, "train_fit_s": time.perf_counter() - prepared}
    if "loop_s" in result.metrics:  # the loop's own time, when the Train workers report it
        timing["train_loop_s"] = result.metrics["loop_s"]
    return timing


def _note_resume(checkpoint: Path | None, run_id: str, context: SweepContext) -> None:
    """Tag the run with the step it resumes from (the loop's checkpoints describe themselves in metrics.json)."""
    if checkpoint is not None:
        step = json.loads((checkpoint / "metrics.json").read_text())["step"]
        RunLogger(context.tracking_uri, run_id).set_tags({"itstudy.resumed_from_step": step})


def _run_untuned(trial: Trial, run_id: str, context: SweepContext) -> dict[str, float]:
    """The untuned baseline: the initial model (pretrained, or a seeded random init) zero-shot on the test prompts."""
    from itstudy.metrics import aggregate, score_predictions, task_rows
    from itstudy.training.evaluate import generate_predictions
    from itstudy.training.models import build_model, compute_dtype
    from itstudy.training.prepare import prepare_run
    from itstudy.training.reporter import TuneReporter

    study = trial.study
    started = time.perf_counter()
    tokenizer, data = prepare_run(study)
    prepared = time.perf_counter()
    device = TuneReporter().device
    dtype = compute_dtype(study.model.precision, device)
    model = build_model(study.model.name, tokenizer, study.seed).to(device)
    predictions = generate_predictions(
        model, tokenizer, data.test, batch_size=study.eval.batch_size, max_new_tokens=study.eval.max_new_tokens, dtype=dtype
    )
    logger = RunLogger(context.tracking_uri, run_id)
    logger.log_config(study)
    logger.log_environment()
    scored = score_predictions(predictions)
    logger.log_prompts(data.sample_prompts)
    logger.log_predictions([item.record() for item in scored], task_rows(scored), aggregate(scored))
    return {"prepare_s": prepared - started, "train_loop_s": time.perf_counter() - prepared}
