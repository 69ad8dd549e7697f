"""Decoder-only models (itstudy.training: models, prepare, engine, evaluate): the prompt is the
context, the loss covers only the target, generation continues left-padded prompts, rank
classification scores each label after its prompt, and a scratch/llama-tiny run trains, evaluates and
resumes exactly like a T5 run."""

from __future__ import annotations

import math

import pytest
import torch

from itstudy.config import Study
from itstudy.data.task import Instance, LabelSpace, Task
from itstudy.training.engine import LABEL_PAD, CausalExample, collate, token_counts
from itstudy.training.evaluate import generate_predictions, label_log_likelihoods
from itstudy.training.loop import InjectedFault, WorkerJob, run_worker
from itstudy.training.models import (
    ModelSpecError,
    build_model,
    check_model_available,
    is_causal,
    load_model,
    model_for_run,
    parameter_counts,
)
from itstudy.training.prepare import encode_evaluation, encode_training, prepare_run
from itstudy.training.reporter import PlainReporter
from test_training_loop import tiny_study, without_timing  # tests/ is on sys.path (rootdir conftest)

LLAMA = "scratch/llama-tiny"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    study = tiny_study(tmp_path_factory.mktemp("cache"), f"model.name={LLAMA}")
    tokenizer, data = prepare_run(study)
    return study, tokenizer, data


def test_a_causal_example_is_prompt_then_target_with_the_loss_on_the_target_only(t5_tokenizer):
    task = Task("task_yes", "Say yes", (), (), (Instance("i1", "Is it?", ("yes",)),), label_space=LabelSpace(("yes", "no"), "t"))
    (example,), _ = encode_training([task], t5_tokenizer, Study(), causal=True)
    (item,), _ = encode_evaluation([task], t5_tokenizer, Study(), causal=True)
    batch = collate([example], pad_id=0)

    prompt = "Definition: Say yes.\n\nNow complete the following example -\nInput: Is it?\nOutput: "
    assert isinstance(example, CausalExample)
    assert example.input_ids == item.input_ids == tuple(t5_tokenizer(prompt)["input_ids"][:-1])  # no </s> before the answer
    assert example.labels == (4273, 1)  # '▁yes' '</s>': no special token before the target, </s> after it
    assert item.label_ids == ((4273, 1), (150, 1))  # labels scored exactly as targets are trained
    assert batch["input_ids"][0].tolist() == [*example.input_ids, 4273, 1]
    assert batch["labels"][0].tolist() == [LABEL_PAD] * len(example.input_ids) + [4273, 1]
    assert token_counts(batch, causal=True) == (len(example.input_ids), 2)


