"""Micro-batches by token budget (itstudy.training.batching): the budget holds, the global batches and
their examples are those of fixed micro-batches, shapes come from the fixed buckets, and the step's
gradient does not depend on the split. Real SuperNI prompt lengths (the benchmark's profile)."""

from __future__ import annotations

import random

import pytest
import torch

from itstudy.config import ConfigError, gradient_accumulation
from itstudy.config import TrainConfig
from itstudy.training.batching import LengthBuckets, TokenBudget, length_buckets, padded_length
from itstudy.training.engine import CausalExample, Seq2SeqExample, StepPlan, collate, token_budget, train_step
from itstudy.training.models import new_t5, t5_config
from itstudy.training.prompt_lengths import examples_with_prompt_lengths, load_length_profile

MAX_SOURCE, MAX_TARGET = 1024, 128


@pytest.fixture(scope="module")
def superni_examples():
    """400 examples with the (source, target) lengths of real SuperNI prompts, random token ids."""
    return examples_with_prompt_lengths(load_length_profile(), 400, MAX_SOURCE, MAX_TARGET, 64, seed=0)


def test_length_buckets_are_a_few_fixed_multiples_of_8():
    assert length_buckets(1024) == (
        8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024
    )
    assert length_buckets(128)[-1] == 128 and length_buckets(1000)[-2:] == (896, 1000)  # never past the truncation
    buckets = length_buckets(1024)
    assert [padded_length(n, buckets) for n in (1, 8, 9, 237, 1024)] == [8, 8, 16, 256, 1024]
    assert all(padded_length(n, buckets) < 1.25 * n + 8 for n in range(1, 1025))  # a quarter at most, above 32


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_every_micro_batch_keeps_the_budget_and_together_they_are_the_global_batch(superni_examples, world_size):
    lengths = [len(e.input_ids) + len(e.labels) for e in superni_examples]
    budget = token_budget(superni_examples, 4096, MAX_SOURCE, MAX_TARGET)
    fixed, bounded = StepPlan(lengths, 32, seed=3), StepPlan(lengths, 32, seed=3, budget=budget)
    counts = set()
    for step in range(fixed.per_epoch * 2):  # two epochs: the global batches are those of fixed micro-batches
        assert bounded.global_batch(step) == fixed.global_batch(step)
        per_rank = [bounded.micro_batches(step, rank, world_size, None) for rank in range(world_size)]
        assert len({len(chunks) for chunks in per_rank}) == 1  # every rank runs as many forward passes
        seen = [index for chunks in per_rank for chunk in chunks for index in chunk]
        assert sorted(seen) == sorted(fixed.global_batch(step))  # nothing lost, nothing doubled
        for chunks in per_rank:
            for chunk in chunks:
                batch = collate([superni_examples[i] for i in chunk], 0, bounded.buckets)
                source, target = batch["input_ids"].shape[1], batch["labels"].shape[1]
                assert source in budget.buckets.source and target in budget.buckets.target
                assert len(chunk) * (source + target) <= 4096
        counts.add(len(per_rank[0]))
    assert len(counts) > 1  # accumulation follows the lengths of each global batch
    assert bounded.micro_batches(0, 0, 1, None) == bounded.micro_batches(0, 0, 1, None)  # a function of the step


def test_short_rows_go_many_to_a_pass_and_padding_stays_low(superni_examples):
    lengths = [len(e.input_ids) + len(e.labels) for e in superni_examples]
    plan = StepPlan(lengths, 64, seed=0, budget=token_budget(superni_examples, 8192, MAX_SOURCE, MAX_TARGET))
    chunks = [chunk for step in range(plan.per_epoch) for chunk in plan.micro_batches(step, 0, 1, None)]
    batches = [collate([superni_examples[i] for i in chunk], 0, plan.buckets) for chunk in chunks]
    real = sum(int(b["attention_mask"].sum() + (b["labels"] != -100).sum()) for b in batches)
    padded = sum(b["input_ids"].numel() + b["labels"].numel() for b in batches)
    assert max(map(len, chunks)) > 2 * min(map(len, chunks))
    assert 1 - real / padded < 0.2  # bucket and length padding together (SuperNI: about 12%)


def test_a_causal_row_is_one_bucketed_sequence():
    examples = [CausalExample((5, 6, 7), (8, 1)), CausalExample((5,) * 31, (9, 1))]
    buckets = LengthBuckets(MAX_SOURCE, MAX_TARGET, causal=True)
    batch = collate(examples, 0, buckets)
    assert batch["input_ids"].shape == (2, 40) and batch["attention_mask"].sum().item() == 5 + 33  # 33 -> bucket 40
    assert batch["labels"][0].tolist()[3:5] == [8, 1] and (batch["labels"][0, 5:] == -100).all()
    budget = TokenBudget(200, [3, 31], [2, 2], 100, 20, causal=True)
    assert budget.micro_batches([0, 1], 0, 1) == [[1, 0]]  # 2 rows x 40 tokens fit 200


def test_a_budget_too_small_for_one_row_is_refused_naming_the_fields():
    with pytest.raises(ValueError, match="max_source_length \\+ max_target_length = 1152"):
        TrainConfig(max_tokens_per_micro_batch=1000)
    train = TrainConfig(max_tokens_per_micro_batch=4096, global_batch_size=6)
    assert gradient_accumulation(train, 2) is None  # derived per step from the lengths
    with pytest.raises(ConfigError, match="does not divide over 4 workers"):
        gradient_accumulation(train, 4)


def test_the_gradient_of_a_global_batch_does_not_depend_on_its_token_budget_split():
    config = t5_config("scratch/t5-tiny", vocab_size=64)
    config.dropout_rate = 0.0
    rng = random.Random(0)
    shapes = [(150, 2), (125, 9), (60, 4), (45, 30), (30, 3), (20, 1), (16, 12), (10, 5)]
    examples = [
        Seq2SeqExample(tuple(rng.randrange(2, 64) for _ in range(n)) + (1,), tuple(rng.randrange(2, 64) for _ in range(m)) + (1,))
        for n, m in shapes
    ]
    target_tokens = sum(len(e.labels) for e in examples)
    budget = TokenBudget(256, [len(e.input_ids) for e in examples], [len(e.labels) for e in examples], 160, 48)
    chunks = budget.micro_batches(list(range(len(examples))), 0, 1)
    assert chunks == [[0], [1], [2, 3], [4, 6, 5, 7]]  # long rows alone, short ones four to a pass (6: longer target)

    def one_step(micro_batches):
        model = new_t5(config, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # new weights = old - gradient
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        result = train_step(
            model, micro_batches, optimizer, scheduler, step_target_tokens=target_tokens, world_size=1,
            dtype=torch.float32, grad_clip=None,
        )
        return model, result.loss_sum / result.target_tokens

    whole, whole_loss = one_step([collate(examples, 0)])
    split, split_loss = one_step([collate([examples[i] for i in chunk], 0, budget.buckets) for chunk in chunks])
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
