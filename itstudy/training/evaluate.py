"""Zero-shot evaluation of a seq2seq model on the test prompts: greedy generation, SuperNI metrics.

Prompts are sorted by length and batched, each batch padded only to its longest prompt, and
decoded greedily (one beam, no sampling) until every sequence has produced </s> or
`max_new_tokens`. Under data parallelism the batches are dealt round-robin to the ranks and the
predictions gathered on every rank, so evaluating costs 1/world_size of the time. Each rank
generates with the plain (unwrapped) model: with DDP every rank holds all weights, so no rank
waits on another inside `generate` (sharded FSDP / ZeRO-3 would need `synced_gpus=True`).

Scoring is `itstudy.metrics` (Tk-Instruct's exact match and ROUGE-L): this module only produces
the predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from itstudy.metrics import Prediction


@dataclass(frozen=True)
class EvalItem:
    """One test instance, its prompt already tokenised."""

    task: str
    category: str
    instance_id: str
    input_ids: tuple[int, ...]
    references: tuple[str, ...]
    is_classification: bool
    prompt_hash: str


def _length_sorted_batches(items: Sequence[EvalItem], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(items)), key=lambda index: len(items[index].input_ids), reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _pad(sequences: list[tuple[int, ...]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
    return input_ids, (input_ids != pad_id).long()


@torch.no_grad()
def generate_predictions(
    model,
    tokenizer,
    items: Sequence[EvalItem],
    *,
    batch_size: int,
    max_new_tokens: int,
    dtype: torch.dtype = torch.float32,
    rank: int = 0,
    world_size: int = 1,
) -> list[Prediction]:
    """Greedy predictions for every item, in the items' order, on every rank."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: dict[int, str] = {}
    for batch in _length_sorted_batches(items, batch_size)[rank::world_size]:
        input_ids, attention_mask = _pad([items[index].input_ids for index in batch], tokenizer.pad_token_id)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
        for index, text in zip(batch, tokenizer.batch_decode(output, skip_special_tokens=True)):
            answers[index] = text.strip()
    model.train(was_training)
    if world_size > 1:
        shards: list[dict[int, str]] = [{} for _ in range(world_size)]
        dist.all_gather_object(shards, answers)
        answers = {index: text for shard in shards for index, text in shard.items()}
    return [
        Prediction(
            task=item.task,
            category=item.category,
            instance_id=item.instance_id,
            prediction=answers[index],
            references=item.references,
            is_classification=item.is_classification,
            prompt_hash=item.prompt_hash,
        )
        for index, item in enumerate(items)
    ]
