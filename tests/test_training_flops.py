"""The FLOPs formula behind MFU (itstudy.training.flops): a hand count for a tiny T5, and torch's own
FLOP counter on a real forward and backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from itstudy.training.engine import CausalExample, Seq2SeqExample, collate
from itstudy.training.flops import TokenStats, flop_model, step_flops
from itstudy.training.models import T5_VOCAB_SIZE, llama_config, new_llama, new_t5, t5_config

SOURCE, TARGET = (40, 24), (8, 5)
"""Two rows of different lengths: the attention terms depend on each row's lengths, not on the sums."""


def _tiny_t5():
    # scratch/t5-tiny: d_model 64, 4 heads of 16, d_ff 128 (gated), 2 + 2 layers, tied 32128-word vocabulary
    return new_t5(t5_config("scratch/t5-tiny"), seed=0)


def _tokens() -> TokenStats:
    tokens = TokenStats()
    tokens.add(torch.tensor(SOURCE), torch.tensor(TARGET))
    return tokens


def test_the_formula_matches_a_hand_count_for_t5_tiny():
    d, inner, ff, layers, vocab = 64, 4 * 16, 128, 2, 32128
    attention_block = 4 * d * inner  # q, k, v, o
    feed_forward = 3 * d * ff  # wi_0, wi_1, wo
    encoder = layers * (attention_block + feed_forward)
    cross_kv = layers * 2 * d * inner  # the cross-attention K and V project source tokens
    decoder = layers * (attention_block + 2 * d * inner + feed_forward) + vocab * d  # self, cross q and o, FF, lm_head
    source, target = sum(SOURCE), sum(TARGET)
    matmul = 6 * (encoder + cross_kv) * source + 6 * decoder * target
    pairs = {
        "encoder_self": sum(s * s for s in SOURCE),
        "decoder_self": sum(t * t for t in TARGET),
        "cross": sum(s * t for s, t in zip(SOURCE, TARGET)),
    }
    flops = step_flops(flop_model(_tiny_t5()), _tokens())
    assert flops.matmul == matmul
    assert flops.parts == {kind: 12 * inner * layers * count for kind, count in pairs.items()}
    assert flops.total == matmul + flops.attention


def test_the_formula_agrees_with_torch_flop_counter_on_forward_and_backward():
    # Unpadded rows of one length each (the counter sees padded shapes; the formula counts real tokens).
    # They agree exactly here; the former formula (cross K/V on target tokens, no attention scores) was 4% low.
    model = _tiny_t5().train()
    model.config._attn_implementation = "eager"
    source, target = 48, 12
    generator = torch.Generator().manual_seed(0)
    examples = [Seq2SeqExample(tuple(torch.randint(2, 32000, (source,), generator=generator).tolist()),
                               tuple(torch.randint(2, 32000, (target,), generator=generator).tolist())) for _ in range(2)]
    batch = collate(examples, 0)
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    tokens = TokenStats()
    tokens.add(torch.tensor([source, source]), torch.tensor([target, target]))
    assert step_flops(flop_model(model), tokens).total == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_a_decoder_only_model_counts_prompt_and_target_as_one_sequence():
    config = llama_config("scratch/llama-tiny", T5_VOCAB_SIZE, 0, 1, None)
    model = new_llama(config, seed=0).train()
    model.config._attn_implementation = "eager"
    prompt, target = 40, 8
    batch = collate([CausalExample(tuple(range(2, 2 + prompt)), tuple(range(2, 2 + target)))] * 2, 0)
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    tokens = TokenStats()
    tokens.add(torch.tensor([prompt, prompt]), torch.tensor([target, target]))
    flops = step_flops(flop_model(model), tokens)
    assert flops.parts == {"self": 12 * 64 * 2 * 2 * (prompt + target) ** 2}  # inner 64, 2 layers, 2 rows
    assert flops.total == pytest.approx(counter.get_total_flops(), rel=0.01)
