"""The training loop without Ray (itstudy.training.engine, prepare, evaluate, loop, reporter):
batching by length, a loss that does not depend on how the global batch is split, evaluation that
does not depend on batching, self-describing checkpoints, and resume that replays an
uninterrupted run exactly."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from itstudy.config import ConfigError, load_study, study_from_dict, to_plain
from itstudy.training.engine import (
    LABEL_PAD,
    Seq2SeqExample,
    StepPlan,
    collate,
    epoch_batches,
    total_steps,
    train_step,
)
from itstudy.training.evaluate import generate_predictions
from itstudy.training.loop import InjectedFault, WorkerJob, run_worker
from itstudy.training.models import load_model, new_t5, t5_config
from itstudy.training.prepare import prepare_run
from itstudy.training.reporter import PlainReporter

TRAIN_TINY = Path(__file__).resolve().parents[1] / "experiments" / "train_tiny.yaml"
TIMING = ("tokens_per_s", "samples_per_s", "loop_s")


def tiny_study(cache_dir: Path, *overrides: str):
    """experiments/train_tiny.yaml as one process (accumulation 2), its synthetic suite cached in `cache_dir`."""
    return load_study(
        TRAIN_TINY,
        ["resources.workers_per_trial=1", "train.per_device_batch_size=4", f"data.cache_dir={cache_dir}", *overrides],
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    study = tiny_study(tmp_path_factory.mktemp("cache"))
    tokenizer, data = prepare_run(study)
    return study, tokenizer, data


def without_timing(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in TIMING}


# --- batches ----------------------------------------------------------------------------------


def _padding_fraction(batches, lengths):
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - sum(lengths[i] for batch in batches for i in batch) / padded


def test_epoch_batches_group_by_length_and_are_a_function_of_seed_and_epoch():
    rng = random.Random(0)
    lengths = [rng.choice([20, 40, 80, 300, 1000]) + rng.randrange(10) for _ in range(1003)]
    batches = epoch_batches(lengths, 8, seed=1, epoch=0)
    used = [index for batch in batches for index in batch]
    assert len(used) == len(set(used)) == 1000  # every example at most once; the remainder (3) is dropped
    assert all(len(batch) == 8 for batch in batches)
    assert batches == epoch_batches(lengths, 8, seed=1, epoch=0)
    assert batches != epoch_batches(lengths, 8, seed=1, epoch=1)
    assert batches != epoch_batches(lengths, 8, seed=2, epoch=0)
    shuffled = list(range(1003))
    rng.shuffle(shuffled)
    random_batches = [shuffled[i : i + 8] for i in range(0, 1000, 8)]
    assert _padding_fraction(batches, lengths) < 0.1 < 0.5 < _padding_fraction(random_batches, lengths)


def test_micro_batches_split_a_global_batch_over_ranks_and_accumulation():
    lengths = list(range(100, 164))
    plan = StepPlan(lengths, global_batch_size=16, seed=0)
    world, accumulation = 2, 2
    per_rank = {rank: plan.micro_batches(3, rank, world, accumulation) for rank in range(world)}
    chunks = [chunk for rank in per_rank.values() for chunk in rank]
    assert sorted(i for chunk in chunks for i in chunk) == sorted(plan.global_batch(3))
    assert all(len(chunk) == 4 for chunk in chunks)
    for micro in range(accumulation):  # at each micro-step the ranks hold neighbouring lengths
        rank0, rank1 = (sorted(lengths[i] for i in per_rank[r][micro]) for r in range(world))
        assert rank0[0] >= rank1[-1]
    assert total_steps(64, 16, epochs=2.5, max_steps=None) == 10
    with pytest.raises(ValueError, match="do not fill one global batch"):
        StepPlan(lengths[:10], global_batch_size=16, seed=0)


def test_collate_pads_dynamically_with_contiguous_tensors():
    batch = collate([Seq2SeqExample((5, 6, 1), (7, 1)), Seq2SeqExample((5, 1), (7, 8, 9, 1))], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 1, LABEL_PAD, LABEL_PAD], [7, 8, 9, 1]]
    assert all(tensor.is_contiguous() for tensor in batch.values())


def test_the_step_loss_is_a_token_mean_whatever_the_accumulation():
    config = t5_config("scratch/t5-tiny", vocab_size=64)
    config.dropout_rate = 0.0
    rng = random.Random(0)
    examples = [
        Seq2SeqExample(tuple(rng.randrange(2, 64) for _ in range(n)) + (1,), tuple(rng.randrange(2, 64) for _ in range(m)) + (1,))
        for n, m in [(9, 1), (4, 7), (12, 2), (3, 5)]
    ]
    target_tokens = sum(len(e.labels) for e in examples)

    def one_step(splits):
        model = new_t5(config, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        micro = [collate(examples[start:end], 0) for start, end in splits]
        result = train_step(
            model, micro, optimizer, scheduler, step_target_tokens=target_tokens, world_size=1, dtype=torch.float32, grad_clip=None
        )
        return model, result.loss_sum / result.target_tokens

    whole, whole_loss = one_step([(0, 4)])
    split, split_loss = one_step([(0, 1), (1, 3), (3, 4)])
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole.parameters(), split.parameters()):
        # fp32 sums in another order differ by ~1e-6; a mis-scaled micro-batch loss moves gradients by ~1e-2.
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- preparation and evaluation ---------------------------------------------------------------


def test_prepared_data_holds_every_instance_as_token_ids(prepared):
    study, tokenizer, data = prepared
    assert len(data.train) == len(data.train_tasks) * study.data.instances_per_task
    assert len(data.test) == len(data.test_tasks) * study.data.test_instances_per_task
    assert all(example.labels[-1] == tokenizer.eos_token_id for example in data.train)
    assert all(len(example.input_ids) <= study.train.max_source_length for example in data.train)
    assert {item.task for item in data.test}.isdisjoint(data.train_tasks)
    assert data.sample_prompts[0].startswith("### training task") and "Now complete the following example" in data.sample_prompts[0]
    tokenizer_again, data_again = prepare_run(study)
    assert data_again.token_digest == data.token_digest


def test_the_variant_reaches_test_prompts_only_when_asked(tmp_path):
    simplified = tiny_study(tmp_path, "variant.definition=simplified")
    _, altered = prepare_run(simplified)
    _, kept = prepare_run(tiny_study(tmp_path, "variant.definition=simplified", "variant.apply_to_test=false"))
    test_prompt = lambda data: next(p for p in data.sample_prompts if p.startswith("### test task"))
    assert "Definition: Output one of the following:" in test_prompt(altered)
    assert "Definition: Output one of the following:" not in test_prompt(kept)
    assert altered.train == kept.train


def test_predictions_do_not_depend_on_batching_and_keep_item_order(prepared):
    study, tokenizer, data = prepared
    model = new_t5(t5_config("scratch/t5-tiny", vocab_size=1024), seed=0)
    items = data.test[:9]
    one_by_one = generate_predictions(model, tokenizer, items, batch_size=1, max_new_tokens=4)
    batched = generate_predictions(model, tokenizer, items, batch_size=4, max_new_tokens=4)
    assert [p.prediction for p in one_by_one] == [p.prediction for p in batched]
    assert [(p.task, p.instance_id, p.prompt_hash) for p in batched] == [(i.task, i.instance_id, i.prompt_hash) for i in items]


# --- runs, checkpoints, resume ----------------------------------------------------------------


def test_a_plain_run_learns_and_writes_self_describing_checkpoints(prepared, tmp_path):
    study, tokenizer, data = prepared
    reporter = PlainReporter(tmp_path / "checkpoints", keep=1)
    metrics = run_worker(WorkerJob(study, data, tokenizer), reporter)

    assert [report["step"] for report in reporter.history] == [20, 40]
    first, last = reporter.history
    # Falls, and ends below ln(1024) = 6.93, the loss of a uniform guess over the 1024-token vocabulary.
    assert last["train_loss"] < first["train_loss"] and last["train_loss"] < math.log(1024)
    for task in data.test_tasks:
        assert 0 <= metrics[f"exact_match_for_{task}"] <= 100 and f"rougeL_for_{task}" in metrics

    (checkpoint,) = reporter.checkpoints()  # keep=1: the step-20 checkpoint was removed
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert state["step"] == 40 and state["world_size"] == 1 and state["token_digest"] == data.token_digest
    assert study_from_dict(yaml.safe_load((checkpoint / "config.yaml").read_text())) == study
    reloaded = AutoTokenizer.from_pretrained(checkpoint / "tokenizer")
    assert reloaded("Output: yes")["input_ids"] == tokenizer("Output: yes")["input_ids"]
    assert load_model(checkpoint / "model").num_parameters() > 0


class CurveReporter(PlainReporter):
    """A plain reporter that keeps the training loss the loop logs every `train.log_every_steps`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.curve: dict[int, float] = {}

    def log_metrics(self, metrics, step: int) -> None:
        if "train_loss" in metrics:
            self.curve[step] = metrics["train_loss"]


