"""How the training loop talks to whatever drives it: where it runs, where to report and log, what to resume.

The loop (`itstudy.training.loop.run_worker`) only sees a `Reporter`, so one loop runs under
three drivers:

- `PlainReporter`: no Ray at all: one process, or one per GPU under torchrun (rank and world size
  from torch.distributed). Checkpoints go into a folder, the newest `keep` are kept, and the
  newest is resumed, so a rerun of the same command continues where it stopped.
- `RayTrainReporter`: inside a Ray Train `TorchTrainer` worker (`ray.train.report`,
  `ray.train.get_checkpoint`).
- `TuneReporter`: inside a Ray Tune function trainable running a single-worker trial
  (`ray.tune.report`, `ray.tune.get_checkpoint`); Ray Train's calls raise there.

Reporting is a barrier under every driver: every rank calls `report` at the same points, and
only rank 0 passes a checkpoint folder. Tracking is the reporter's too: inside `tracking(uri,
run_id, journal_path)` rank 0 holds a `RunLogger` for the MLflow run the driver created, and the
`log_*` methods write through it; on other ranks and without a run they do nothing. With a
journal path, metric points are recorded on disk before MLflow hears of them, and `record_into` copies
that record into each checkpoint before it is reported (`itstudy.tracking.journal`). Ray is
imported only inside the Ray reporters, MLflow only when a run is tracked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from itstudy.metrics import ScoredPrediction, task_rows
from itstudy.training.checkpoints import CHECKPOINT_PREFIX

if TYPE_CHECKING:
    from itstudy.config import Study
    from itstudy.tracking import RunLogger


class Reporter:
    """What the training loop needs from its driver; subclasses set where this worker runs."""

    rank: int
    """This worker's rank; rank 0 writes checkpoints and logs to MLflow."""
    world_size: int
    """Data-parallel workers in the run."""
    device: torch.device
    """Where this worker computes."""
    logger: RunLogger | None = None
    """Rank 0's logger while `tracking` is open for a run; None otherwise."""
    _progress_due: float = 0.0
    """When `show_progress` may write the progress tag again (time.monotonic)."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        """Hand over metrics (and, from rank 0, a finished checkpoint folder); a barrier over ranks."""
        raise NotImplementedError

    def restored_checkpoint(self) -> Path | None:
        """A local folder holding the checkpoint to resume from, or None for a fresh start."""
        raise NotImplementedError

    # --- tracking: rank 0 logs into the driver's run ---------------------------------------------

    @contextlib.contextmanager
    def tracking(
        self, uri: str | None, run_id: str | None, journal_path: str | None = None, system_metrics: bool = False
    ) -> Iterator[None]:
        """Rank 0 logs into MLflow run `run_id` while the block runs (checked first, flushed at the end,
        also on failure), recording metrics in `journal_path` first if given, and MLflow's system
        metrics of this node if asked; the driver ends the run."""
        if self.rank != 0 or not run_id:
            yield
            return
        from itstudy.tracking import MetricJournal, RunLogger, check_tracking

        check_tracking(uri)
        journal = MetricJournal(journal_path) if journal_path else None
        self.logger = RunLogger(uri, run_id, journal=journal)
        monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            # resume_logging: a resumed run continues its system-metric steps instead of overwriting them
            monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
            monitor.start()
        try:
            yield
        finally:
            if monitor:
                monitor.finish()
            self.logger.close()  # a failing worker's buffered metrics are sent (or kept in the record) too
            self.logger = None

    @property
    def tracked(self) -> bool:
        """Whether this worker logs (rank 0 of a tracked run)."""
        return self.logger is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.logger:
            self.logger.log_params(params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.logger:
            self.logger.set_tags(tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.logger:
            self.logger.log_metrics(metrics, step=step)

    def log_study(self, study: Study) -> None:
        """The config (config.yaml, params, digest tag) and this process's environment."""
        if self.logger:
            self.logger.log_config(study)
            self.logger.log_environment()

    def log_dataset(self, digest: str, source: str, name: str, n_instances: int, context: str) -> None:
        if self.logger:
            self.logger.log_dataset(digest, source, name=name, n_instances=n_instances, context=context)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.logger:
            self.logger.log_text(text, artifact_file)

    def log_prompts(self, prompts: Iterable[str]) -> None:
        if self.logger:
            self.logger.log_prompts(prompts)

    def log_predictions(self, scored: Sequence[ScoredPrediction], metrics: Mapping[str, float], step: int) -> None:
        """predictions.jsonl, task_metrics.csv and the evaluation `metrics` (computed from `scored`)."""
        if self.logger:
            self.logger.log_predictions([item.record() for item in scored], task_rows(scored), metrics, step=step)

    def log_model(self, checkpoint: Path, registered_name: str) -> None:
        """The checkpoint's model and tokenizer as the run's `model/`, registered as a model version."""
        if self.logger:
            with tempfile.TemporaryDirectory() as folder:
                shutil.copytree(checkpoint / "model", folder, dirs_exist_ok=True)
                shutil.copytree(checkpoint / "tokenizer", folder, dirs_exist_ok=True)
                self.logger.log_model(folder, registered_name)

    def show_progress(self, step: int, steps: int, training: Mapping[str, float], seconds_per_step: float) -> None:
        """The run's live progress as its `itstudy.progress` tag, which the sweep's console and the UI show.

        A display, not a result: rewritten at most every `PROGRESS_EVERY_S`, tried once, and after a
        failure (the tracking server is down) not tried for `PROGRESS_PAUSE_S`, so that an outage
        never slows training by a write per step.
        """
        if not self.logger or time.monotonic() < self._progress_due:
            return
        shown = self.logger.try_set_tag(PROGRESS_TAG, progress_text(step, steps, training, seconds_per_step))
        self._progress_due = time.monotonic() + (PROGRESS_EVERY_S if shown else PROGRESS_PAUSE_S)

    def flush(self) -> None:
        if self.logger:
            self.logger.flush()

    def resume_record(self, checkpoint: Path | None) -> None:
        """Resuming from `checkpoint`: take its copy of the metric record if this node has none."""
        if self.logger and self.logger.journal:
            self.logger.journal.adopt(checkpoint)

    def record_into(self, checkpoint_dir: Path) -> None:
        """Before a checkpoint is reported: send what is buffered, and put the (fsync'd) metric record
        in the checkpoint, so that a resume from it neither loses nor repeats a step."""
        if self.logger:
            self.logger.flush()
            if self.logger.journal:
                self.logger.journal.copy_into(checkpoint_dir)


