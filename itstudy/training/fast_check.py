"""The fast T5 against transformers' T5 at a real shape and precision (the GPU check runs it in bf16).

    python -m itstudy.training.fast_check --shape scratch/t5-large --batch 4 --precision bf16

Both models hold the same random weights; transformers runs with 'eager' attention (the
reference the issue names). In bf16 neither side equals fp32, so the fast side must be as close to
transformers in fp32 as transformers itself is in the same precision: its loss error and its
gradients' distance (1 - cosine similarity; the relative-bias embeddings' and all weights') at most
`--slack` times HF's own, or below a floor that is rounding (for the loss: one rounding step of
the precision, relative). Exits 1 if not. In bf16 the fast side adds the bias in bf16 (SDPA takes
the mask in the query's dtype) where eager transformers adds it in fp32.
Prompts are random ids with real SuperNI lengths, padded. Imports only torch and transformers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from itstudy.training.bench_clock import PAD_ID
from itstudy.training.engine import collate
from itstudy.training.fast_t5 import FastT5
from itstudy.training.models import compute_dtype, new_t5, t5_config
from itstudy.training.prompt_lengths import LENGTHS_FILE, examples_with_prompt_lengths, load_length_profile

BIAS = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
FLOOR = 1e-5  # below this a gradient distance is rounding, whatever the ratio


def _loss_and_grads(model, batch, device, dtype) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = model(**batch).loss
    loss.backward()
    return loss.item(), {name: p.grad.float().flatten() for name, p in model.named_parameters()}


def _distance(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], names) -> float:
    """1 - cosine similarity of the named gradients taken together."""
    ours, theirs = torch.cat([grads[n] for n in names]).double(), torch.cat([reference[n] for n in names]).double()
    return 1 - torch.nn.functional.cosine_similarity(ours, theirs, dim=0).item()


def compare(shape: str, batch_size: int, precision: str, max_source: int, max_target: int, seed: int = 0) -> dict:
    """Loss and gradient errors of HF in `precision` and of the fast T5 in `precision`, against HF in fp32."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = compute_dtype(precision, device)
    config = t5_config(shape)
    config.dropout_rate = 0.0  # the same function on both sides: dropout masks cannot match
    config._attn_implementation = "eager"
    hf = new_t5(config, seed).to(device)
    fast = FastT5.from_hf(hf)
    profile = load_length_profile(Path(LENGTHS_FILE))
    examples = examples_with_prompt_lengths(profile, batch_size, max_source, max_target, config.vocab_size, seed)
    batch = {key: value.to(device) for key, value in collate(examples, PAD_ID).items()}
    reference_loss, reference = _loss_and_grads(hf, batch, device, torch.float32)
    names = {"all weights": list(reference), "relative bias": [f"encoder.{BIAS}", f"decoder.{BIAS}"]}
    report = {"shape": shape, "precision": str(dtype).removeprefix("torch."), "batch": batch_size, "device": str(device),
              # a loss error below one rounding step of the precision is rounding, whatever the ratio
              "loss_floor": max(FLOOR, reference_loss * torch.finfo(dtype).eps)}
    for side, model in (("hf", hf), ("fast", fast)):
        loss, grads = _loss_and_grads(model, batch, device, dtype)
        report[side] = {"loss_error": abs(loss - reference_loss),
                        **{f"{what} gradient distance": _distance(grads, reference, group) for what, group in names.items()}}
    return report


def within(report: dict, slack: float) -> bool:
    """Whether every fast error is at most `slack` x HF's own in the same precision (or below its floor)."""
    floors = {"loss_error": report["loss_floor"]}
    return all(value <= max(slack * report["hf"][key], floors.get(key, FLOOR)) for key, value in report["fast"].items())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m itstudy.training.fast_check", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="scratch/t5-small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--max-source", type=int, default=1024)
    parser.add_argument("--max-target", type=int, default=128)
    parser.add_argument("--slack", type=float, default=1.5, help="allowed ratio of the fast error to HF's own (default 1.5)")
    args = parser.parse_args(argv)
    report = compare(args.shape, args.batch, args.precision, args.max_source, args.max_target)
    report["within"] = within(report, args.slack)
    print(json.dumps(report, indent=1))
    return 0 if report["within"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
