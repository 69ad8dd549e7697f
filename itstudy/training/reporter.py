"""How the training loop talks to whatever drives it: where it runs, where to report, what to resume.

The loop (`itstudy.training.loop.run_worker`) only sees the `Reporter` protocol, so one loop runs
under three drivers:

- `PlainReporter`: no Ray at all: one process, or one per GPU under torchrun (rank and world size
  from torch.distributed). Checkpoints go into a folder, the newest `keep` are kept, and the
  newest is resumed, so a rerun of the same command continues where it stopped.
- `RayTrainReporter`: inside a Ray Train `TorchTrainer` worker (`ray.train.report`,
  `ray.train.get_checkpoint`).
- `TuneReporter`: inside a Ray Tune function trainable running a single-worker trial
  (`ray.tune.report`, `ray.tune.get_checkpoint`); Ray Train's calls raise there.

Reporting is a barrier under every driver: every rank calls `report` at the same points, and
only rank 0 passes a checkpoint folder. Ray is imported only inside the Ray reporters.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist


class Reporter(Protocol):
    """What the training loop needs from its driver."""

    rank: int
    """This worker's rank; rank 0 writes checkpoints and logs to MLflow."""
    world_size: int
    """Data-parallel workers in the run."""
    device: torch.device
    """Where this worker computes."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        """Hand over metrics (and, from rank 0, a finished checkpoint folder); a barrier over ranks."""

    def restored_checkpoint(self) -> Path | None:
        """A local folder holding the checkpoint to resume from, or None for a fresh start."""


def _cuda_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


class PlainReporter:
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
        return sorted(path for path in self.checkpoint_root.iterdir() if path.name.startswith("checkpoint_"))

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir is not None:
            self.checkpoint_root.mkdir(parents=True, exist_ok=True)
            # A rename is atomic: a crash leaves either no checkpoint or a whole one.
            shutil.move(str(checkpoint_dir), self.checkpoint_root / f"checkpoint_{int(metrics['step']):08d}")
            for stale in self.checkpoints()[: -self.keep]:
                shutil.rmtree(stale)
        if dist.is_initialized():
            dist.barrier()

    def restored_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None


class RayTrainReporter:
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


class TuneReporter:
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
