"""FSDP2 on a real local Ray cluster (itstudy.training.sharding): 2 TorchTrainer workers (gloo on
CPU) train scratch/llama-tiny sharded, generate and rank labels from gathered weights without
hanging, recover from a worker failure through a checkpoint written from the sharded state, and
end where DDP ends. The DDP reference is the same 2-rank arithmetic without Ray (torchrun).

The Ray test: about 50 s on an idle 2-core machine (one TorchTrainer run, most of it Ray's
start-up, and one torchrun). A one-rank process group checks the gathered copy in a second."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
import torch.distributed as dist

from itstudy.config import load_study
from itstudy.training.engine import make_optimizer
from itstudy.training.models import load_model, new_t5, t5_config
from itstudy.training.runner import run_training
from itstudy.training.sharding import for_training, gathered, is_sharded

TRAIN_TINY = Path(__file__).resolve().parents[1] / "experiments" / "train_tiny.yaml"
LLAMA = ["model.name=scratch/llama-tiny"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_the_gathered_copy_of_a_sharded_v11_t5_keeps_its_own_output_embedding(free_ports, tmp_path):
    # One rank is enough to shard and gather; transformers ties a new T5's head even for v1.1 configs.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_ports(1)[0]}", rank=0, world_size=1)
    try:
        config = t5_config("scratch/t5-small", vocab_size=256)
        config.num_layers = config.num_decoder_layers = 1
        reference, model = new_t5(config, seed=0).eval(), new_t5(config, seed=0)
        sharded = for_training(model, "fsdp", world_size=2, device_ids=None, dtype=torch.float32)
        assert is_sharded(sharded)
        whole, optimizer_state = gathered(sharded, make_optimizer(sharded, 1e-3, 0.0))
    finally:
        dist.destroy_process_group()
    assert not is_sharded(whole) and whole.lm_head.weight is not whole.shared.weight
    ids, labels = torch.randint(2, 256, (2, 8)), torch.randint(2, 256, (2, 4))
    whole.save_pretrained(tmp_path / "model")  # what a checkpoint holds
    saved = load_model(tmp_path / "model").eval()
    with torch.no_grad():
        for copy in (whole, saved):
            torch.testing.assert_close(copy(input_ids=ids, labels=labels).logits, reference(input_ids=ids, labels=labels).logits)


@pytest.mark.ray
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
