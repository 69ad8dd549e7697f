"""A compact T5 (`model.implementation: fast`) with Hugging Face's weight layout and parameter names.

What differs from `transformers`' T5ForConditionalGeneration, and why:
- the relative position bias is computed once per stack as a batch-independent [H, Lq, Lk]
  tensor; the encoder adds the padding mask to it once, the decoder its causal mask, and every
  layer hands the result to SDPA as `attn_mask` (T5 does not scale scores: `scale=1.0`).
  transformers adds bias and mask again in every layer; cross-attention has no bias, only a
  boolean padding mask, so no float [B, H, T, S] tensor exists there;
- q, k and v stay separate Linear modules (the state dict is HF's); on CPU, fusing them at run
  time (concatenating the weights in forward) measured no faster (docs/performance.md);
- RMSNorm and the loss are computed in fp32, as transformers does under autocast;
- greedy generation with a KV cache is `itstudy.training.fast_generate`.

Dropout is where transformers (and so Tk-Instruct, which trained HF's T5) puts it, at the
config's `dropout_rate`: after the embedding, on attention probabilities, inside the
feed-forward, on every residual branch and after the final norm.

`from_hf` copies a Hugging Face model's weights in (a `google/t5-*-lm-adapt` checkpoint, or a
named shape from `itstudy.training.models`); `save_pretrained` writes a folder that
`T5ForConditionalGeneration.from_pretrained` reads back. Imports only torch and transformers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.models.t5.modeling_t5 import T5Attention

from itstudy.training.engine import LABEL_PAD


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, computed in fp32 (the result stays fp32)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return self.weight.float() * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Attention(nn.Module):
    """Multi-head attention without score scaling; the bias (if any) arrives inside `mask`."""

    def __init__(self, config: T5Config, relative_bias: bool = False):
        super().__init__()
        inner = config.num_heads * config.d_kv
        self.heads, self.dropout = config.num_heads, config.dropout_rate
        self.q, self.k, self.v = (nn.Linear(config.d_model, inner, bias=False) for _ in range(3))
        self.o = nn.Linear(inner, config.d_model, bias=False)
        if relative_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, H*D] -> [B, H, L, D]."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SDPA over split heads, then the output projection: [B, Lq, d_model]."""
        mask = mask if mask.dtype == torch.bool else mask.to(q.dtype)
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
        return self.o(out.transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if source is None else source
        return self.attend(self.split(self.q(x)), self.split(self.k(kv)), self.split(self.v(kv)), mask)


class AttentionLayer(nn.Module):
    """Pre-norm residual attention: T5LayerSelfAttention (`SelfAttention`) or T5LayerCrossAttention (`EncDecAttention`)."""

    def __init__(self, config: T5Config, name: str, relative_bias: bool = False):
        super().__init__()
        self.name = name
        self.add_module(name, Attention(config, relative_bias))
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    @property
    def attention(self) -> Attention:
        return getattr(self, self.name)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.dropout(self.attention(self.layer_norm(x), mask, source))


class FeedForward(nn.Module):
    """T5's dense layer (`DenseReluDense`): gated (v1.1, lm-adapt: wi_0, wi_1) or plain (wi)."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.gated = config.is_gated_act
        names = ("wi_0", "wi_1") if self.gated else ("wi",)
        for name in names:
            self.add_module(name, nn.Linear(config.d_model, config.d_ff, bias=False))
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = ACT2FN[config.dense_act_fn]
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(self.dropout(hidden))


class FeedForwardLayer(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = FeedForward(config)
        self.layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


class Block(nn.Module):
    """`layer`: self-attention, cross-attention (decoder only), feed-forward, as HF's T5Block."""

    def __init__(self, config: T5Config, decoder: bool, relative_bias: bool):
        super().__init__()
        layers = [AttentionLayer(config, "SelfAttention", relative_bias)]
        if decoder:
            layers.append(AttentionLayer(config, "EncDecAttention"))
        self.layer = nn.ModuleList([*layers, FeedForwardLayer(config)])

    def forward(self, x, mask, source=None, source_mask=None) -> torch.Tensor:
        x = self.layer[0](x, mask)
        if source is not None:
            x = self.layer[1](x, source_mask, source)
        return self.layer[-1](x)


class Stack(nn.Module):
    """Encoder or decoder; `embed_tokens` is the model's shared embedding, as in HF's T5Stack."""

    def __init__(self, config: T5Config, embed_tokens: nn.Embedding, decoder: bool):
        super().__init__()
        self.config, self.is_decoder, self.embed_tokens = config, decoder, embed_tokens
        layers = config.num_decoder_layers if decoder else config.num_layers
        self.block = nn.ModuleList([Block(config, decoder, relative_bias=i == 0) for i in range(layers)])
        self.final_layer_norm = RMSNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def self_bias(self, queries: int, keys: int, offset: int = 0) -> torch.Tensor:
        """The relative position bias [H, queries, keys] (query i at position offset + i), the
        decoder's causal mask included as -inf; it receives gradients like any activation."""
        embedding = self.block[0].layer[0].attention.relative_attention_bias
        device = embedding.weight.device
        query = torch.arange(offset, offset + queries, device=device)[:, None]
        relative = torch.arange(keys, device=device)[None, :] - query
        buckets = T5Attention._relative_position_bucket(
            relative, bidirectional=not self.is_decoder, num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance,
        )
        bias = embedding(buckets).permute(2, 0, 1)
        return bias.masked_fill(relative > 0, float("-inf")) if self.is_decoder else bias

    def forward(self, input_ids, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None):
        x = self.dropout(self.embed_tokens(input_ids))
        mask = self.self_bias(x.shape[1], x.shape[1])[None]
        if attention_mask is not None and not self.is_decoder:
            mask = mask.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
        # Cast once per stack, not per layer: under autocast SDPA wants the mask in the query's dtype.
        mask = mask.to(_compute_dtype(x))
        source_mask = None
        if encoder_hidden_states is not None:
            source_mask = _key_mask(encoder_attention_mask, encoder_hidden_states)
        for block in self.block:
            x = block(x, mask, encoder_hidden_states, source_mask)
        return BaseModelOutput(last_hidden_state=self.dropout(self.final_layer_norm(x)))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _key_mask(attention_mask: torch.Tensor | None, source: torch.Tensor) -> torch.Tensor:
    """A boolean [B, 1, 1, S] mask of the source tokens to attend to (all of them without a mask)."""
    if attention_mask is None:
        return torch.ones(source.shape[0], 1, 1, source.shape[1], dtype=torch.bool, device=source.device)
    return attention_mask.bool()[:, None, None, :]


class FastT5(nn.Module):
    """T5ForConditionalGeneration's forward (loss, logits), weights and names, with the attention above."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, self.shared, decoder=False)
        self.decoder = Stack(config, self.shared, decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    @classmethod
    def from_hf(cls, model: T5ForConditionalGeneration) -> "FastT5":
        """A FastT5 holding a copy of `model`'s weights (tied head if `model`'s is tied)."""
        with torch.device("meta"):
            fast = cls(model.config)
        fast.load_state_dict({name: value.detach().clone() for name, value in model.state_dict().items()}, assign=True)
        if model.lm_head.weight is model.shared.weight:
            fast.lm_head.weight = fast.shared.weight
        return fast

    def to_hf(self) -> T5ForConditionalGeneration:
        """A T5ForConditionalGeneration sharing these weights (for `save_pretrained` and comparisons)."""
        with torch.device("meta"):
            model = T5ForConditionalGeneration(self.config)
        model.load_state_dict(self.state_dict(), assign=True)
        model.shared.weight = model.encoder.embed_tokens.weight = model.decoder.embed_tokens.weight = self.shared.weight
        if self.lm_head.weight is self.shared.weight:
            model.lm_head.weight = self.shared.weight
        else:  # forget transformers' default tie, so that save_pretrained writes the head
            getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
        return model

    def save_pretrained(self, folder, **options) -> None:
        """Hugging Face's folder (config.json, model.safetensors), readable by `from_pretrained`."""
        self.to_hf().save_pretrained(folder, **options)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def get_encoder(self) -> Stack:
        return self.encoder

    def get_decoder(self) -> Stack:
        return self.decoder

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # The original T5 (tied head) rescales the decoder output; v1.1 / lm-adapt do not.
        return self.lm_head(hidden * self.config.d_model**-0.5 if self.config.scale_decoder_outputs else hidden)

    def forward(self, input_ids=None, attention_mask=None, labels=None, decoder_input_ids=None, encoder_outputs=None):
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids, attention_mask)
        if decoder_input_ids is None:
            decoder_input_ids = shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
        hidden = self.decoder(decoder_input_ids, None, encoder_outputs.last_hidden_state, attention_mask).last_hidden_state
        logits = self.logits(hidden)
        loss = None
        if labels is not None:  # in fp32, as transformers' CrossEntropyLoss under autocast
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=LABEL_PAD)
        return Seq2SeqLMOutput(loss=loss, logits=logits)

    def generate(self, input_ids, attention_mask, *, max_new_tokens: int, pad_token_id: int, eos_token_id: int,
                 do_sample: bool = False, num_beams: int = 1) -> torch.Tensor:
        """Greedy decoding with a KV cache; the same tokens as HF `generate` (see fast_generate)."""
        from itstudy.training.fast_generate import greedy_generate

        if do_sample or num_beams != 1:
            raise ValueError("the fast T5 decodes greedily only (do_sample=False, num_beams=1)")
        start = self.config.decoder_start_token_id
        return greedy_generate(self, input_ids, attention_mask, max_new_tokens, start, pad_token_id, eos_token_id)


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs: the start token, then the labels without their last, ignored positions as pad."""
    shifted = torch.cat([torch.full_like(labels[:, :1], start_id), labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == LABEL_PAD, pad_id)
