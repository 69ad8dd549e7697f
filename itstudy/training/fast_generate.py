"""Greedy decoding for the fast T5 (`itstudy.training.fast_t5`) with a KV cache.

The encoder runs once; each decoder layer's cross-attention keys and values are projected once
from its output; self-attention keys and values are written into a cache preallocated for
`max_new_tokens` positions, so step t computes one query row against t + 1 cached keys. The
decoder's relative position bias (causal mask included) is computed once for all steps and
sliced per step. A row that emits </s> leaves the batch (its caches are dropped, so the
remaining rows' steps cost less), and the batch stops when every row has; the finished rows are
padded, as Hugging Face's `generate` does, so the output is the same tensor: the start token, then
one token per step.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                    start_id: int, pad_id: int, eos_id: int) -> torch.Tensor:
    """[B, 1 + steps] token ids: `start_id`, then the greedy continuation, pad after </s>."""
    source = model.encoder(input_ids, attention_mask).last_hidden_state
    decoder = model.decoder
    cross = [_cross_keys_values(block.layer[1].attention, source) for block in decoder.block]
    source_mask = attention_mask.bool()[:, None, None, :]
    bias = decoder.self_bias(max_new_tokens, max_new_tokens)
    caches: list[tuple[torch.Tensor, torch.Tensor]] = []
    tokens = torch.full((input_ids.shape[0], 1 + max_new_tokens), pad_id, dtype=torch.long, device=input_ids.device)
    tokens[:, 0] = start_id
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # the rows still decoding, in cache order
    last = tokens[:, :1]
    for step in range(max_new_tokens):
        x = decoder.embed_tokens(last)
        for index, block in enumerate(decoder.block):
            mask = bias[None, :, step : step + 1, : step + 1]
            x = _self_attention_step(block.layer[0], x, caches, index, step, max_new_tokens, mask)
            x = _cross_attention_step(block.layer[1], x, cross[index], source_mask)
            x = block.layer[-1](x)
        following = model.logits(decoder.final_layer_norm(x))[:, -1].argmax(-1)
        tokens[rows, step + 1] = following
        going = following != eos_id
        remaining = int(going.sum())  # one host sync per step: the price of stopping early
        if remaining == 0:
            return tokens[:, : step + 2]
        if remaining < len(rows):  # finished rows leave the batch: later steps compute only the others
            rows, following, source_mask = rows[going], following[going], source_mask[going]
            caches[:] = [(keys[going], values[going]) for keys, values in caches]
            cross = [(keys[going], values[going]) for keys, values in cross]
        last = following[:, None]
    return tokens


def _cross_keys_values(attention, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return attention.split(attention.k(source)), attention.split(attention.v(source))


def _cross_attention_step(layer, x: torch.Tensor, keys_values: tuple, source_mask: torch.Tensor) -> torch.Tensor:
    attention = layer.attention
    return x + attention.attend(attention.split(attention.q(layer.layer_norm(x))), *keys_values, source_mask)


def _self_attention_step(layer, x: torch.Tensor, caches: list, index: int, step: int, length: int, mask) -> torch.Tensor:
    """One new position through a self-attention layer; its key and value go into the layer's cache."""
    attention = layer.attention
    hidden = layer.layer_norm(x)
    key, value = attention.split(attention.k(hidden)), attention.split(attention.v(hidden))
    if index == len(caches):  # the first step allocates the cache for every position to come (in autocast's dtype)
        shape = (*key.shape[:2], length, key.shape[-1])
        caches.append((key.new_zeros(shape), value.new_zeros(shape)))
    keys, values = caches[index]
    keys[:, :, step], values[:, :, step] = key[:, :, 0], value[:, :, 0]
    query = attention.split(attention.q(hidden))
    return x + attention.attend(query, keys[:, :, : step + 1], values[:, :, : step + 1], mask)
