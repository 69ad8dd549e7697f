"""The benchmark's command line: parsed and checked without torch, so that `--help` and a bad argument
answer at once and in one line (`itstudy.training.bench` runs what it returns)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from itstudy.errors import UserError
from itstudy.training.shapes import CAUSAL_SHAPES, NAMED_SHAPES

POSITIVE = ("max_source", "max_target", "batch", "accumulation", "steps", "threads", "repeats", "prompts", "max_new_tokens", "max_tokens")
"""Arguments that count something: each must be a whole number of at least 1."""


class BenchArgumentError(UserError):
    """A benchmark argument that cannot work; the message names it and says what was expected."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="itstudy bench", description="Benchmarks (see itstudy/training/bench.py).")
    commands = parser.add_subparsers(dest="what", required=True)
    train = commands.add_parser("train", help="training throughput: ours vs Seq2SeqTrainer")
    train.add_argument("--shape", choices=[*NAMED_SHAPES, *CAUSAL_SHAPES], default="scratch/t5-small")
    train.add_argument("--max-source", type=int, default=1024, help="source tokens kept (default 1024)")
    train.add_argument("--max-target", type=int, default=128, help="target tokens kept (default 128)")
    train.add_argument("--batch", type=int, default=8, help="sequences per forward pass")
    train.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimiser step")
    train.add_argument("--max-tokens", type=int,
                       help="ours: micro-batches of at most this many padded source + target tokens, lengths bucketed "
                            "(the global batch stays --batch x --accumulation sequences); default: --batch sequences")
    train.add_argument("--steps", type=int, default=20, help="optimiser steps (one epoch of steps x global batch examples)")
    _add_measuring_arguments(train)
    train.add_argument("--no-hf", action="store_true", help="measure ours only")
    train.add_argument("--hf-group-by-length", action="store_true", help="also run Seq2SeqTrainer with group_by_length")
    train.add_argument("--no-hf-defaults", action="store_true",
                       help="skip Seq2SeqTrainer at its defaults (with --hf-group-by-length: ours against group_by_length only)")
    train.add_argument("--implementation", choices=["hf", "fast"], default="hf",
                       help="our side's T5: transformers' (hf, default) or itstudy's fast T5 (T5 shapes only)")
    train.add_argument("--out", help="write the results as JSON here")
    evaluate = commands.add_parser("eval", help="greedy generation: the fast T5's KV-cached decoding vs HF generate")
    evaluate.add_argument("--shape", choices=list(NAMED_SHAPES), default="scratch/t5-small")
    evaluate.add_argument("--prompts", type=int, default=64, help="prompts with SuperNI lengths (default 64)")
    evaluate.add_argument("--max-source", type=int, default=1024, help="source tokens kept (default 1024)")
    evaluate.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated at most (eval.max_new_tokens: 32)")
    evaluate.add_argument("--batch", type=int, default=32, help="prompts per generate call, length-sorted (eval.batch_size: 32)")
    _add_measuring_arguments(evaluate)
    evaluate.add_argument("--out", help="write the results as JSON here")
    profile = commands.add_parser("profile", help="measure SuperNI prompt lengths into the profile file")
    profile.add_argument("--max-source", type=int, default=1024)
    profile.add_argument("--max-target", type=int, default=128)
    profile.add_argument("--out", help="default: the profile shipped with itstudy")
    return parser


def _add_measuring_arguments(command: argparse.ArgumentParser) -> None:
    """What `bench train` and `bench eval` both take: how to measure, on which lengths."""
    command.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--threads", type=int, help="CPU threads for every side (default: torch's)")
    command.add_argument("--repeats", type=int, default=3, help="alternate the sides this many rounds; report medians (default 3)")
    command.add_argument("--lengths", help="length profile JSON (default: the SuperNI profile shipped with itstudy)")


def parse_bench_args(argv: list[str]) -> argparse.Namespace:
    """`argv` (what follows 'bench') parsed; BenchArgumentError, one line, for a value that cannot work."""
    args = build_parser().parse_args(argv)
    for name in POSITIVE:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise BenchArgumentError(f"bench {args.what} --{name.replace('_', '-')} {value}: expected a whole number of at least 1")
    if getattr(args, "implementation", "hf") == "fast" and args.shape in CAUSAL_SHAPES:
        raise BenchArgumentError(f"bench train --implementation fast: the fast T5 cannot run the decoder-only {args.shape}")
    if getattr(args, "max_tokens", None) and args.max_tokens < args.max_source + args.max_target:
        raise BenchArgumentError(
            f"bench train --max-tokens {args.max_tokens}: cannot hold one row of --max-source + --max-target = "
            f"{args.max_source + args.max_target} tokens; use at least that"
        )
    if getattr(args, "lengths", None):
        _check_profile(Path(args.lengths))
    if args.out and not Path(args.out).expanduser().resolve().parent.is_dir():
        raise BenchArgumentError(f"bench {args.what} --out {args.out}: folder {Path(args.out).parent} does not exist")
    return args


def _check_profile(path: Path) -> None:
    """A length profile is JSON with a list of tasks (`itstudy bench profile` writes one)."""
    try:
        tasks = json.loads(path.read_text())["tasks"]
    except OSError as error:
        raise BenchArgumentError(f"bench train --lengths {path}: cannot read it ({error.strerror})") from None
    except (ValueError, KeyError, TypeError):
        raise BenchArgumentError(
            f"bench train --lengths {path}: not a length profile (JSON with \"tasks\", as `itstudy bench profile` writes)"
        ) from None
    if not tasks:
        raise BenchArgumentError(f"bench train --lengths {path}: the profile holds no task")