@pytest.mark.parametrize("max_tokens", [None, 600], ids=["fixed-micro-batches", "token-budget"])
def test_resume_after_a_failure_replays_the_uninterrupted_run(prepared, tmp_path, max_tokens):
    study, tokenizer, data = prepared
    study = study.model_copy(update={"train": study.train.model_copy(update={"max_tokens_per_micro_batch": max_tokens})})
    straight = CurveReporter(tmp_path / "a")
    uninterrupted = run_worker(WorkerJob(study, data, tokenizer), straight)

    failing = study.model_copy(update={"train": study.train.model_copy(update={"fail_at_step": 30})})
    first_attempt = CurveReporter(tmp_path / "b")
    with pytest.raises(InjectedFault):
        run_worker(WorkerJob(failing, data, tokenizer), first_attempt)
    second_attempt = CurveReporter(tmp_path / "b")
    resumed = run_worker(WorkerJob(failing, data, tokenizer), second_attempt)

    assert [r["step"] for r in first_attempt.history] == [20]
    assert [r["step"] for r in second_attempt.history] == [40]  # resumed at 20: only the remaining steps ran
    assert without_timing(resumed) == without_timing(uninterrupted)  # loss and every metric, exactly
    resumed_curve = {step: loss for step, loss in first_attempt.curve.items() if step <= 20} | second_attempt.curve
    assert resumed_curve == straight.curve and len(straight.curve) == 8  # the training loss every 5 steps, exactly

    finished_again = PlainReporter(tmp_path / "b")  # a finished run trains nothing and reports its result
    assert without_timing(run_worker(WorkerJob(failing, data, tokenizer), finished_again)) == without_timing(resumed)


