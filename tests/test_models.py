"""Models, tokenizers and precision (itstudy.training.models): shapes match the public T5 models,
initialisation is seeded, checkpoints round-trip through the real from_pretrained path, and what
cannot work is refused with a message that says why."""

from __future__ import annotations

import pytest
import torch

from itstudy.data.task import Example
from itstudy.prompts import render_definition, render_example, render_task_input
from itstudy.training.models import (
    ModelSpecError,
    build_model,
    check_model_available,
    compute_dtype,
    load_tokenizer,
    new_t5,
    padded_vocab_size,
    parameter_counts,
    t5_config,
    train_bpe_tokenizer,
)

# Parameter counts of google/t5-v1_1-{small,base,large,xl} (same architecture as t5-*-lm-adapt).
PUBLIC_PARAMETER_COUNTS = {
    "scratch/t5-small": 76_961_152,
    "scratch/t5-base": 247_577_856,
    "scratch/t5-large": 783_150_080,
    "scratch/t5-xl": 2_849_757_184,
}


@pytest.mark.parametrize("shape", sorted(PUBLIC_PARAMETER_COUNTS))
def test_named_shapes_have_the_public_parameter_counts(shape):
    with torch.device("meta"):  # shapes only, no memory
        model = new_t5(t5_config(shape), seed=0)
    assert parameter_counts(model)["total"] == PUBLIC_PARAMETER_COUNTS[shape]
    assert model.lm_head.weight is not model.shared.weight  # v1.1: untied output embedding


def test_initialisation_is_seeded():
    config = t5_config("scratch/t5-tiny", vocab_size=256)
    first, again, other = new_t5(config, seed=3), new_t5(config, seed=3), new_t5(config, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert not torch.equal(first.shared.weight, other.shared.weight)


def test_a_saved_model_loads_back_through_from_pretrained(tmp_path, t5_tokenizer):
    model = build_model("scratch/t5-tiny", t5_tokenizer, seed=0)
    assert model.config.vocab_size == 32128 == padded_vocab_size(t5_tokenizer)
    model.save_pretrained(tmp_path / "tiny")
    check_model_available(str(tmp_path / "tiny"))
    loaded = build_model(str(tmp_path / "tiny"), t5_tokenizer, seed=99)  # the seed does not matter for a folder
    batch = t5_tokenizer(["Definition: say yes. Input: x. Output: "], return_tensors="pt")
    labels = t5_tokenizer(["yes"], return_tensors="pt")["input_ids"]
    model.eval(), loaded.eval()
    assert torch.equal(model(**batch, labels=labels).loss, loaded(**batch, labels=labels).loss)
    assert loaded.lm_head.weight is loaded.shared.weight  # t5-tiny ties its embeddings, and stays tied


def test_unknown_model_name_offline_is_refused_with_the_reason():
    with pytest.raises(ModelSpecError, match=r"model 'google/no-such-t5'.*not a named shape.*offline"):
        check_model_available("google/no-such-t5")


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("t5-small", "'t5-small' is a pretrained checkpoint name on the Hugging Face Hub (google-t5/t5-small); "
                     "the randomly initialised shape is 'scratch/t5-small'"),
        ("llama-tiny", "'llama-tiny' names no pretrained checkpoint; the randomly initialised shape is 'scratch/llama-tiny'"),
    ],
)
def test_a_bare_shape_name_is_refused_with_the_scratch_name(name, hint):
    with pytest.raises(ModelSpecError) as refused:
        check_model_available(name)
    assert str(refused.value) == hint


def test_precision_auto_is_bf16_on_gpu_fp32_on_cpu_and_fp16_is_refused():
    assert compute_dtype("auto", torch.device("cpu")) == torch.float32
    assert compute_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert compute_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelSpecError, match="precision 'fp16': expected one of auto, bf16, fp32"):
        compute_dtype("fp16", torch.device("cuda"))  # the config refuses fp16 at load, saying why


def test_t5_tokenizer_comes_from_the_configured_folder(t5_tokenizer_dir, monkeypatch):
    monkeypatch.setenv("ITSTUDY_T5_TOKENIZER", str(t5_tokenizer_dir))
    tokenizer = load_tokenizer("t5")
    assert len(tokenizer) == 32100
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    assert tokenizer("Output: yes")["input_ids"][-1] == 1  # </s> appended, as Tk-Instruct's counts assume


def test_bpe_tokenizer_round_trips_words_and_uses_t5_special_ids():
    texts = ["Definition: Answer yes or no.", "Input: the movie was great. Output: yes"] * 20
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    again = train_bpe_tokenizer(texts, vocab_size=300)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    unseen = "Zürich — ünseen text , 42 !"  # words apart from punctuation: decoded as written
    ids = tokenizer(unseen)["input_ids"]
    assert ids[-1] == 1 and tokenizer.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tokenizer.decode(ids, skip_special_tokens=True) == unseen
    assert ids == again(unseen)["input_ids"] and tokenizer.get_vocab() == again.get_vocab()  # training is deterministic


def test_bpe_tokenizer_spells_a_label_word_alike_in_definition_demonstration_and_target():
    source = (
        render_definition("Answer 'ocean' if the number is even, and 'tiger' otherwise")
        + render_example("Positive", 1, Example("4", "ocean"))
        + render_example("Positive", 2, Example("7", "tiger"))
        + render_task_input("8")
    )
    tokenizer = train_bpe_tokenizer([source, "ocean", "tiger"] * 5, vocab_size=400)
    target = tokenizer("ocean", add_special_tokens=False)["input_ids"]
    prompt = tokenizer(source, add_special_tokens=False)["input_ids"]
    starts = [i for i in range(len(prompt)) if prompt[i:i + len(target)] == target]
    assert len(starts) == 2, "once quoted in the definition, once as a demonstration's output"
