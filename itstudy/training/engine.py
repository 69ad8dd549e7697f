"""The torch-only mechanics of training steps: batches grouped by length, dynamic padding,
AdamW, the learning-rate schedule and gradient accumulation with a correct token-mean loss.

Seq2seq and decoder-only models share all of it; only `collate` differs. A seq2seq pair feeds the
prompt to the encoder and the target to the decoder. A causal pair (`CausalExample`) is one
sequence, prompt then target: the loss covers only the target tokens (the prompt's labels are
-100), as Tk-Instruct's decoder-only models and Alpaca were trained.

Shared by the study's training loop (`itstudy.training.loop`) and the benchmark
(`itstudy.training.bench`), which must run where only torch and transformers are installed; so
this module imports nothing else, and knows nothing of tasks, prompts, Ray or MLflow.

Batching, and why it is done by hand: SuperNI prompts run from tens to 1024 tokens, so a batch
drawn at random pads most of its tokens. Each epoch here shuffles the examples with the seed,
sorts them by length inside windows of `LENGTH_WINDOW` global batches, cuts global batches and
shuffles their order, so a batch holds examples of similar length while the data order still
changes with seed and epoch. A global batch is then cut into world_size x accumulation
contiguous micro-batches of the length-sorted examples; at each micro-step every rank gets one
of neighbouring length, so data-parallel ranks wait little for each other. The order is a pure
function of (seed, epoch, step): resuming at step s replays exactly what an uninterrupted run
would have seen. (torch's DataLoader with a DistributedSampler knows none of this: it splits
by rank before batching and cannot be positioned at a step.) With a token budget
(`itstudy.training.batching`) the same global batches are cut by padded tokens instead, and padded
to fixed length buckets.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import get_scheduler

from itstudy.training.batching import LengthBuckets, TokenBudget

LABEL_PAD = -100  # ignored by the loss (Tk-Instruct's label padding)
LENGTH_WINDOW = 50  # global batches sorted together; larger pads less but mixes lengths less across batches


@dataclass(frozen=True)
class Seq2SeqExample:
    """One tokenised training pair; both sequences end with </s>."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class CausalExample(Seq2SeqExample):
    """A training pair for a decoder-only model: `input_ids` is the prompt (no </s>), `labels` the
    target (ending with </s>); `collate` joins them into one sequence."""


# --- which examples go into which step -------------------------------------------------------


def batches_per_epoch(num_examples: int, global_batch_size: int) -> int:
    """Full global batches in one epoch (the remainder of a shuffled epoch is dropped)."""
    return num_examples // global_batch_size


def total_steps(num_examples: int, global_batch_size: int, epochs: float, max_steps: int | None) -> int:
    """Optimiser steps of a run: max_steps if given, else ceil(epochs x batches per epoch)."""
    if max_steps is not None:
        return max_steps
    return math.ceil(epochs * batches_per_epoch(num_examples, global_batch_size))