PROGRESS_TAG = "itstudy.progress"
"""A running training run's step, loss, throughput and ETA, as one line of text."""
PROGRESS_EVERY_S = 10.0
"""The progress tag is rewritten at most this often (the sweep's console reads it once a minute)."""
PROGRESS_PAUSE_S = 120.0
"""After a failed progress write, none is tried for this long."""


def progress_text(step: int, steps: int, training: Mapping[str, float], seconds_per_step: float) -> str:
    """`step 120/420 (29%), loss 2.31, 5400 tokens/s, ETA 3m10s`."""
    eta = round(seconds_per_step * (steps - step))
    return (
        f"step {step}/{steps} ({100 * step // steps}%), loss {training['train_loss']:.3g}, "
        f"{training['tokens_per_s']:.0f} tokens/s, ETA {eta // 60}m{eta % 60:02d}s"
    )


def _cuda_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


class PlainReporter(Reporter):
    """No Ray: checkpoints in `checkpoint_root`, the newest `keep` kept; reports kept in `history`.

    Under torchrun (WORLD_SIZE > 1) it joins the process group (NCCL on GPU, gloo on CPU).
    """

    def __init__(self, checkpoint_root: str | Path, keep: int = 2):
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.device = _cuda_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.checkpoint_root = Path(checkpoint_root).resolve()
        self.keep = keep
        self.history: list[dict[str, float]] = []

    def checkpoints(self) -> list[Path]:
        """Finished checkpoint folders, oldest first (names sort by step)."""
        if not self.checkpoint_root.is_dir():
            return []
        return sorted(path for path in self.checkpoint_root.iterdir() if path.name.startswith(CHECKPOINT_PREFIX))

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is not None:
            self.checkpoint_root.mkdir(parents=True, exist_ok=True)
            # Copied under a temporary name beside its final one, then renamed (atomic on one file
            # system): a crash leaves either no checkpoint or a whole one.
            final = self.checkpoint_root / f"{CHECKPOINT_PREFIX}{int(metrics['step']):08d}"
            partial = self.checkpoint_root / f".partial-{final.name}"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.move(str(checkpoint_dir), partial)
            if final.exists():  # an unusable checkpoint of this step, skipped on resume: replaced
                shutil.rmtree(final)
            os.replace(partial, final)
            for stale in self.checkpoints()[: -self.keep]:
                shutil.rmtree(stale)
        if dist.is_initialized():
            dist.barrier()

    def restored_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None


class RayTrainReporter(Reporter):
    """Inside a Ray Train worker: `ray.train.report` persists rank 0's checkpoint to the run's storage."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def restored_checkpoint(self) -> Path | None:
        import ray.train

        return _local_path(ray.train.get_checkpoint())


class TuneReporter(Reporter):
    """Inside a Ray Tune function trainable (one worker): `ray.tune.report` and `ray.tune.get_checkpoint`."""

    def __init__(self):
        self.rank = 0
        self.world_size = 1
        self.device = _cuda_device(0)  # Tune sets CUDA_VISIBLE_DEVICES to the trial's GPU

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        import ray.tune

        checkpoint = ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=checkpoint)

    def restored_checkpoint(self) -> Path | None:
        import ray.tune

        return _local_path(ray.tune.get_checkpoint())


def _local_path(checkpoint) -> Path | None:
    """The checkpoint as a local folder: used in place on local storage, else downloaded."""
    if checkpoint is None:
        return None
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return Path(checkpoint.path)
    return Path(checkpoint.to_directory())
