"""How the benchmark measures one side: a clock over its optimiser steps that counts the tokens of
every forward pass, peak memory, the CPU's practical FLOP ceiling, and a warm-up of every shape
before any clock runs. Imports only torch and our torch-only engine (the benchmark runs where Ray and MLflow do not)."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch

from itstudy.training.batching import LengthBuckets
from itstudy.training.engine import LABEL_PAD, Seq2SeqExample, collate
from itstudy.training.flops import FlopModel, TokenStats, step_flops

PAD_ID = 0  # T5's <pad>


@dataclass
class Measurement:
    """One side of the comparison."""

    name: str
    tokens_per_s: float
    """Non-padding source + target tokens per second of wall time, over the timed steps."""
    tokens_per_cpu_s: float
    """The same per second of this process's CPU time: on a shared CPU machine, what other
    processes take inflates wall time but hardly CPU time (with one thread, nothing spins)."""
    samples_per_s: float
    mfu: float
    """Model FLOPs (matmul + attention scores) per second over the peak (see module doc)."""
    matmul_tflops: float
    """Matmul FLOPs of the timed steps, in units of 1e12."""
    attention_tflops: float
    """Attention-score FLOPs (QK^T and AV: encoder self, decoder self, cross) of the timed steps, 1e12."""
    padding_fraction: float
    """Share of the tokens in the padded tensors that are padding."""
    forward_passes: int
    """Micro-batches over the timed steps (with a token budget, their number follows the lengths)."""
    peak_memory_gb: float
    seconds: float
    timed_steps: int


def cpu_peak_flops() -> float:
    """fp32 FLOP/s of a 2048^3 matmul on this machine: the CPU's practical ceiling."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(2):
        a @ b
    start, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        a @ b
    return 2 * 2048**3 * repeats / (time.perf_counter() - start)


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is the process's peak resident set in KiB (Linux): it includes the earlier side's peak.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class StepClock:
    """Tokens of every forward pass (a forward pre-hook, the same for both sides) and the time from
    the first optimiser step's start to the last one's end: both sides do exactly one epoch over
    the same examples, so both are timed on identical work."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.device = device
        self.causal = not model.config.is_encoder_decoder
        self.started: float | None = None
        self.ended = 0.0
        self.cpu_started = self.cpu_ended = 0.0
        self.steps = self.samples = self.padded = self.forward_passes = 0
        self.tokens = TokenStats()
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        target = (kwargs["labels"] != LABEL_PAD).sum(1)
        attended = kwargs["attention_mask"].sum(1)
        self.tokens.add(attended - target if self.causal else attended, target)
        self.samples += len(kwargs["input_ids"])
        self.forward_passes += 1
        # a causal row holds prompt and target in one padded sequence
        self.padded += kwargs["input_ids"].numel() + (0 if self.causal else kwargs["labels"].numel())

    def step_started(self) -> None:
        if self.started is None:
            sync_device(self.device)
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def step_done(self) -> None:
        sync_device(self.device)
        self.ended, self.cpu_ended = time.perf_counter(), time.process_time()
        self.steps += 1

    def measurement(self, name: str, model_flops: FlopModel, peak_flops: float) -> Measurement:
        seconds = self.ended - self.started
        tokens = self.tokens.source + self.tokens.target
        flops = step_flops(model_flops, self.tokens)
        return Measurement(
            name=name,
            tokens_per_s=tokens / seconds,
            tokens_per_cpu_s=tokens / (self.cpu_ended - self.cpu_started),
            samples_per_s=self.samples / seconds,
            mfu=flops.total / seconds / peak_flops,
            matmul_tflops=flops.matmul / 1e12,
            attention_tflops=flops.attention / 1e12,
            padding_fraction=1 - tokens / self.padded,
            forward_passes=self.forward_passes,
            peak_memory_gb=peak_memory_gb(self.device),
            seconds=seconds,
            timed_steps=self.steps,
        )


def warm_up(model, batches: list[dict[str, torch.Tensor]], device: torch.device, dtype: torch.dtype) -> None:
    """One forward and backward per batch, gradients dropped, before any clock runs: kernels, allocator
    pools and autotuning are ready for both sides alike at every shape the side will meet at its most
    rows (so a batch that does not fit fails here, in seconds); weights are unchanged."""
    for batch in batches:
        batch = {key: value.to(device) for key, value in batch.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(**batch).loss.backward()
        model.zero_grad(set_to_none=True)
    sync_device(device)


def longest_batch(examples: list[Seq2SeqExample], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """A micro-batch of the longest examples: batches padded to their longest member have no fixed
    shapes to warm one by one, and this is the largest any of them can be."""
    return [collate(sorted(examples, key=lambda e: len(e.input_ids) + len(e.labels))[-batch_size:], PAD_ID)]


def bucket_shape_batches(micro_batches: list[list[Seq2SeqExample]], buckets: LengthBuckets) -> list[dict[str, torch.Tensor]]:
    """One micro-batch per padded (source, target) bucket shape that `micro_batches` use, the one with most rows."""
    largest: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for examples in micro_batches:
        batch = collate(examples, PAD_ID, buckets)
        shape = (batch["input_ids"].shape[1], batch["labels"].shape[1])
        if shape not in largest or len(largest[shape]["input_ids"]) < len(examples):
            largest[shape] = batch
    return list(largest.values())