def test_a_checkpoint_of_other_data_is_refused(prepared, tmp_path):
    study, tokenizer, data = prepared
    run_worker(WorkerJob(study, data, tokenizer), PlainReporter(tmp_path / "run"))
    other = dataclasses.replace(data, train=data.train[:-1])
    with pytest.raises(ConfigError, match="written for other token ids"):
        run_worker(WorkerJob(study, other, tokenizer), PlainReporter(tmp_path / "run"))


def test_a_checkpoint_of_another_learning_rate_is_refused_naming_the_key_while_resources_may_change(prepared, tmp_path):
    study, tokenizer, data = prepared
    run_worker(WorkerJob(study, data, tokenizer), PlainReporter(tmp_path / "run"))
    slower = study.model_copy(update={"train": study.train.model_copy(update={"learning_rate": study.train.learning_rate / 10})})
    with pytest.raises(ConfigError, match=r"written with another value of train\.learning_rate;") as refused:
        run_worker(WorkerJob(slower, data, tokenizer), PlainReporter(tmp_path / "run"))
    assert "\n" not in str(refused.value)
    moved = study.model_copy(update={"resources": study.resources.model_copy(update={"cpus_per_worker": 2.0})})
    resumed = PlainReporter(tmp_path / "run")
    run_worker(WorkerJob(moved, data, tokenizer), resumed)
    assert [report["step"] for report in resumed.history] == [40]  # resumed from the last checkpoint, nothing retrained


def test_a_tracked_plain_run_logs_through_its_reporter(prepared, tmp_path):
    from itstudy.tracking import create_run, download_artifact, ensure_experiment, get_run, list_artifacts

    study, tokenizer, data = prepared
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = create_run(uri, ensure_experiment(uri, "loop"), "tracked", tags={})
    reporter = PlainReporter(tmp_path / "checkpoints")
    metrics = run_worker(WorkerJob(study, data, tokenizer, run_id=run_id, tracking_uri=uri), reporter)

    assert reporter.logger is None, "the logger is closed with the loop"
    run = get_run(uri, run_id)
    assert run.data.params["run.total_steps"] == "40" and run.data.params["env.git_commit"]
    assert run.data.metrics["exact_match"] == pytest.approx(metrics["exact_match"])
    assert {"label_space_rate", "rank_exact_match"} <= set(run.data.metrics), "format figures beside exact match"
    assert {"config.yaml", "prompts.txt", "predictions.jsonl", "task_metrics.csv"} <= set(list_artifacts(uri, run_id))
    records = download_artifact(uri, run_id, "predictions.jsonl", tmp_path / "artifacts").read_text().splitlines()
    assert len(records) == len(data.test) and json.loads(records[0])["instance_id"] == data.test[0].instance_id
    assert {dataset.dataset.digest for dataset in run.inputs.dataset_inputs} == {data.digest[:36]}
    assert run.info.status == "RUNNING", "the driver that created the run ends it"


def test_the_loop_imports_neither_mlflow_nor_ray():
    probe = "import sys, itstudy.training.loop; print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'ray'}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_plain_config_round_trip_of_the_shipped_experiment():
    study = load_study(TRAIN_TINY)
    assert study.resources.workers_per_trial * study.train.per_device_batch_size * 2 == study.train.global_batch_size
    assert study_from_dict(to_plain(study)) == study
