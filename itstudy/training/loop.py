"""One training run on one worker: the loop that Ray Train, a Ray Tune trial or a plain process drives.

    run_worker(job, reporter) -> final metrics

`job` (a `WorkerJob`) carries the study, its tokenised data and the tokenizer, prepared once by
the driver (`itstudy.training.prepare`), and the MLflow run id the driver created. `reporter`
(`itstudy.training.reporter`) says where this worker runs and takes its reports; the loop is the
same under Ray Train (N workers, DDP: gloo on CPU, NCCL on GPU), under a Tune trial, and
without Ray (one process or torchrun).

What one run does:
- builds the model (named shape from scratch, seeded; or `from_pretrained`), or restores it with
  optimiser, schedule, step and every rank's RNG state from the checkpoint the driver hands back;
- trains for `total_steps` optimiser steps of `train.global_batch_size` sequences; gradient
  accumulation is derived from world size and per-device batch (`config.gradient_accumulation`),
  or per step from `train.max_tokens_per_micro_batch` (`itstudy.training.batching`); batches are
  grouped by length and padded dynamically, or to length buckets (`itstudy.training.engine`);
- every `train.eval_every_steps` and at the end: greedy generation (and rank classification) on the
  dev prompts (logged as dev_<metric>, what every choice reads) and the test prompts, SuperNI
  metrics, a checkpoint (written by rank 0, reported by every rank), retention by the driver;
- everything it records goes through the reporter: on rank 0 of a tracked run (the MLflow run
  id the driver gave it, never a run of its own) config and params once, environment, dataset
  lineage, training metrics every `train.log_every_steps`, evaluation metrics, and at the end
  predictions.jsonl and task_metrics.csv; tracking failures are retried and then left to the
  run's metric record (`job.journal_path`, copied into each checkpoint) by
  `itstudy.tracking.RunLogger`, never raised into training.

Resuming from a checkpoint (`itstudy.training.checkpoints`; a partial or corrupt latest one is
skipped for the previous one) replays exactly what an uninterrupted run does: the data order is
a function of (seed, step), and the RNG states are restored per rank.
The run is ended (FINISHED / FAILED) by the driver, which also knows where Ray stored the final
checkpoint.

`train.fail_at_step` is fault injection for tests: rank 0 raises at that step unless it resumed.
This module imports neither Ray nor MLflow: a plain run without a tracking URI needs neither.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from itstudy.config import Study, gradient_accumulation
from itstudy.metrics import aggregate, score_predictions
from itstudy.training.checkpoints import (
    gather_rng_states,
    read_trainer_state,
    seal_checkpoint,
    seed_everything,
    set_rng_state,
    usable_checkpoint,
    write_checkpoint,
)
from itstudy.training.batching import TokenBudget
from itstudy.training.engine import (
    StepPlan,
    StepResult,
    collate,
    make_optimizer,
    make_scheduler,
    token_budget,
    total_steps,
    train_step,
)
from itstudy.training.evaluate import dev_metrics, evaluation_predictions
from itstudy.training.models import compute_dtype, model_for_run, parameter_counts
from itstudy.training.prepare import RunData, prepare_run
from itstudy.training.reporter import PlainReporter, Reporter
from itstudy.training.sharding import for_training, gathered, load_optimizer_state


class InjectedFault(RuntimeError):
    """Raised by `train.fail_at_step` to test recovery."""


@dataclass(frozen=True)
class WorkerJob:
    """What every worker of one run receives from the driver."""

    study: Study
    data: RunData
    tokenizer: Any
    run_id: str | None = None
    """The MLflow run rank 0 logs into; None: no tracking."""
    tracking_uri: str | None = None
    journal_path: str | None = None
    """Where rank 0 records the run's metric points before sending them (`itstudy.tracking.journal`); None: none."""


