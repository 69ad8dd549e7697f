"""The fast T5 (`model.implementation: fast`) against transformers' T5 on CPU in fp32: the same
weights give the same logits, loss and gradients (the relative-bias embeddings' included) on
padded batches, the same loss curve over a short training run, and a checkpoint that
`from_pretrained` reads back and that generates the same tokens as the fast path's KV-cached
decoding (which evaluation uses). A few seconds in all."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from itstudy.config import load_study
from itstudy.config import ConfigError
from itstudy.training.evaluate import EvalItem, generate_predictions
from itstudy.training.fast_t5 import FastT5
from itstudy.training.models import ModelSpecError, build_model, check_implementation, llama_config, new_llama

VOCAB = 256

# v1.1 / lm-adapt (gated GELU, untied head) and the original T5 (ReLU, tied head, rescaled decoder output).
ARCHITECTURES = {"v1.1": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},
                 "original": {"feed_forward_proj": "relu", "tie_word_embeddings": True}}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core machine: a second OpenMP thread made a step up to 100x slower here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _pair(architecture: str, seed: int = 0, decoder_layers: int = 3) -> tuple[T5ForConditionalGeneration, FastT5]:
    """HF's T5 and a FastT5 with the same random weights; more decoder layers than encoder layers
    (so a mix-up shows) except for HF `generate`, whose cache is sized by the encoder's count."""
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=decoder_layers,
                      num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      **ARCHITECTURES[architecture])
    torch.manual_seed(seed)
    hf = T5ForConditionalGeneration(config)
    if not ARCHITECTURES[architecture]["tie_word_embeddings"]:  # a v1.1 head of its own, as models.new_t5 makes
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
        hf.all_tied_weights_keys.pop("lm_head.weight", None)
    return hf, FastT5.from_hf(hf)


