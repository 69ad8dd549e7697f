"""`itstudy bench train`: training throughput of our step against Hugging Face's Seq2SeqTrainer.
(`itstudy bench eval`, generation speed, is `itstudy.training.bench_eval`.)

    itstudy bench train --shape scratch/t5-small --max-source 256 --max-target 64 --batch 8 --steps 12
    python -m itstudy.training.bench train --shape scratch/t5-large --max-source 1024 --max-target 128 --batch 16

Both sides get the same model (a named T5 shape, or the decoder-only `scratch/llama-tiny`, same
seed, same initial weights), the same
examples, the same global batch, precision, optimiser (fused AdamW, constant learning rate,
gradient clipping 1.0) and number of steps, one epoch over the examples, no evaluation.
Ours is `itstudy.training.engine` exactly as the training loop uses it: length-grouped global
batches with dynamic padding, or with `--max-tokens N` (`train.max_tokens_per_micro_batch`)
micro-batches of at most N padded tokens padded to length buckets (`itstudy.training.batching`).
Hugging Face keeps its defaults (random batches padded to their longest member), except what makes it equivalent: batch, accumulation, steps, precision,
constant schedule; `--hf-group-by-length` adds a row with its `group_by_length` sampler.

Timing: one untimed forward and backward on a micro-batch of the longest examples (with a token
budget: on every bucket shape of the epoch, at its most rows; gradients dropped), then one epoch
over the examples, every step timed: both sides do exactly the same work. (Leaving out the
first steps instead would favour Hugging Face's group_by_length sampler, which puts the longest,
most expensive batch first.) `--repeats` alternates the sides and reports each figure's median.

Measured: non-padding tokens/s (source + target), samples/s, model FLOPs utilisation and peak
memory, per round and their medians. MFU counts the matmul FLOPs (6 per weight per token, the
decoder's cross-attention K/V on source tokens) plus the attention-score FLOPs (QK^T and AV), each
reported separately (`itstudy.training.flops`), over non-padding tokens only. Peak: 790 TFLOP/s
for bf16 on H100/H200 (what an 8192^3 bf16 matmul reaches on both), or on CPU an fp32 2048^3
matmul measured at start-up on this machine.

Out of memory (torch.OutOfMemoryError on GPU, MemoryError on CPU) is a result, not a crash: the
side is reported as "does not fit at batch B (peak X GB)", skipped in later rounds, and the others
go on. Each side builds its own model and frees it (and the allocator's cache) before the next.

Examples: random token ids with the (source, target) lengths of real SuperNI prompts
(`itstudy.training.prompt_lengths`; `itstudy bench profile` measures them again).

This module imports only torch and transformers (and our torch-only engine and models), so it
runs on a GPU box that has no Ray, MLflow, datasets or rouge-score.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
import transformers

from itstudy.training.bench_args import BenchArgumentError, parse_bench_args
from itstudy.training.bench_clock import (
    PAD_ID,
    Measurement,
    StepClock,
    bucket_shape_batches,
    cpu_peak_flops,
    longest_batch,
    peak_memory_gb,
    reset_peak_memory,
    warm_up,
)
from itstudy.training.bench_eval import bench_eval, print_eval_report
from itstudy.training.engine import (
    CausalExample,
    StepPlan,
    collate,
    make_optimizer,
    make_scheduler,
    token_budget,
    train_step,
)
from itstudy.training.fast_t5 import FastT5
from itstudy.training.flops import FlopModel, flop_model
from itstudy.training.models import (
    CAUSAL_SHAPES,
    T5_VOCAB_SIZE,
    compute_dtype,
    llama_config,
    new_llama,
    new_t5,
    parameter_counts,
    t5_config,
)
from itstudy.training.prompt_lengths import LENGTHS_FILE, examples_with_prompt_lengths, load_length_profile, write_length_profile

GPU_BF16_PEAK_FLOPS = 790e12  # an 8192^3 bf16 matmul, measured on H100 and on H200
LEARNING_RATE = 1e-4


# --- the two sides ---------------------------------------------------------------------------


def run_ours(model, examples, args, device, dtype, clock: StepClock) -> None:
    """The training loop's step: length-grouped batches, dynamic padding (or a token budget and length
    buckets with --max-tokens), fused AdamW, accumulation."""
    plan = ours_plan(examples, args)
    optimizer = make_optimizer(model, LEARNING_RATE, 0.0)
    scheduler = make_scheduler(optimizer, "constant", 0, plan.per_epoch)
    model.train()
    for step in range(plan.per_epoch):
        clock.step_started()
        micro_batches = [collate(chunk, PAD_ID, plan.buckets) for chunk in _ours_micro_batches(plan, examples, step, args)]
        target_tokens = sum(int((batch["labels"] != -100).sum()) for batch in micro_batches)
        train_step(
            model, micro_batches, optimizer, scheduler, step_target_tokens=target_tokens, world_size=1, dtype=dtype, grad_clip=1.0
        )
        clock.step_done()


def ours_plan(examples, args) -> StepPlan:
    """The global batches of `--batch x --accumulation` sequences, split by `--max-tokens` if given."""
    budget = token_budget(examples, args.max_tokens, args.max_source, args.max_target) if args.max_tokens else None
    lengths = [len(e.input_ids) + len(e.labels) for e in examples]
    return StepPlan(lengths, args.batch * args.accumulation, args.seed, budget)


def _ours_micro_batches(plan: StepPlan, examples, step: int, args) -> list[list]:
    accumulation = None if plan.budget else args.accumulation
    return [[examples[i] for i in indices] for indices in plan.micro_batches(step, 0, 1, accumulation)]


def _warm_up_batches(run, examples, args) -> list[dict]:
    """Ours with a token budget: every bucket shape of its epoch; otherwise one batch of the longest examples."""
    if run is run_ours and args.max_tokens:
        plan = ours_plan(examples, args)
        epoch = [chunk for step in range(plan.per_epoch) for chunk in _ours_micro_batches(plan, examples, step, args)]
        return bucket_shape_batches(epoch, plan.buckets)
    return longest_batch(examples, args.batch)


def run_hugging_face(model, examples, args, device, dtype, clock: StepClock, group_by_length: bool) -> None:
    """Seq2SeqTrainer at its defaults, made equivalent in batch, accumulation, steps, precision and schedule."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            clock.step_started()

        def on_step_end(self, *_, **__):
            clock.step_done()

    example = type(examples[0])

    def collator(features):
        # Pads to the longest member of the batch, as DataCollatorForSeq2Seq(padding=True) does.
        return collate([example(tuple(f["input_ids"]), tuple(f["labels"])) for f in features], PAD_ID)

    dataset = [{"input_ids": list(e.input_ids), "labels": list(e.labels)} for e in examples]
    steps = len(examples) // (args.batch * args.accumulation)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = Seq2SeqTrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=args.accumulation,
            max_steps=steps,
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="constant",
            bf16=dtype == torch.bfloat16,
            use_cpu=device.type == "cpu",
            seed=args.seed,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            **(_group_by_length_option(Seq2SeqTrainingArguments) if group_by_length else {}),
        )
        trainer = Seq2SeqTrainer(
            model=model, args=training_args, train_dataset=dataset, data_collator=collator, callbacks=[Clock()]
        )
        trainer.train()


