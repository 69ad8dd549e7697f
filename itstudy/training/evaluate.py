"""Zero-shot evaluation of a seq2seq or decoder-only model on the test prompts: greedy generation, SuperNI metrics.

Prompts are sorted by length and batched, each batch padded only to its longest prompt, and
decoded greedily (one beam, no sampling) until every sequence has produced </s> or
`max_new_tokens`. Under data parallelism the batches are dealt round-robin to the ranks and the
predictions gathered on every rank, so evaluating costs 1/world_size of the time. Each rank
generates with a plain model holding all weights (under DDP the unwrapped model; under FSDP a
copy gathered by `itstudy.training.sharding.gathered`), so no rank waits on another inside `generate`.
A `FastT5` (`model.implementation: fast`) answers `generate` with its own KV-cached greedy loop
(`itstudy.training.fast_generate`): the same tokens, finished rows leaving the batch.

A decoder-only model continues its prompt: prompts are padded on the left, so every row's
answer starts at the same column, and decoded with the KV cache (`generate`'s default); only the
generated tokens are kept. Masks come from the prompts' lengths, not the pad id (which may be </s>).

Rank classification (`eval.rank_classification`, as lm-evaluation-harness scores multiple
choice): every label of a classification instance's task is scored by the model's summed
log-likelihood of it as the target (`EvalItem.label_ids`, which `itstudy.training.prepare`
tokenises exactly as training targets, with </s>), and
the best label (ties: the first in label order) becomes the prediction's `rank_choice`. A batch
encodes its prompts once and scores every (prompt, label) pair teacher-forced in one decoder
pass (a decoder-only model reads each prompt + label sequence in one pass); no generation. Batches are dealt to the ranks and gathered like generation's.

Scoring is `itstudy.metrics` (Tk-Instruct's exact match and ROUGE-L, and the format and probe
figures): this module only produces the predictions, except for the dev tasks (`dev_metrics`),
whose overall figures are all a run keeps of them, named `dev_<metric>`: every choice a study
makes (checkpoint, Optuna pick) reads these and never a test figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from transformers.modeling_outputs import BaseModelOutput

from itstudy.config import DEV_PREFIX, Study
from itstudy.metrics import Prediction, aggregate, score_predictions


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
    labels: tuple[str, ...] = ()
    """The task's label space; () for a generation task."""
    label_ids: tuple[tuple[int, ...], ...] = ()
    """Each label tokenised as a training target (with </s>), for rank classification."""
    habit_references: tuple[str, ...] = ()
    """Under the negated variant, the references of the original instruction; () otherwise."""
    pair: str = ""
    """The counterfactual pair whose definitions label this input differently ('' if none)."""


def evaluation_predictions(
    model, tokenizer, items: Sequence[EvalItem], study: Study, *, dtype: torch.dtype, rank: int = 0, world_size: int = 1
) -> list[Prediction]:
    """Greedy predictions for every item and, with `eval.rank_classification`, each classification item's rank choice."""
    predictions = generate_predictions(
        model,
        tokenizer,
        items,
        batch_size=study.eval.batch_size,
        max_new_tokens=study.eval.max_new_tokens,
        dtype=dtype,
        rank=rank,
        world_size=world_size,
    )
    if not study.eval.rank_classification:
        return predictions
    choices = rank_labels(
        model,
        tokenizer,
        items,
        batch_size=study.eval.batch_size,
        dtype=dtype,
        rank=rank,
        world_size=world_size,
    )
    return [replace(p, rank_choice=choices[index]) if index in choices else p for index, p in enumerate(predictions)]


def dev_metrics(
    model, tokenizer, items: Sequence[EvalItem], study: Study, *, dtype: torch.dtype, rank: int = 0, world_size: int = 1
) -> dict[str, float]:
    """The dev tasks' overall metrics as dev_<metric> ({} without a dev split), on every rank."""
    if not items:
        return {}
    predictions = evaluation_predictions(model, tokenizer, items, study, dtype=dtype, rank=rank, world_size=world_size)
    overall = {name: value for name, value in aggregate(score_predictions(predictions)).items() if "_for_" not in name}
    return {f"{DEV_PREFIX}{name}": value for name, value in overall.items()}