def _batch(seed: int) -> dict[str, torch.Tensor]:
    """Three rows padded to different lengths, targets padded with -100."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (3, 13), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = attention_mask[2, 4:] = 0
    labels = torch.randint(2, VOCAB, (3, 7), generator=generator)
    labels[0, 5:] = labels[2, 2:] = -100
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_logits_loss_and_gradients_equal_hugging_face(architecture):
    hf, fast = _pair(architecture)
    batch = _batch(1)
    expected, ours = hf(**batch), fast(**batch)
    torch.testing.assert_close(ours.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, expected.loss, rtol=1e-6, atol=1e-6)
    expected.loss.backward()
    ours.loss.backward()
    theirs = dict(hf.named_parameters())
    assert [name for name, _ in fast.named_parameters()] == list(theirs)  # HF's names, in HF's order
    for name, parameter in fast.named_parameters():
        torch.testing.assert_close(parameter.grad, theirs[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    bias = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert fast.get_parameter(f"encoder.{bias}").grad.abs().sum() > 0
    assert fast.get_parameter(f"decoder.{bias}").grad.abs().sum() > 0


def test_twenty_training_steps_follow_the_same_loss_curve():
    hf, fast = _pair("v1.1", seed=2)
    curves = []
    for model in (hf, fast):
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        curve = []
        for step in range(20):
            loss = model(**_batch(step % 4)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            curve.append(loss.item())
        curves.append(curve)
    assert curves[0][-1] < curves[0][0] - 0.5  # it learns: the comparison is not between two flat lines
    torch.testing.assert_close(curves[1], curves[0], rtol=1e-4, atol=1e-5)


def test_a_fast_checkpoint_loads_in_hugging_face_and_generates_the_same_tokens(tmp_path):
    hf, fast = _pair("v1.1", seed=3, decoder_layers=2)
    fast.save_pretrained(tmp_path / "model")
    loaded = T5ForConditionalGeneration.from_pretrained(tmp_path / "model").eval()
    assert loaded.lm_head.weight is not loaded.shared.weight  # the untied head was written and read back
    for name, value in fast.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    fast.eval()
    for batch_seed, eos in [(5, 1), (11, 78)]:
        batch = _batch(batch_seed)
        options = {"max_new_tokens": 12, "pad_token_id": 0, "eos_token_id": eos}
        ours = fast.generate(batch["input_ids"], batch["attention_mask"], **options)
        theirs = loaded.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                                 num_beams=1, **options)
        assert torch.equal(ours, theirs)
    # With 78 as </s> (this model's greedy output holds it in every row, first at steps 1, 0, 2), the
    # batch stops after step 2 and the rows that finished earlier are padded.
    assert ours.tolist() == [[0, 61, 78, 0], [0, 78, 0, 0], [0, 12, 135, 78]]


def test_evaluation_with_the_fast_model_predicts_what_hugging_face_predicts(t5_tokenizer):
    hf = build_model("scratch/t5-tiny", t5_tokenizer, seed=5).eval()
    fast = FastT5.from_hf(hf)
    prompts = ["Definition: answer yes or no. Input: is 3 larger than 2? Output:", "Definition: copy. Input: a b c. Output:"]
    items = [EvalItem("task", "cat", str(i), tuple(t5_tokenizer(p)["input_ids"]), ("yes",), False, "h")
             for i, p in enumerate(prompts)]
    predictions = [generate_predictions(model, t5_tokenizer, items, batch_size=2, max_new_tokens=6) for model in (hf, fast)]
    assert [p.prediction for p in predictions[1]] == [p.prediction for p in predictions[0]]


def test_the_fast_implementation_runs_t5_only(tmp_path):
    with pytest.raises(ConfigError, match="implementation 'fast' is a full-weight T5 and cannot run the decoder-only"):
        load_study(None, ["model.name=scratch/llama-tiny", "model.implementation=fast"])
    new_llama(llama_config("scratch/llama-tiny", 256, 0, 1, None), seed=0).save_pretrained(tmp_path / "llama")
    with pytest.raises(ModelSpecError, match="is a llama model; implementation 'fast' runs T5 only"):
        check_implementation(str(tmp_path / "llama"), "fast")
    check_implementation(str(tmp_path / "llama"), "hf")


def test_bench_eval_compares_fast_generation_with_hugging_face_on_the_same_prompts(tmp_path, capsys):
    from itstudy.training.bench import bench_command

    report = bench_command(["eval", "--shape", "scratch/t5-tiny", "--prompts", "6", "--batch", "4", "--max-source", "48",
                            "--max-new-tokens", "5", "--threads", "1", "--repeats", "1", "--out", str(tmp_path / "eval.json")])
    assert report["identical_rows_per_round"] == [1.0]  # fp32: the same tokens, row for row
    assert all(rounds[0] > 0 for rounds in report["all_rounds_tokens_per_s"].values())
    assert "fast / HF:" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["setup"]["prompts"] == 6


def test_generated_tokens_stop_counting_at_eos():
    from itstudy.training.bench_eval import generated_tokens

    # start token, then: three tokens and </s>; </s> at once, padding after; no </s> within the limit
    output = torch.tensor([[0, 5, 6, 7, 1], [0, 1, 0, 0, 0], [0, 9, 9, 9, 9]])
    assert generated_tokens(output) == 4 + 1 + 4


def test_bench_train_refuses_the_fast_t5_for_a_decoder_only_shape():
    from itstudy.training.bench_args import BenchArgumentError, parse_bench_args

    assert parse_bench_args(["train", "--shape", "scratch/t5-tiny", "--implementation", "fast"]).implementation == "fast"
    with pytest.raises(BenchArgumentError, match="the fast T5 cannot run the decoder-only scratch/llama-tiny"):
        parse_bench_args(["train", "--shape", "scratch/llama-tiny", "--implementation", "fast"])


def test_the_gpu_check_of_the_fast_t5_passes_in_fp32_on_cpu():
    from itstudy.training.fast_check import compare, within

    report = compare("scratch/t5-tiny", 2, "fp32", max_source=64, max_target=16)
    assert report["fast"]["relative bias gradient distance"] < 1e-6 and report["fast"]["loss_error"] < 1e-5
    assert within(report, slack=1.5)