def _group_by_length_option(arguments_class) -> dict:
    # transformers 5.23 spells it train_sampling_strategy; the GPU box's 5.17 may still have the older flag.
    names = {field.name for field in dataclasses.fields(arguments_class)}
    return {"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in names else {"group_by_length": True}


def bench_train(args) -> dict:
    """Run both sides on identical inputs and return the results as plain data."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = compute_dtype(args.precision, device)
    causal = args.shape in CAUSAL_SHAPES
    config = llama_config(args.shape, T5_VOCAB_SIZE, PAD_ID, 1, None) if causal else t5_config(args.shape)
    new_model = new_llama if causal else new_t5
    profile = load_length_profile(Path(args.lengths or LENGTHS_FILE))
    global_batch = args.batch * args.accumulation
    examples = examples_with_prompt_lengths(
        profile, global_batch * args.steps, args.max_source, args.max_target, config.vocab_size, args.seed
    )
    if causal:  # the same ids, as prompt then target of one sequence
        examples = [CausalExample(e.input_ids, e.labels) for e in examples]
    # MFU is stated against bf16 peak on GPU and measured fp32 peak on CPU; fp32 on GPU has no stated peak here.
    peak = cpu_peak_flops() if device.type == "cpu" else GPU_BF16_PEAK_FLOPS if dtype == torch.bfloat16 else float("nan")
    with torch.device("meta"):  # the shape without its memory: parameter and FLOP counts
        skeleton = new_model(config, args.seed)
    counts, flops = parameter_counts(skeleton), flop_model(skeleton)
    ours = "ours (itstudy engine" + (", fast T5" if args.implementation == "fast" else "")
    ours += f", <= {args.max_tokens} tokens, bucketed)" if args.max_tokens else ")"
    builders = {ours: _fast_t5 if args.implementation == "fast" else new_model}  # Seq2SeqTrainer always gets HF's T5
    sides = [(ours, run_ours, {})]
    if not args.no_hf:
        if not args.no_hf_defaults:
            sides.append(("Seq2SeqTrainer (defaults)", run_hugging_face, {"group_by_length": False}))
        if args.hf_group_by_length:
            sides.append(("Seq2SeqTrainer (group_by_length)", run_hugging_face, {"group_by_length": True}))
    # Sides alternate, `repeats` rounds, and each figure is a median over rounds: on a shared machine the
    # load changes during a run, and alternating spreads it over both sides.
    rounds: dict[str, list[Measurement]] = {name: [] for name, _, _ in sides}
    does_not_fit: dict[str, str] = {}
    setup = _setup(args, device, dtype, counts["total"], peak, flops)
    for _ in range(args.repeats):
        for name, run, options in sides:
            if name not in does_not_fit:
                build = builders.get(name, new_model)
                measured = _measure_side(name, run, options, build, config, examples, args, device, dtype, (flops, peak))
                if isinstance(measured, Measurement):
                    rounds[name].append(measured)
                else:
                    does_not_fit[name] = measured
                    print(f"  {name}: {measured}", flush=True)
        report = _report(device, setup, rounds, does_not_fit)
        if args.out:  # after every round: a run stopped by a time limit keeps the rounds it finished
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _fast_t5(config, seed: int) -> FastT5:
    """The fast T5 with exactly the weights `new_t5` draws for `seed`."""
    return FastT5.from_hf(new_t5(config, seed))


def _setup(args, device, dtype, parameters: int, peak: float, flops: FlopModel) -> dict:
    return {
        "shape": args.shape,
        "parameters": parameters,
        "precision": str(dtype).removeprefix("torch."),
        "max_source": args.max_source,
        "max_target": args.max_target,
        "per_device_batch": args.batch,
        "accumulation": args.accumulation,
        "max_tokens": args.max_tokens,
        "steps": args.steps,
        "peak_flops": peak,
        "flops": asdict(flops),
        "repeats": args.repeats,
        "load_average_before_after": [os.getloadavg()[0], None],
        "command": "itstudy bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
    }


def _report(device: torch.device, setup: dict, rounds: dict[str, list[Measurement]], does_not_fit: dict[str, str]) -> dict:
    """The results so far as plain data: each side's medians, or why it does not fit, and every round."""
    results = [asdict(_median(name, measured)) if measured else {"name": name, "does_not_fit": does_not_fit[name]}
               for name, measured in rounds.items() if measured or name in does_not_fit]
    return {
        "machine": _machine(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__},
        "setup": {**setup, "load_average_before_after": [setup["load_average_before_after"][0], os.getloadavg()[0]]},
        "results": results,
        "all_rounds": {name: [asdict(m) for m in measured] for name, measured in rounds.items()},
        "does_not_fit": does_not_fit,
    }


def _measure_side(name, run, options, new_model, config, examples, args, device, dtype, flops_peak) -> Measurement | str:
    """One round of one side on a fresh model: its Measurement, or "does not fit at batch B (peak X GB)".

    The model, its optimiser and any exception (whose traceback holds their frames) are gone when this
    returns; the collector and the allocator's cache are then emptied, so the next side starts clean."""
    reset_peak_memory(device)
    try:
        model = new_model(config, args.seed).to(device)
        warm_up(model, _warm_up_batches(run, examples, args), device, dtype)
        clock = StepClock(model, device)
        run(model, examples, args, device, dtype, clock, **options)
        result = clock.measurement(name, *flops_peak)
    except (torch.OutOfMemoryError, MemoryError):
        result = f"does not fit at batch {args.batch} (peak {peak_memory_gb(device):.1f} GB)"
    model = clock = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _median(name: str, rounds: list[Measurement]) -> Measurement:
    """Each figure's median over the rounds."""
    figures = {field.name for field in dataclasses.fields(Measurement)} - {"name"}
    return Measurement(name=name, **{key: statistics.median(getattr(m, key) for m in rounds) for key in figures})


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def print_report(report: dict) -> None:
    setup = report["setup"]
    budget = f" (ours: <= {setup['max_tokens']} tokens per micro-batch, warmed on each bucket shape)" if setup["max_tokens"] else ""
    print(f"{setup['shape']} ({setup['parameters'] / 1e6:.1f}M params), {setup['precision']}, source<={setup['max_source']} "
          f"target<={setup['max_target']}, batch {setup['per_device_batch']} x {setup['accumulation']} accumulation{budget}, "
          f"{setup['steps']} steps (one epoch, all timed, after one warm-up pass) on {report['machine']}")
    print(f"  peak for MFU: {setup['peak_flops'] / 1e12:.3g} TFLOP/s; median of {setup['repeats']} alternating rounds; "
          f"load average {setup['load_average_before_after'][0]:.1f} before, {setup['load_average_before_after'][1]:.1f} after")
    header = f"  {'':34s} {'tokens/s':>10s} {'tok/CPU-s':>10s} {'samples/s':>10s} {'MFU':>7s} {'attn':>6s} {'padding':>8s} {'passes':>7s} {'peak mem GB':>12s}"
    print(header)
    measured = [r for r in report["results"] if "does_not_fit" not in r]
    for r in report["results"]:
        if r in measured:
            attention = r["attention_tflops"] / (r["matmul_tflops"] + r["attention_tflops"])
            print(f"  {r['name']:34s} {r['tokens_per_s']:10.0f} {r['tokens_per_cpu_s']:10.0f} {r['samples_per_s']:10.2f} "
                  f"{r['mfu']:7.2%} {attention:6.1%} {r['padding_fraction']:8.1%} {r['forward_passes'] / r['timed_steps']:7.1f} "
                  f"{r['peak_memory_gb']:12.2f}")
        else:
            print(f"  {r['name']:34s} {r['does_not_fit']}")
    print("  (attn: attention-score share of the model FLOPs that MFU counts; passes: forward passes per step)")
    for name, why in report["does_not_fit"].items():
        if any(r["name"] == name for r in measured):
            print(f"  {name}: a later round {why}; medians over the rounds that ran")
    ours = report["results"][0]
    for other in measured[1:] if ours in measured else []:
        print(f"  ratio ours / {other['name']}: {ours['tokens_per_s'] / other['tokens_per_s']:.2f}x tokens/s, "
              f"{ours['tokens_per_cpu_s'] / other['tokens_per_cpu_s']:.2f}x tokens per CPU-second")


# --- command line ----------------------------------------------------------------------------


def bench_command(argv: list[str]) -> dict | None:
    """`itstudy bench ...`: parse and check `argv` (what follows 'bench'), run, print; returns the train report."""
    return run_bench(parse_bench_args(argv))


def run_bench(args) -> dict | None:
    """Run what `parse_bench_args` returned and print it; returns the train or eval report."""
    if args.what == "profile":
        write_length_profile(Path(args.out or LENGTHS_FILE), args.max_source, args.max_target)
        return None
    if args.what == "eval":
        report = bench_eval(args)
        print_eval_report(report)
        return report
    report = bench_train(args)
    print_report(report)
    return report


if __name__ == "__main__":
    try:
        bench_command(sys.argv[1:])
    except BenchArgumentError as error:
        sys.exit(f"itstudy: {error}")