def epoch_batches(lengths: Sequence[int], global_batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's global batches, as lists of example indices grouped by length (see module doc)."""
    rng = random.Random(f"itstudy-batches:{seed}:{epoch}")  # str seeds hash with sha512: stable across processes
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order = order[: batches_per_epoch(len(order), global_batch_size) * global_batch_size]
    window = global_batch_size * LENGTH_WINDOW
    grouped: list[int] = []
    for start in range(0, len(order), window):
        grouped += sorted(order[start : start + window], key=lambda index: lengths[index], reverse=True)
    batches = [grouped[start : start + global_batch_size] for start in range(0, len(grouped), global_batch_size)]
    rng.shuffle(batches)
    return batches


class StepPlan:
    """Which examples each rank trains on at each optimiser step; a pure function of the step."""

    def __init__(self, lengths: Sequence[int], global_batch_size: int, seed: int, budget: TokenBudget | None = None):
        if batches_per_epoch(len(lengths), global_batch_size) == 0:
            raise ValueError(
                f"{len(lengths)} training examples do not fill one global batch of {global_batch_size}"
            )
        self.lengths = list(lengths)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.budget = budget
        self.per_epoch = batches_per_epoch(len(lengths), global_batch_size)
        self._epoch = -1
        self._batches: list[list[int]] = []

    def global_batch(self, step: int) -> list[int]:
        """The example indices of optimiser step `step` (0-based), over all ranks."""
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, epoch_batches(self.lengths, self.global_batch_size, self.seed, epoch)
        return self._batches[position]

    @property
    def buckets(self) -> LengthBuckets | None:
        """The lengths micro-batches pad to (None: each to its longest row)."""
        return self.budget.buckets if self.budget else None

    def micro_batches(self, step: int, rank: int, world_size: int, accumulation: int | None) -> list[list[int]]:
        """This rank's micro-batches of step `step`, neighbours in length across ranks: `accumulation`
        of equal size, or as many as the token budget needs (accumulation None)."""
        if self.budget:
            return self.budget.micro_batches(self.global_batch(step), rank, world_size)
        batch = sorted(self.global_batch(step), key=lambda index: self.lengths[index], reverse=True)
        size = len(batch) // (world_size * accumulation)
        chunks = [batch[start : start + size] for start in range(0, len(batch), size)]
        return [chunks[micro * world_size + rank] for micro in range(accumulation)]


def token_budget(examples: Sequence[Seq2SeqExample], max_tokens: int, max_source: int, max_target: int) -> TokenBudget:
    """The budget of `max_tokens` padded tokens per micro-batch over these examples (causal or seq2seq)."""
    sources, targets = [len(e.input_ids) for e in examples], [len(e.labels) for e in examples]
    causal = isinstance(examples[0], CausalExample)
    return TokenBudget(max_tokens, sources, targets, max_source, max_target, causal)


# --- tensors ---------------------------------------------------------------------------------


def collate(examples: Sequence[Seq2SeqExample], pad_id: int, buckets: LengthBuckets | None = None) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence in this micro-batch (dynamic padding), or up to its length bucket;
    labels pad with -100.

    Tensors are built fresh and contiguous: T5's loss calls `labels.view(-1)`.
    """
    if isinstance(examples[0], CausalExample):
        return collate_causal(examples, pad_id, buckets)
    source_length = max(len(example.input_ids) for example in examples)
    target_length = max(len(example.labels) for example in examples)
    if buckets:
        source_length, target_length = buckets.row(source_length, target_length)
    input_ids = torch.full((len(examples), source_length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), target_length), LABEL_PAD, dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        labels[row, : len(example.labels)] = torch.tensor(example.labels)
    return {"input_ids": input_ids, "attention_mask": (input_ids != pad_id).long(), "labels": labels}


def collate_causal(examples: Sequence[Seq2SeqExample], pad_id: int, buckets: LengthBuckets | None = None) -> dict[str, torch.Tensor]:
    """Prompt + target per row, padded on the right; labels are -100 except on the target.

    The attention mask comes from the lengths, not from `pad_id`: a tokenizer without a pad token
    pads with </s>, which every target ends with.
    """
    length = max(len(example.input_ids) + len(example.labels) for example in examples)
    if buckets:
        length = buckets.row(length, 0)[0]  # a causal row is one sequence: its length, bucketed
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), LABEL_PAD, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        prompt, target = len(example.input_ids), len(example.labels)
        input_ids[row, : prompt + target] = torch.tensor(example.input_ids + example.labels)
        labels[row, prompt : prompt + target] = torch.tensor(example.labels)
        attention_mask[row, : prompt + target] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def token_counts(batch: dict[str, torch.Tensor], causal: bool = False) -> tuple[int, int]:
    """(source, target) non-padding tokens of a collated batch; a causal row holds both in one sequence."""
    target = int((batch["labels"] != LABEL_PAD).sum())
    attended = int(batch["attention_mask"].sum())
    return (attended - target if causal else attended), target


def is_causal_model(model: nn.Module) -> bool:
    """Whether `model` (bare, or wrapped by DDP) is decoder-only."""
    return not getattr(model, "module", model).config.is_encoder_decoder


# --- optimiser and schedule ------------------------------------------------------------------


def make_optimizer(model: nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all parameters; available on CPU and GPU in torch >= 2.4).

    Weight decay applies to matrices only, not to norms (T5 has no biases), as Hugging Face does.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, steps: int):
    """Linear warm-up, then constant or linear decay to zero at `steps` (transformers' schedules)."""
    names = {"constant": "constant_with_warmup", "linear": "linear"}
    if schedule not in names:
        raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(names)}")
    return get_scheduler(names[schedule], optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps)


# --- one optimiser step ----------------------------------------------------------------------


@dataclass
class StepResult:
    """What one optimiser step did on this rank."""

    loss_sum: float
    """Sum of per-token losses over this rank's target tokens."""
    target_tokens: int
    source_tokens: int
    samples: int


def train_step(
    model: nn.Module,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler,
    *,
    step_target_tokens: int,
    world_size: int,
    dtype: torch.dtype,
    grad_clip: float | None,
) -> StepResult:
    """Forward and backward over this rank's micro-batches, then one optimiser step.

    The loss is the mean over every target token of the global batch, however it is split: each
    micro-batch's token mean is weighted by its share of `step_target_tokens` (the global
    count), times `world_size` because DDP averages gradients over ranks. Gradients are
    synchronised only on the last micro-batch (`no_sync` before it).
    """
    device = next(model.parameters()).device
    causal = is_causal_model(model)
    result = StepResult(0.0, 0, 0, 0)
    loss_sum = torch.zeros((), device=device)  # summed on the device: one host sync per step, not per micro-batch
    for index, batch in enumerate(micro_batches):
        source_tokens, target_tokens = token_counts(batch, causal)
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        last = index == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(**batch).loss
            (loss * (target_tokens * world_size / step_target_tokens)).backward()
        loss_sum += loss.detach().float() * target_tokens
        result.target_tokens += target_tokens
        result.source_tokens += source_tokens
        result.samples += len(batch["input_ids"])
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    result.loss_sum = float(loss_sum)
    return result
