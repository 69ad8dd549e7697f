"""One training run on a real local Ray cluster (itstudy.training.runner): 2 TorchTrainer workers
(DDP on gloo), a real MLflow SQLite store, real SuperNI tasks and the synthetic suite, and a worker
failure that Ray Train recovers from the last checkpoint to the same result as an uninterrupted
run (the reference runs without Ray, under torchrun, with the same 2-rank arithmetic).

Two TorchTrainer runs, about 35 s each on 2 cores, most of it Ray's start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml
from mlflow import MlflowClient

from itstudy.config import load_study, to_plain
from itstudy.tracking import measured_metrics, resolve_tracking_uri
from itstudy.training.runner import run_training, train_command

pytestmark = pytest.mark.ray

TRAIN_TINY = Path(__file__).resolve().parents[1] / "experiments" / "train_tiny.yaml"
TIMING = ("tokens_per_s", "samples_per_s", "loop_s", "step")
SUPERNI_TEST_TASKS = [
    "task020_mctaco_span_based_question",
    "task199_mnli_classification",
    "task1152_bard_analogical_reasoning_causation",
]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_two_workers_train_on_superni_and_the_mlflow_run_holds_everything(superni_dir, local_ray, capsys, tmp_path):
    study = load_study(
        TRAIN_TINY,
        [
            "data.source=superni",
            f"data.superni_dir={superni_dir}",
            "data.num_train_tasks=4",
            f"data.test_tasks=[{','.join(SUPERNI_TEST_TASKS)}]",
            "model.tokenizer=t5",
            "train.eval_every_steps=null",
        ],
    )
    result = train_command(study)
    printed = capsys.readouterr().out
    assert f"MLflow run id: {result.run_id}" in printed and "exact_match" in printed

    client = MlflowClient(resolve_tracking_uri(study.tracking))
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.global_batch_size"] == "8" and params["model.tokenizer"] == "t5"
    assert (params["run.world_size"], params["run.gradient_accumulation"], params["run.effective_batch_size"]) == ("2", "2", "8")
    assert params["env.torch"].startswith("2.") and "env.git_commit" in params

    losses = history(client, result.run_id, "train_loss")
    assert [step for step, _ in losses] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert losses[-1][1] < losses[0][1]
    metrics = measured_metrics(run.data.metrics)  # per-task figures sit under per_task/ in MLflow
    for task in SUPERNI_TEST_TASKS:
        assert 0 <= metrics[f"exact_match_for_{task}"] <= 100 and 0 <= metrics[f"rougeL_for_{task}"] <= 100
    assert metrics["exact_match"] == pytest.approx(result.metrics["exact_match"])
    assert {"learning_rate", "tokens_per_s", "exact_match_classification", "rougeL_generation"} <= set(metrics)

    artifacts = {item.path for item in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "predictions.jsonl", "task_metrics.csv", "prompts.txt"} <= artifacts
    folder = Path(client.download_artifacts(result.run_id, "", str(tmp_path)))
    assert yaml.safe_load((folder / "config.yaml").read_text()) == to_plain(study)
    predictions = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 + 8 + 8 and {p["task"] for p in predictions} == set(SUPERNI_TEST_TASKS)
    assert {"instance_id", "prompt_hash", "prediction", "references", "exact_match", "rougeL"} <= set(predictions[0])
    # Rank classification is dealt to both ranks and gathered: every classification instance has its choice.
    assert all(p["rank_choice"] for p in predictions if p["is_classification"]) and "rank_exact_match" in metrics
    assert "Definition:" in (folder / "prompts.txt").read_text()
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest

    checkpoint = Path(run.data.tags["itstudy.checkpoint"])
    assert checkpoint == Path(result.checkpoint)
    assert (checkpoint / "model" / "config.json").is_file() and (checkpoint / "trainer_state.pt").is_file()


def test_a_worker_failure_is_recovered_to_the_uninterrupted_result(local_ray, tmp_path):
    # Reference: the same 2-rank DDP arithmetic without Ray (torchrun, gloo), never interrupted.
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "itstudy.training.loop", str(TRAIN_TINY),
         "--checkpoints", str(tmp_path / "plain"), "--metrics-out", str(tmp_path / "plain.json")],
        check=True,
        timeout=300,
    )
    uninterrupted = json.loads((tmp_path / "plain.json").read_text())

    # Checkpoint at step 20, rank 0 raises before step 30, Ray Train restarts the workers from step 20.
    study = load_study(TRAIN_TINY, ["train.fail_at_step=30", "train.max_failures=1"])
    result = run_training(study)

    expected = {key: value for key, value in uninterrupted.items() if key not in TIMING}
    assert {key: result.metrics[key] for key in expected} == expected  # loss, EM and ROUGE-L, exactly
    client = MlflowClient(resolve_tracking_uri(study.tracking))
    losses = history(client, result.run_id, "train_loss")
    replayed = [value for step, value in losses if step == 25]
    assert len(replayed) == 2 and replayed[0] == replayed[1]  # step 25 ran twice, identically
    assert losses[-1][1] < losses[0][1]
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    synthetic_tasks = {key.removeprefix("per_task/rougeL_for_") for key in run.data.metrics if key.startswith("per_task/rougeL_for_synth_")}
    assert len(synthetic_tasks) == 7 and all(f"per_task/exact_match_for_{task}" in run.data.metrics for task in synthetic_tasks)
