"""`itstudy bench eval`: greedy generation speed of the fast T5 (KV-cached, `itstudy.training.fast_generate`)
against Hugging Face's `generate`, on the same model and prompts.

    itstudy bench eval --shape scratch/t5-small --prompts 64 --batch 32 --max-new-tokens 32 --threads 1

Both sides get the same weights (a named T5 shape, seeded; the fast side is `FastT5.from_hf` of
the HF model) and the same prompts: random token ids with real SuperNI prompt lengths, sorted by
length and batched as evaluation batches them, each batch padded to its longest prompt. Each side
decodes greedily (`do_sample=False, num_beams=1`, HF's KV cache on) up to `--max-new-tokens`,
stopping a batch when every row has emitted </s>. A random model seldom emits </s>, so batches
usually run to the limit: the figure is decoding speed, not early stopping.

Measured per round (sides alternate, `--repeats` rounds, medians): generated tokens per second
of wall time and of this process's CPU time (each row's tokens up to and including </s>), and
whether the two sides produced identical token ids (per row; in fp32 they must, in bf16 a near-tie
may tip either way). One untimed call on the longest batch warms each side first. Imports only torch and transformers.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from pathlib import Path

import torch

from itstudy.training.bench_clock import PAD_ID, sync_device
from itstudy.training.fast_t5 import FastT5
from itstudy.training.models import compute_dtype, new_t5, t5_config
from itstudy.training.prompt_lengths import EOS_ID, LENGTHS_FILE, examples_with_prompt_lengths, load_length_profile


def prompt_batches(args, vocab_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, attention_mask) per batch: prompts sorted longest first, right-padded to the longest in the batch."""
    profile = load_length_profile(Path(args.lengths or LENGTHS_FILE))
    examples = examples_with_prompt_lengths(profile, args.prompts, args.max_source, 2, vocab_size, args.seed)
    prompts = sorted((e.input_ids for e in examples), key=len, reverse=True)
    batches = []
    for start in range(0, len(prompts), args.batch):
        chunk = prompts[start : start + args.batch]
        input_ids = torch.full((len(chunk), len(chunk[0])), PAD_ID, dtype=torch.long)
        for row, prompt in enumerate(chunk):
            input_ids[row, : len(prompt)] = torch.tensor(prompt)
        batches.append((input_ids, (input_ids != PAD_ID).long()))
    return batches


def generated_tokens(output: torch.Tensor) -> int:
    """Tokens each row generated, up to and including its </s> (the start token and the padding after </s> excluded)."""
    new = output[:, 1:]
    after_eos = (new == EOS_ID).long().cumsum(1) - (new == EOS_ID).long()  # >0 strictly after the first </s>
    return int((after_eos == 0).sum())


def _generate(model, input_ids, attention_mask, args, device, dtype) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        options = {"max_new_tokens": args.max_new_tokens, "pad_token_id": PAD_ID, "eos_token_id": EOS_ID,
                   "do_sample": False, "num_beams": 1}
        if isinstance(model, FastT5):
            return model.generate(input_ids.to(device), attention_mask.to(device), **options)
        return model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **options)


def _round(model, batches, args, device, dtype) -> tuple[float, float, int, list[torch.Tensor]]:
    """Wall seconds, CPU seconds, generated tokens and the outputs of one pass over every batch."""
    _generate(model, *batches[0], args, device, dtype)  # warm-up on the longest batch
    sync_device(device)
    started, cpu_started, tokens, outputs = time.perf_counter(), time.process_time(), 0, []
    for input_ids, attention_mask in batches:
        output = _generate(model, input_ids, attention_mask, args, device, dtype)
        tokens += generated_tokens(output)
        outputs.append(output.cpu())
    sync_device(device)
    return time.perf_counter() - started, time.process_time() - cpu_started, tokens, outputs


def _identical_rows(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    """Share of rows whose token ids are the same on both sides (shorter outputs padded)."""
    same = total = 0
    for a, b in zip(first, second):
        width = max(a.shape[1], b.shape[1])
        a, b = (torch.nn.functional.pad(t, (0, width - t.shape[1]), value=PAD_ID) for t in (a, b))
        same, total = same + int((a == b).all(1).sum()), total + a.shape[0]
    return same / total


def bench_eval(args) -> dict:
    """Alternate HF generate and the fast T5 over the same prompts; medians and every round, as plain data."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = compute_dtype(args.precision, device)
    hf = new_t5(t5_config(args.shape), args.seed).to(device).eval()
    fast = FastT5.from_hf(hf).eval()
    batches = prompt_batches(args, hf.config.vocab_size)
    rounds: dict[str, list[float]] = {"HF generate": [], "fast T5": []}
    cpu_rounds: dict[str, list[float]] = {"HF generate": [], "fast T5": []}
    identical = []
    for _ in range(args.repeats):
        outputs = {}
        for name, model in (("HF generate", hf), ("fast T5", fast)):
            seconds, cpu_seconds, tokens, outputs[name] = _round(model, batches, args, device, dtype)
            rounds[name].append(tokens / seconds)
            cpu_rounds[name].append(tokens / cpu_seconds)
            gc.collect()
        identical.append(_identical_rows(outputs["HF generate"], outputs["fast T5"]))
        report = _report(args, device, dtype, rounds, cpu_rounds, identical)
        if args.out:  # after every round, so a run stopped by a time limit keeps what it finished
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _report(args, device, dtype, rounds: dict, cpu_rounds: dict, identical: list[float]) -> dict:
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_rounds.items()}
    return {
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "setup": {"shape": args.shape, "precision": str(dtype).removeprefix("torch."), "prompts": args.prompts,
                  "batch": args.batch, "max_source": args.max_source, "max_new_tokens": args.max_new_tokens,
                  "repeats": args.repeats},
        "tokens_per_s": medians,
        "all_rounds_tokens_per_s": rounds,
        "speedup": medians["fast T5"] / medians["HF generate"],
        # on a shared CPU machine, what other processes take inflates wall time but hardly CPU time (one thread)
        "tokens_per_cpu_s": cpu_medians,
        "all_rounds_tokens_per_cpu_s": cpu_rounds,
        "speedup_cpu": cpu_medians["fast T5"] / cpu_medians["HF generate"],
        "identical_rows_per_round": identical,
    }


def print_eval_report(report: dict) -> None:
    setup = report["setup"]
    print(f"{setup['shape']}, {setup['precision']}, {setup['prompts']} prompts (source<={setup['max_source']}), batch "
          f"{setup['batch']}, up to {setup['max_new_tokens']} new tokens, on {report['machine']}; median of "
          f"{setup['repeats']} alternating rounds")
    for name, value in report["tokens_per_s"].items():
        rounds = ", ".join(f"{v:.0f}" for v in report["all_rounds_tokens_per_s"][name])
        cpu = ", ".join(f"{v:.0f}" for v in report["all_rounds_tokens_per_cpu_s"][name])
        print(f"  {name:12s} {value:10.0f} generated tokens/s (rounds: {rounds}); "
              f"{report['tokens_per_cpu_s'][name]:.0f} per CPU-second (rounds: {cpu})")
    identical = ", ".join(f"{share:.0%}" for share in report["identical_rows_per_round"])
    print(f"  fast / HF: {report['speedup']:.2f}x tokens/s, {report['speedup_cpu']:.2f}x per CPU-second; "
          f"identical outputs (rows, per round): {identical}")