def test_causal_padding_masks_by_length_even_when_the_pad_is_eos():
    batch = collate([CausalExample((5, 6), (7, 1)), CausalExample((5,), (1,))], pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [5, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[LABEL_PAD, LABEL_PAD, 7, 1], [LABEL_PAD, 1, LABEL_PAD, LABEL_PAD]]


def test_decoder_only_folders_are_accepted_and_other_models_refused(tmp_path, t5_tokenizer):
    from transformers import ViTConfig

    build_model(LLAMA, t5_tokenizer, seed=0).save_pretrained(tmp_path / "llama")
    check_model_available(str(tmp_path / "llama"))
    assert is_causal(str(tmp_path / "llama")) and is_causal(LLAMA) and not is_causal("scratch/t5-tiny")
    ViTConfig(num_hidden_layers=1).save_pretrained(tmp_path / "vit")
    with pytest.raises(ModelSpecError, match="neither an encoder-decoder nor a causal language model"):
        check_model_available(str(tmp_path / "vit"))


def test_predictions_of_a_causal_model_do_not_depend_on_left_padding(prepared):
    study, tokenizer, data = prepared
    model = build_model(LLAMA, tokenizer, seed=0)
    items = data.test[:5]
    one_by_one = generate_predictions(model, tokenizer, items, batch_size=1, max_new_tokens=4)
    batched = generate_predictions(model, tokenizer, items, batch_size=4, max_new_tokens=4)
    assert [p.prediction for p in one_by_one] == [p.prediction for p in batched]
    assert any(p.prediction for p in batched), "the answer is what follows the prompt, not the prompt"


def test_causal_label_scores_are_the_summed_log_likelihoods_of_the_label_after_its_prompt(prepared):
    study, tokenizer, data = prepared
    model = build_model(LLAMA, tokenizer, seed=0).eval()
    items = [item for item in data.test if item.label_ids][:3]
    scores = label_log_likelihoods(model, [i.input_ids for i in items], [i.label_ids for i in items], tokenizer.pad_token_id, torch.float32)
    for item, item_scores in zip(items, scores):
        for label, score in zip(item.label_ids, item_scores):
            sequence = torch.tensor([item.input_ids + label])  # alone, unpadded
            with torch.no_grad():
                log_probs = model(input_ids=sequence).logits[0].log_softmax(-1)
            expected = sum(float(log_probs[len(item.input_ids) - 1 + j, token]) for j, token in enumerate(label))
            assert score == pytest.approx(expected, abs=1e-4)


def test_a_llama_tiny_run_learns_checkpoints_and_resumes_exactly(prepared, tmp_path):
    study, tokenizer, data = prepared
    reporter = PlainReporter(tmp_path / "a", keep=1)
    uninterrupted = run_worker(WorkerJob(study, data, tokenizer), reporter)
    first, last = reporter.history
    assert last["train_loss"] < first["train_loss"] and last["train_loss"] < math.log(1024)
    assert {"exact_match", "rougeL", "label_space_rate", "rank_exact_match"} <= set(uninterrupted)
    (checkpoint,) = reporter.checkpoints()
    loaded = load_model(checkpoint / "model")
    assert not loaded.config.is_encoder_decoder and parameter_counts(loaded)["encoder"] == 0

    failing = study.model_copy(update={"train": study.train.model_copy(update={"fail_at_step": 30})})
    with pytest.raises(InjectedFault):
        run_worker(WorkerJob(failing, data, tokenizer), PlainReporter(tmp_path / "b"))
    second_attempt = PlainReporter(tmp_path / "b")
    resumed = run_worker(WorkerJob(failing, data, tokenizer), second_attempt)
    assert [r["step"] for r in second_attempt.history] == [40]  # resumed at 20
    assert without_timing(resumed) == without_timing(uninterrupted)  # loss and every metric, exactly


def test_lora_trains_only_the_adapters_and_resumes_exactly(tmp_path):
    study = tiny_study(tmp_path / "cache", f"model.name={LLAMA}", "model.lora={r: 4, alpha: 8}", "train.max_steps=10",
                       "train.eval_every_steps=5", "data.test_instances_per_task=2")
    tokenizer, data = prepare_run(study)
    before = {name: p.detach().clone() for name, p in build_model(LLAMA, tokenizer, study.seed).named_parameters()}
    reporter = PlainReporter(tmp_path / "a")
    uninterrupted = run_worker(WorkerJob(study, data, tokenizer), reporter)
    checkpoint = reporter.checkpoints()[-1] / "model"
    assert (checkpoint / "adapter_config.json").is_file() and not (checkpoint / "config.json").is_file()

    trained = model_for_run(study.model, tokenizer, study.seed, checkpoint)
    adapters = {name for name, p in trained.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in name for name in adapters)
    for name, p in trained.named_parameters():
        base = name.removeprefix("base_model.model.").replace(".base_layer", "")
        if name in adapters:
            assert "lora_B" not in name or p.abs().sum() > 0, f"{name} never trained (LoRA B starts at zero)"
        else:
            assert torch.equal(p, before[base]), f"{name} is not an adapter but changed"

    failing = study.model_copy(update={"train": study.train.model_copy(update={"fail_at_step": 8})})
    with pytest.raises(InjectedFault):
        run_worker(WorkerJob(failing, data, tokenizer), PlainReporter(tmp_path / "b"))
    assert without_timing(run_worker(WorkerJob(failing, data, tokenizer), PlainReporter(tmp_path / "b"))) == without_timing(uninterrupted)


def test_the_benchmark_trains_a_causal_shape_on_both_sides_over_the_same_tokens(tmp_path):
    from itstudy.training.bench import bench_command

    report = bench_command(["train", "--shape", LLAMA, "--batch", "2", "--steps", "3", "--max-source", "256",
                            "--max-target", "64", "--threads", "1", "--repeats", "1"])
    ours, hugging_face = report["results"]
    processed = lambda r: r["tokens_per_s"] * r["seconds"]
    assert processed(ours) == pytest.approx(processed(hugging_face))  # prompt + target tokens, counted once
    assert ours["samples_per_s"] * ours["seconds"] == pytest.approx(6) and 0 < ours["mfu"] < 1
