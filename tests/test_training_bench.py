"""The throughput benchmark (itstudy.training.bench, prompt_lengths): both sides do identical work, the
report states the comparison, and the module runs where only torch and transformers are installed."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import ast
import importlib.util

import pytest
import torch

from itstudy.training import bench, bench_clock
from itstudy.training.bench import bench_command
from itstudy.training.engine import train_step
from itstudy.training.prompt_lengths import load_length_profile


def test_both_sides_train_one_epoch_over_the_same_tokens(tmp_path, capsys):
    report = bench_command(
        ["train", "--shape", "scratch/t5-tiny", "--batch", "4", "--steps", "3", "--max-source", "1024", "--max-target", "128",
         "--threads", "1", "--repeats", "1", "--out", str(tmp_path / "bench.json")]
    )
    ours, hugging_face = report["results"]
    processed = lambda r: r["tokens_per_s"] * r["seconds"]
    assert processed(ours) == pytest.approx(processed(hugging_face))  # identical examples, one epoch each
    assert ours["samples_per_s"] * ours["seconds"] == pytest.approx(12) and ours["timed_steps"] == 3
    assert ours["padding_fraction"] < hugging_face["padding_fraction"]
    assert 0 < ours["mfu"] < 1 and 0 < ours["attention_tflops"] < ours["matmul_tflops"]
    printed = capsys.readouterr().out
    assert "ratio ours / Seq2SeqTrainer (defaults)" in printed and "peak for MFU" in printed
    assert json.loads((tmp_path / "bench.json").read_text())["setup"]["shape"] == "scratch/t5-tiny"


def test_with_a_token_budget_ours_warms_every_bucket_shape_it_then_trains_on(monkeypatch, tmp_path, capsys):
    warmed, trained = {}, []

    def recording_warm_up(model, batches, device, dtype):
        warmed.update({(b["input_ids"].shape[1], b["labels"].shape[1]): len(b["input_ids"]) for b in batches})
        return bench_clock.warm_up(model, batches, device, dtype)

    def recording_step(model, micro_batches, *args, **kwargs):
        trained.extend((len(b["input_ids"]), b["input_ids"].shape[1], b["labels"].shape[1]) for b in micro_batches)
        return train_step(model, micro_batches, *args, **kwargs)

    monkeypatch.setattr(bench, "warm_up", recording_warm_up)
    monkeypatch.setattr(bench, "train_step", recording_step)
    report = bench_command(
        ["train", "--shape", "scratch/t5-tiny", "--batch", "8", "--steps", "2", "--max-source", "256", "--max-target", "32",
         "--max-tokens", "640", "--threads", "1", "--repeats", "1", "--no-hf"]
    )
    (ours,) = report["results"]
    assert ours["name"] == "ours (itstudy engine, <= 640 tokens, bucketed)" and ours["forward_passes"] == len(trained) > 2
    assert ours["samples_per_s"] * ours["seconds"] == pytest.approx(16)  # the global batch is still 8 sequences
    assert all(rows * (source + target) <= 640 for rows, source, target in trained)
    assert all(rows <= warmed[(source, target)] for rows, source, target in trained)  # every shape warmed, at its most rows
    assert report["setup"]["max_tokens"] == 640 and "passes" in capsys.readouterr().out


def test_the_length_profile_holds_real_prompt_lengths_per_task():
    tasks = load_length_profile()
    assert len(tasks) == 126
    sources = sorted(source for task in tasks for source, _ in task)
    assert 100 < sources[len(sources) // 2] < 400 and sources[-1] <= 1024  # SuperNI prompts: hundreds of tokens


def test_the_benchmark_imports_only_what_a_gpu_box_with_torch_and_transformers_has():
    # Neither Ray, MLflow, datasets, rouge-score nor our pydantic config; and whatever transformers pulls
    # in where it is installed (peft, accelerate, yaml), our own modules on this path need only torch,
    # transformers and the standard library.
    code = (
        "import sys, itstudy.training.bench; "
        "absent = {'ray', 'mlflow', 'datasets', 'rouge_score', 'pydantic'}; "
        "bad = {m for m in sys.modules if m.split('.')[0] in absent or m == 'itstudy.config'}; "
        "assert not bad, sorted(bad); "
        "print(' '.join(m for m in sys.modules if m.startswith('itstudy')))"
    )
    ours = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    allowed = {"torch", "transformers", "itstudy", "__future__", *sys.stdlib_module_names}
    for module in ours:
        tree = ast.parse(open(importlib.util.find_spec(module).origin).read())
        roots = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        roots |= {node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}
        assert roots <= allowed, (module, sorted(roots - allowed))


def test_a_side_that_runs_out_of_memory_is_reported_and_the_others_go_on(monkeypatch, tmp_path, capsys):
    attempts = []

    def out_of_memory(*args, **kwargs):
        attempts.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(bench, "run_hugging_face", out_of_memory)
    report = bench_command(
        ["train", "--shape", "scratch/t5-tiny", "--batch", "2", "--steps", "2", "--max-source", "128", "--max-target", "16",
         "--threads", "1", "--repeats", "2", "--out", str(tmp_path / "bench.json")]
    )
    ours, hugging_face = report["results"]
    assert len(report["all_rounds"]["ours (itstudy engine)"]) == 2 and ours["timed_steps"] == 2
    assert hugging_face["does_not_fit"].startswith("does not fit at batch 2 (peak ") and hugging_face["does_not_fit"].endswith(" GB)")
    assert len(attempts) == 1  # not tried again in the second round
    printed = capsys.readouterr().out
    table_row = [line for line in printed.splitlines() if line.startswith("  Seq2SeqTrainer (defaults)  ")]
    assert "does not fit at batch 2 (peak" in table_row[0] and "ratio" not in printed
    assert json.loads((tmp_path / "bench.json").read_text())["does_not_fit"] == {"Seq2SeqTrainer (defaults)": hugging_face["does_not_fit"]}


@pytest.mark.parametrize(
    ("arguments", "line"),
    [
        (["--batch", "0"], "itstudy: bench train --batch 0: expected a whole number of at least 1"),
        (["--steps", "-3"], "itstudy: bench train --steps -3: expected a whole number of at least 1"),
        (["--max-tokens", "1000"],
         "itstudy: bench train --max-tokens 1000: cannot hold one row of --max-source + --max-target = 1152 tokens; use at least that"),
        (["--lengths", "missing.json"], "itstudy: bench train --lengths missing.json: cannot read it (No such file or directory)"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(arguments, line):
    from itstudy.cli import main

    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["bench", "train", *arguments])
    assert code == 2 and err.getvalue() == line + "\n"


def test_the_command_line_is_parsed_without_torch():
    # `itstudy bench train --help` must answer at once: the parser and its checks load no torch.
    code = (
        "import sys; from itstudy.training.bench_args import parse_bench_args; "
        "args = parse_bench_args(['train', '--shape', 'scratch/t5-tiny', '--batch', '2']); "
        "assert args.shape == 'scratch/t5-tiny' and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
