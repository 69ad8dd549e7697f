"""FSDP2 on a real local Ray cluster (itstudy.training.sharding): 2 TorchTrainer workers (gloo on
CPU) train scratch/llama-tiny sharded, generate and rank labels from gathered weights without
hanging, recover from a worker failure through a checkpoint written from the sharded state, and
end where DDP ends. The DDP reference is the same 2-rank arithmetic without Ray (torchrun).

About 50 s on 2 cores: one TorchTrainer run (most of it Ray's start-up) and one torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from itstudy.config import load_study
from itstudy.training.runner import run_training

pytestmark = pytest.mark.ray

TRAIN_TINY = Path(__file__).resolve().parents[1] / "experiments" / "train_tiny.yaml"
LLAMA = ["model.name=scratch/llama-tiny"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_fsdp_on_ray_recovers_a_failure_and_matches_ddp(local_ray, tmp_path):
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "itstudy.training.loop", str(TRAIN_TINY), *LLAMA, "train.strategy=ddp",
         "--checkpoints", str(tmp_path / "ddp"), "--metrics-out", str(tmp_path / "ddp.json")],
        check=True,
        timeout=300,
    )
    ddp = json.loads((tmp_path / "ddp.json").read_text())

    # Checkpoint at step 20 from gathered weights, rank 0 raises before step 30, Ray restarts from 20.
    study = load_study(TRAIN_TINY, [*LLAMA, "train.strategy=fsdp", "train.fail_at_step=30", "train.max_failures=1"])
    result = run_training(study)

    assert result.metrics["step"] == 40
    # Same arithmetic, other reduction order (reduce-scatter of shards vs all-reduce): equal to ~1e-6.
    assert result.metrics["train_loss"] == pytest.approx(ddp["train_loss"], rel=1e-4)
    for key in ("exact_match", "rougeL", "rank_exact_match", "label_space_rate"):
        assert result.metrics[key] == pytest.approx(ddp[key], abs=1e-6), key
    checkpoint = Path(result.checkpoint)
    assert (checkpoint / "model" / "config.json").is_file()  # whole weights, saved by rank 0
