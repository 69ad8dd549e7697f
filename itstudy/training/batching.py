"""Micro-batches bounded by a token budget, with lengths padded to a few fixed buckets.

    budget = TokenBudget(max_tokens, source_lengths, target_lengths, max_source, max_target)
    budget.micro_batches(global_batch, rank, world_size) -> this rank's lists of example indices

Why: a global batch of SuperNI prompts holds sequences of 50 to 1024 tokens. A fixed number of rows
per forward pass must be small enough for the longest rows, so short rows run in needlessly small
passes; a budget of padded tokens per pass lets short rows go many to a pass and long rows few.

What stays as without a budget: the global batch is still `train.global_batch_size` sequences,
chosen by `engine.StepPlan` in the same order (the data of every optimiser step is unchanged), and
the loss is still the token mean over the whole global batch (`engine.train_step` weights each
micro-batch by its share of the global batch's target tokens, whatever the split). Only the split
changes, so the number of micro-batches (the gradient accumulation) is derived per step.

How a global batch is split: its rows are sorted longest first (padded source, then padded target),
and dealt to the ranks in turn (position p goes to rank p % world_size), so at every micro-step the
ranks hold rows of neighbouring length and wait little for each other. The cut points are the
same on every rank: a micro-batch grows while its rows x (padded source + padded target) of the
longest row at each position over all ranks stays within the budget. Every rank thus runs the same
number of forward passes (FSDP needs that) and no rank exceeds the budget. A pure function of the
global batch: a resumed run replays the same micro-batches.

Buckets: a micro-batch pads its source and its target up to the next of a few fixed lengths
(`length_buckets`), not to its longest row, so kernels, the allocator and `torch.compile` meet few
shapes. A decoder-only row is one sequence (prompt + target), bucketed as one length.

Pure Python: the benchmark imports it where only torch and transformers are installed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

MIN_BUCKET = 8  # multiples of 8 suit tensor cores; shorter targets (SuperNI's median is 3 tokens) pad to 8
BUCKETS_PER_OCTAVE = 4  # padding under 25% of a row (about 8% on SuperNI prompts), 4 shapes per doubling of length


def length_buckets(max_length: int) -> tuple[int, ...]:
    """The padded lengths up to `max_length`: multiples of 8 up to 64, then 4 per doubling (80, 96,
    112, 128, 160, ...), and `max_length` itself (truncation never exceeds it)."""
    buckets, length = [], MIN_BUCKET
    while length < max_length:
        buckets.append(length)
        length += max(MIN_BUCKET, 2 ** (length.bit_length() - 1) // BUCKETS_PER_OCTAVE)
    return (*buckets, max_length)


def padded_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length`."""
    return buckets[bisect.bisect_left(buckets, length)]


class LengthBuckets:
    """The padded lengths of source and target; a decoder-only row is one sequence, padded as `source`."""

    def __init__(self, max_source: int, max_target: int, causal: bool = False):
        self.causal = causal
        self.source = length_buckets(max_source + max_target if causal else max_source)
        self.target = () if causal else length_buckets(max_target)

    def row(self, source: int, target: int) -> tuple[int, int]:
        """The padded (source, target) lengths of a row; a causal row: (prompt + target, 0)."""
        if self.causal:
            return padded_length(source + target, self.source), 0
        return padded_length(source, self.source), padded_length(target, self.target)


class TokenBudget:
    """Splits global batches into micro-batches of at most `max_tokens` padded tokens (module doc)."""

    def __init__(
        self,
        max_tokens: int,
        source_lengths: Sequence[int],
        target_lengths: Sequence[int],
        max_source: int,
        max_target: int,
        causal: bool = False,
    ):
        if max_tokens < max_source + max_target:
            raise ValueError(
                f"a budget of {max_tokens} tokens cannot hold one row of {max_source} source + {max_target} target tokens"
            )
        self.max_tokens = max_tokens
        self.buckets = LengthBuckets(max_source, max_target, causal)
        self.shapes = [self.buckets.row(s, t) for s, t in zip(source_lengths, target_lengths)]

    def micro_batches(self, batch: Sequence[int], rank: int, world_size: int) -> list[list[int]]:
        """Rank `rank`'s micro-batches of the global batch `batch` (example indices), longest first."""
        if len(batch) % world_size:
            raise ValueError(f"a global batch of {len(batch)} does not divide over {world_size} workers")
        rows = sorted(batch, key=lambda index: (-self.shapes[index][0], -self.shapes[index][1], index))
        positions = [rows[start : start + world_size] for start in range(0, len(rows), world_size)]
        return [[positions[p][rank] for p in range(start, end)] for start, end in self._cuts(positions)]

    def _cuts(self, positions: list[list[int]]) -> list[tuple[int, int]]:
        """(start, end) position ranges whose rows x padded row length of their longest stays in budget."""
        cuts, start, source, target = [], 0, 0, 0
        for end, rows in enumerate(positions):
            row_source = max(self.shapes[index][0] for index in rows)
            row_target = max(self.shapes[index][1] for index in rows)
            grown = (max(source, row_source), max(target, row_target))
            if end > start and (end - start + 1) * sum(grown) > self.max_tokens:
                cuts.append((start, end))
                start, grown = end, (row_source, row_target)
            source, target = grown
        return [*cuts, (start, len(positions))]