def _length_sorted_batches(items: Sequence[EvalItem], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(items)), key=lambda index: len(items[index].input_ids), reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _pad(sequences: list[tuple[int, ...]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask, padded on the right (or the left); the mask comes from the lengths."""
    longest = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        columns = slice(longest - len(sequence), longest) if left else slice(0, len(sequence))
        input_ids[row, columns] = torch.tensor(sequence)
        attention_mask[row, columns] = 1
    return input_ids, attention_mask


def _is_causal(model) -> bool:
    return not model.config.is_encoder_decoder


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
    causal = _is_causal(model)
    was_training = model.training
    model.eval()
    answers: dict[int, str] = {}
    for batch in _length_sorted_batches(items, batch_size)[rank::world_size]:
        input_ids, attention_mask = _pad([items[index].input_ids for index in batch], tokenizer.pad_token_id, left=causal)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        if causal:
            output = output[:, input_ids.shape[1] :]  # the answer, without the prompt it continues
        for index, text in zip(batch, tokenizer.batch_decode(output, skip_special_tokens=True)):
            answers[index] = text.strip()
    model.train(was_training)
    answers = _gather(answers, world_size)
    return [
        Prediction(
            task=item.task,
            category=item.category,
            instance_id=item.instance_id,
            prediction=answers[index],
            references=item.references,
            is_classification=item.is_classification,
            prompt_hash=item.prompt_hash,
            labels=item.labels,
            habit_references=item.habit_references,
            pair=item.pair,
        )
        for index, item in enumerate(items)
    ]


def _gather(shard: dict, world_size: int) -> dict:
    if world_size == 1:
        return shard
    shards: list[dict] = [{} for _ in range(world_size)]
    dist.all_gather_object(shards, shard)
    return {key: value for part in shards for key, value in part.items()}


@torch.no_grad()
def label_log_likelihoods(
    model, source_ids: Sequence[tuple[int, ...]], label_ids: Sequence[Sequence[tuple[int, ...]]], pad_id: int, dtype
) -> list[list[float]]:
    """For each source, the summed log-likelihood of each of its labels' token ids as the target."""
    if _is_causal(model):
        return _causal_label_log_likelihoods(model, source_ids, label_ids, pad_id, dtype)
    device = next(model.parameters()).device
    input_ids, attention_mask = _pad(list(source_ids), pad_id)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    owner = [row for row, labels in enumerate(label_ids) for _ in labels]
    targets, _ = _pad([ids for labels in label_ids for ids in labels], pad_id)
    targets = targets.to(device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded[owner]),
            attention_mask=attention_mask[owner],
            labels=targets.masked_fill(targets == pad_id, -100),
        ).logits
    token_scores = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return _per_source((token_scores * (targets != pad_id)).sum(-1).tolist(), label_ids)


def _per_source(sums: list[float], label_ids: Sequence[Sequence[tuple[int, ...]]]) -> list[list[float]]:
    scores, start = [], 0
    for labels in label_ids:
        scores.append(sums[start : start + len(labels)])
        start += len(labels)
    return scores


def _causal_label_log_likelihoods(model, source_ids, label_ids, pad_id: int, dtype) -> list[list[float]]:
    """Each (prompt + label) sequence in one pass; a label token's score is read one position
    before it (the logits there predict it)."""
    device = next(model.parameters()).device
    pairs = [(source, label) for source, labels in zip(source_ids, label_ids) for label in labels]
    input_ids, attention_mask = _pad([source + label for source, label in pairs], pad_id)
    is_label = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (source, label) in enumerate(pairs):
        is_label[row, len(source) : len(source) + len(label)] = True
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    scores = logits[:, :-1].float().log_softmax(-1).gather(-1, input_ids[:, 1:].unsqueeze(-1).to(device)).squeeze(-1)
    return _per_source((scores * is_label[:, 1:].to(device)).sum(-1).tolist(), label_ids)


@torch.no_grad()
def rank_labels(
    model,
    tokenizer,
    items: Sequence[EvalItem],
    *,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    rank: int = 0,
    world_size: int = 1,
) -> dict[int, str]:
    """Item index -> its most likely label (ties: the first in label order), for every item with labels, on every rank."""
    ranked = [index for index, item in enumerate(items) if item.label_ids]
    was_training = model.training
    model.eval()
    choices: dict[int, str] = {}
    for batch in _length_sorted_batches([items[index] for index in ranked], batch_size)[rank::world_size]:
        batch_items = [items[ranked[position]] for position in batch]
        scores = label_log_likelihoods(
            model,
            [item.input_ids for item in batch_items],
            [item.label_ids for item in batch_items],
            tokenizer.pad_token_id,
            dtype,
        )
        for position, item, label_scores in zip(batch, batch_items, scores):
            # max() keeps the first of equal scores: ties go to the first label
            best = max(range(len(label_scores)), key=label_scores.__getitem__)
            choices[ranked[position]] = item.labels[best]
    model.train(was_training)
    return _gather(choices, world_size)

