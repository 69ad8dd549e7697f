"""How a run's model is spread over its workers (`train.strategy`).

- `ddp`: every worker holds every weight and the optimiser state; gradients are averaged
  (`DistributedDataParallel`). Fits while weights + gradients + AdamW state (16 bytes per
  parameter in fp32) fit one device: t5-large on a 48 GB GPU, not t5-xl or a 7B model.
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`): each transformer block (the model's
  `_no_split_modules`), then the rest, sharded over the workers, so each holds 1/world_size of
  weights, gradients and optimiser state; bf16 mixed precision on GPU (fp32 master weights and
  gradient reduction), fp32 on CPU; activation checkpointing (blocks recompute their activations
  in the backward pass instead of keeping them).

Evaluation and checkpoints need whole weights. Generating with the sharded model would hang:
every forward all-gathers, and ranks generate for different numbers of steps. So at each
evaluation every rank gathers the full weights into a plain, unsharded copy (`gathered`) that
generates alone, as under DDP, and that rank 0 saves with `save_pretrained`; the optimiser
state is gathered whole too (keyed by parameter name), and loaded back on resume by every rank
(`load_optimizer_state`). The copy costs one full model per rank while it evaluates.

With one worker there is nothing to shard: the model trains as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

STRATEGIES = ("ddp", "fsdp")


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def for_training(model: nn.Module, strategy: str, world_size: int, device_ids: list[int] | None, dtype: torch.dtype) -> nn.Module:
    """What `train_step` runs: the model itself (one worker), DDP around it, or the model sharded in place."""
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if world_size == 1:
        return model
    if strategy == "ddp":
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def gathered(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, dict]:
    """(a model holding every weight, the whole optimiser state); collective under FSDP: every rank calls it."""
    if not is_sharded(model):
        return model, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    from torch.distributed.fsdp import FSDPModule

    weights = get_model_state_dict(model, options=_options())
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=_options())
    # fully_shard made the model's class a subclass of (FSDPModule, its own class)
    own_class = next(base for base in type(model).__bases__ if not issubclass(base, FSDPModule))
    device = next(iter(weights.values())).device
    with torch.random.fork_rng(devices=[]), torch.device(device):  # its random init is overwritten at once
        whole = own_class(model.config)
    _untie_output_embedding(whole, weights)
    whole.load_state_dict(weights)
    return whole.eval(), optimizer_state


def _untie_output_embedding(model: nn.Module, weights: dict) -> None:
    """Give the copy its own output embedding where the trained model has one (before loading).

    transformers ties T5's lm_head to its input embedding at construction even for v1.1 /
    lm-adapt configs (see `models.new_t5`); loading both into one tensor would keep only one.
    """
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is not embedding.weight:
        return
    names = {module: name for name, module in model.named_modules() if module in (head, embedding)}
    saved = {module: weights.get(f"{name}.weight") for module, name in names.items()}
    if saved[head] is not None and saved[embedding] is not None and not torch.equal(saved[head], saved[embedding]):
        head.weight = nn.Parameter(torch.empty_like(saved[head]))
        # and forget the tie, so that save_pretrained writes the head (as models.new_t5 does)
        getattr(model, "all_tied_weights_keys", {}).pop(f"{names[head]}.weight", None)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimiser state: as saved (DDP, one worker), or the whole state into each rank's shards (FSDP)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())