def run_worker(job: WorkerJob, reporter: Reporter) -> dict[str, float]:
    """Train and evaluate as configured, resuming from the reporter's checkpoint if it has one.

    Returns the last evaluation's metrics on rank 0 and {} on other ranks.
    """
    tracking = reporter.tracking(job.tracking_uri, job.run_id, job.journal_path, job.study.tracking.system_metrics)
    with tracking, _cpu_threads(job.study, reporter.device):
        return _train(job, reporter)


@contextlib.contextmanager
def _cpu_threads(study: Study, device: torch.device):
    """On CPU, compute with the worker's own CPUs (resources.cpus_per_worker), as Ray would allot them.

    More threads than cores is ruinous: on a shared 2-core machine a tiny model ran 7x slower with
    2 threads than with 1, the OpenMP threads waiting on each other. The setting is restored after.
    """
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(study.resources.cpus_per_worker)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train(job: WorkerJob, reporter: Reporter) -> dict[str, float]:
    loop_started = time.perf_counter()
    study, train = job.study, job.study.train
    accumulation = gradient_accumulation(train, reporter.world_size)
    steps = total_steps(len(job.data.train), train.global_batch_size, train.epochs, train.max_steps)
    dtype = compute_dtype(study.model.precision, reporter.device)
    plan = StepPlan(
        [len(e.input_ids) + len(e.labels) for e in job.data.train], train.global_batch_size, study.seed, _budget(job)
    )

    restored = usable_checkpoint(reporter.restored_checkpoint())
    reporter.resume_record(restored)
    saved = read_trainer_state(restored, job.data.token_digest, reporter.world_size, study) if restored else None
    model = model_for_run(study.model, job.tokenizer, study.seed, restored / "model" if restored else None)
    model.to(reporter.device)
    trained = for_training(model, train.strategy, reporter.world_size, _device_ids(reporter), dtype)
    optimizer = make_optimizer(model, train.learning_rate, train.weight_decay)
    scheduler = make_scheduler(optimizer, train.schedule, train.warmup_steps, steps)
    if saved:
        load_optimizer_state(model, optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"][reporter.rank])
    else:
        seed_everything(study.seed + reporter.rank)  # per-rank dropout masks, reproducible
    start = saved["step"] if saved else 0

    if reporter.tracked:
        _log_run_start(job, reporter, accumulation, steps, model, dtype)
        if saved:
            reporter.set_tags({"itstudy.resumed_from_step": start})
    if start >= steps:  # the run had already finished: report its final figures again, train nothing
        metrics = saved["metrics"]
        reporter.report({"step": start, **metrics})
        return metrics if reporter.rank == 0 else {}

    metrics: dict[str, float] = {}
    training: dict[str, float] = {}
    window = _Window()
    model.train()
    for step in range(start, steps):
        if train.fail_at_step == step + 1 and restored is None and reporter.rank == 0:
            raise InjectedFault(f"train.fail_at_step={train.fail_at_step}: injected failure before step {step + 1}")
        micro_batches = [
            collate([job.data.train[index] for index in indices], job.tokenizer.pad_token_id, plan.buckets)
            for indices in plan.micro_batches(step, reporter.rank, reporter.world_size, accumulation)
        ]
        step_target_tokens = sum(len(job.data.train[index].labels) for index in plan.global_batch(step))
        window.add(
            train_step(
                trained,
                micro_batches,
                optimizer,
                scheduler,
                step_target_tokens=step_target_tokens,
                world_size=reporter.world_size,
                dtype=dtype,
                grad_clip=train.grad_clip,
            )
        )
        done = step + 1
        evaluate = done == steps or (train.eval_every_steps is not None and done % train.eval_every_steps == 0)
        if evaluate or done % train.log_every_steps == 0:
            training = window.close(reporter, scheduler.get_last_lr()[0])
            reporter.log_metrics(training, step=done)
            reporter.show_progress(done, steps, training, (time.perf_counter() - loop_started) / (done - start))
        if evaluate:
            # loop_s: this attempt's seconds in the loop so far (the sweep derives orchestration overhead from it)
            training = {**training, "loop_s": time.perf_counter() - loop_started}
            metrics = _evaluate_and_checkpoint(
                job, reporter, model, optimizer, scheduler, done, dtype, training, final=done == steps
            )
            window.restart()
    return metrics


def _budget(job: WorkerJob) -> TokenBudget | None:
    """The token budget of `train.max_tokens_per_micro_batch`, or None (fixed micro-batches)."""
    train = job.study.train
    if train.max_tokens_per_micro_batch is None:
        return None
    return token_budget(job.data.train, train.max_tokens_per_micro_batch, train.max_source_length, train.max_target_length)


def _device_ids(reporter: Reporter) -> list[int] | None:
    return [reporter.device.index] if reporter.device.type == "cuda" else None


# --- training metrics --------------------------------------------------------------------------


class _Window:
    """Training figures summed since the last log, reduced over ranks when logged."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        """Forget what was summed; time from now (evaluation time is not training time)."""
        self.sums = StepResult(0.0, 0, 0, 0)
        self.started = time.perf_counter()

    def add(self, result: StepResult) -> None:
        for name in ("loss_sum", "target_tokens", "source_tokens", "samples"):
            setattr(self.sums, name, getattr(self.sums, name) + getattr(result, name))

    def close(self, reporter: Reporter, learning_rate: float) -> dict[str, float]:
        """train_loss (token mean over all ranks), learning_rate, tokens_per_s and samples_per_s; then restart."""
        s = self.sums
        totals = torch.tensor([s.loss_sum, s.target_tokens, s.source_tokens, s.samples], dtype=torch.float64)
        if reporter.world_size > 1:
            # gloo reduces CPU tensors; NCCL needs them on the GPU
            totals = totals.to(reporter.device)
            dist.all_reduce(totals)
        loss_sum, target_tokens, source_tokens, samples = totals.tolist()
        elapsed = time.perf_counter() - self.started
        self.restart()
        return {
            "train_loss": loss_sum / max(target_tokens, 1),
            "learning_rate": learning_rate,
            "tokens_per_s": (source_tokens + target_tokens) / elapsed,
            "samples_per_s": samples / elapsed,
        }


# --- evaluation and checkpoints ----------------------------------------------------------------


def _evaluate_and_checkpoint(job, reporter, model, optimizer, scheduler, step, dtype, training, final):
    """Evaluate on every rank; on rank 0 score, checkpoint and return training + evaluation figures.

    Every rank reports (a barrier); only rank 0 passes the checkpoint and the figures.
    """
    model, optimizer_state = gathered(model, optimizer)  # whole weights: sharded generation would hang
    shard = {"dtype": dtype, "rank": reporter.rank, "world_size": reporter.world_size}
    dev = dev_metrics(model, job.tokenizer, job.data.dev, job.study, **shard)
    predictions = evaluation_predictions(
        model, job.tokenizer, job.data.test, job.study, dtype=dtype, rank=reporter.rank, world_size=reporter.world_size
    )
    rng_states = gather_rng_states(reporter.world_size)
    if reporter.rank != 0:
        reporter.report({"step": step})
        return {}
    scored = score_predictions(predictions)
    evaluation = {**aggregate(scored), **dev}
    if final:
        reporter.log_predictions(scored, evaluation, step=step)
    else:
        reporter.log_metrics(evaluation, step=step)
    metrics = {**training, **evaluation}
    checkpoint = write_checkpoint(
        job.study, job.data.token_digest, job.tokenizer, model, optimizer_state, scheduler, step, rng_states, metrics
    )
    if final and job.study.tracking.log_model:
        reporter.log_model(checkpoint, job.study.name)
    reporter.record_into(checkpoint)  # the metric record up to this step travels with the checkpoint
    seal_checkpoint(checkpoint)
    try:
        reporter.report({"step": step, **metrics}, checkpoint_dir=checkpoint)
    finally:
        shutil.rmtree(checkpoint, ignore_errors=True)  # the reporter has copied or moved it
    return metrics


# --- tracking ----------------------------------------------------------------------------------


def _log_run_start(job: WorkerJob, reporter: Reporter, accumulation: int, steps: int, model, dtype) -> None:
    """Config, environment, run shape and data lineage; params already logged are skipped on resume."""
    study, data = job.study, job.data
    reporter.log_study(study)
    reporter.log_params(
        {
            "run": {
                "world_size": reporter.world_size,
                **_micro_batching(study, reporter.world_size, accumulation),
                "total_steps": steps,
                "train_examples": len(data.train),
                "test_instances": len(data.test),
                "model_parameters": parameter_counts(model)["total"],
                "trainable_parameters": parameter_counts(model)["trainable"],
                "compute_dtype": str(dtype).removeprefix("torch."),
                "device": reporter.device.type,
                "token_digest": data.token_digest,
            }
        }
    )
    name = f"{study.name}-{study.data.source}"
    reporter.log_dataset(data.digest, data.source, name=name, n_instances=len(data.train), context="training")
    reporter.log_dataset(data.digest, data.source, name=name, n_instances=len(data.test), context="evaluation")
    reporter.log_prompts(data.sample_prompts)
    if data.notes:
        reporter.log_text("\n".join(data.notes) + "\n", "data_notes.txt")
    reporter.flush()


def _micro_batching(study: Study, world_size: int, accumulation: int | None) -> dict:
    """How a global batch is split: per-device batch x accumulation, or a token budget (accumulation varies)."""
    train = study.train
    if accumulation is None:
        return {"max_tokens_per_micro_batch": train.max_tokens_per_micro_batch, "gradient_accumulation": "per step (token budget)",
                "effective_batch_size": train.global_batch_size}
    return {"per_device_batch_size": train.per_device_batch_size, "gradient_accumulation": accumulation,
            "effective_batch_size": train.per_device_batch_size * world_size * accumulation}


# --- without Ray: one process, or torchrun -----------------------------------------------------


def run_plain(study: Study, checkpoint_root: str | Path) -> dict[str, float]:
    """One run without Ray: this process alone, or one rank of a torchrun launch; no MLflow.

    Every rank prepares the data itself (deterministic) and the ranks check that they agree;
    checkpoints go to `checkpoint_root`, and the newest one there is resumed.
    """
    reporter = PlainReporter(checkpoint_root, keep=study.train.checkpoints_to_keep)
    tokenizer, data = prepare_run(study)
    if reporter.world_size > 1:
        digests: list[str] = [""] * reporter.world_size
        dist.all_gather_object(digests, data.token_digest)
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks prepared different token ids ({digests}); check that every rank sees the same data")
    return run_worker(WorkerJob(study=study, data=data, tokenizer=tokenizer), reporter)


def main(argv: list[str] | None = None) -> None:
    """python -m itstudy.training.loop EXPERIMENT [KEY=VALUE ...] --checkpoints DIR [--metrics-out FILE]

    Under `torchrun --nproc-per-node N -m itstudy.training.loop ...` each process is one rank.
    """
    import argparse

    import transformers

    from itstudy.config import load_study

    transformers.utils.logging.disable_progress_bar()  # one bar per checkpoint write
    parser = argparse.ArgumentParser(prog="python -m itstudy.training.loop", description=run_plain.__doc__)
    parser.add_argument("experiment")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--checkpoints", required=True, help="folder for checkpoints (resumed from if it has any)")
    parser.add_argument("--metrics-out", help="rank 0 writes the final metrics here as JSON")
    args = parser.parse_args(argv)
    metrics = run_plain(load_study(args.experiment, args.overrides), args.checkpoints)
    if metrics and args.metrics_out:
        Path(args.metrics_out).write_text(json.dumps(metrics, indent=1, sort_keys=True))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
