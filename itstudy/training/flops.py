"""Model FLOPs of a training step (forward + backward), for MFU: matmul weights and attention scores.

Matmuls: every `nn.Linear` weight of N elements costs 2N FLOPs per token it is applied to in the
forward pass and 4N in the backward (input and weight gradients): 6N per token. Which tokens a
weight is applied to depends on where it sits:
- T5 encoder: source tokens. Decoder: target tokens, except the cross-attention K and V projections
  (`EncDecAttention.k`, `.v`), which project the encoder's output: source tokens, once per decoder
  layer. The output projection (lm_head) is a decoder matmul over target tokens.
- Decoder-only model: every weight over every prompt + target token.
Input embeddings and T5's relative position bias are lookups (no FLOPs); norms and activations are
elementwise and left out.

Attention scores (QK^T and AV): per layer, a row of query length Lq attending to Lk keys costs
2 * 2 * Lq * Lk * inner forward (inner = heads x head size of the queries) and twice that backward:
12 * Lq * Lk * inner. Encoder self-attention: Lq = Lk = S (source); decoder self-attention T x T
(target), cross-attention T x S; decoder-only self-attention L x L (L = prompt + target). The full
Lq x Lk product is counted, causal masks included, because the eager and SDPA T5 kernels compute it.
Lengths are a row's non-padding tokens: padding is work the model did not need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

CROSS_KV = ("EncDecAttention.k", "EncDecAttention.v")
"""T5's decoder projections that run on the encoder's output (source tokens)."""


@dataclass(frozen=True)
class FlopModel:
    """FLOPs per token of each kind of weight, and attention-score FLOPs per query-key pair, of one model."""

    per_source_token: float
    per_target_token: float
    encoder_pair: float
    """Per (source, source) pair, summed over encoder layers; 0 for a decoder-only model."""
    decoder_pair: float
    """Per (target, target) pair, or (token, token) of a decoder-only model, summed over decoder layers."""
    cross_pair: float
    """Per (target, source) pair, summed over decoder layers."""
    causal: bool = False
    """A decoder-only model: prompt and target are one sequence."""


@dataclass
class TokenStats:
    """Non-padding token counts of the batches a model ran, with the per-row sums attention needs."""

    source: int = 0
    target: int = 0
    source_squared: int = 0
    target_squared: int = 0
    source_times_target: int = 0

    def add(self, source_lengths: torch.Tensor, target_lengths: torch.Tensor) -> None:
        """Add a batch given each row's non-padding source and target lengths (1-D integer tensors)."""
        source, target = source_lengths.long(), target_lengths.long()
        # one device-to-host copy per batch (each int() of a GPU tensor would wait for the device)
        sums = torch.stack([source.sum(), target.sum(), (source * source).sum(), (target * target).sum(), (source * target).sum()])
        counts = sums.tolist()
        self.source += counts[0]
        self.target += counts[1]
        self.source_squared += counts[2]
        self.target_squared += counts[3]
        self.source_times_target += counts[4]


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of the batches counted in a TokenStats, split as reported."""

    matmul: float
    attention: float = 0.0
    parts: dict = field(default_factory=dict)
    """Attention-score FLOPs by kind: encoder self, decoder self, cross."""

    @property
    def total(self) -> float:
        return self.matmul + self.attention


def flop_model(model: nn.Module) -> FlopModel:
    """The FlopModel of a Hugging Face T5 or decoder-only model, read from its modules and config."""
    config = model.config
    if not config.is_encoder_decoder:
        weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
        inner = config.num_attention_heads * getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
        return FlopModel(6.0 * weights, 6.0 * weights, 0.0, 12.0 * inner * config.num_hidden_layers, 0.0, causal=True)
    encoder = _linear_weights(model.get_encoder())
    cross_kv = _linear_weights(model.get_decoder(), CROSS_KV)
    decoder = _linear_weights(model.get_decoder()) - cross_kv + model.get_output_embeddings().weight.numel()
    inner = config.num_heads * config.d_kv
    return FlopModel(
        per_source_token=6.0 * (encoder + cross_kv),
        per_target_token=6.0 * decoder,
        encoder_pair=12.0 * inner * config.num_layers,
        decoder_pair=12.0 * inner * config.num_decoder_layers,
        cross_pair=12.0 * inner * config.num_decoder_layers,
    )


def _linear_weights(module: nn.Module, suffixes: tuple[str, ...] = ()) -> int:
    """Elements of the nn.Linear weights in `module` (only those whose name ends with one of `suffixes`, if given)."""
    return sum(
        m.weight.numel()
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and (not suffixes or name.endswith(suffixes))
    )


def step_flops(flops: FlopModel, tokens: TokenStats) -> StepFlops:
    """Model FLOPs (forward + backward) of the batches counted in `tokens`.

    A decoder-only model's rows count prompt + target as one sequence: its TokenStats holds the prompt
    as `source`, so the sequence's squared length is source^2 + 2 source target + target^2."""
    matmul = flops.per_source_token * tokens.source + flops.per_target_token * tokens.target
    if flops.causal:
        squared = tokens.source_squared + 2 * tokens.source_times_target + tokens.target_squared
        parts = {"self": flops.decoder_pair * squared}
    else:
        parts = {
            "encoder_self": flops.encoder_pair * tokens.source_squared,
            "decoder_self": flops.decoder_pair * tokens.target_squared,
            "cross": flops.cross_pair * tokens.source_times_target,
        }
    return StepFlops(matmul=matmul, attention=sum(parts.values()), parts=parts)
