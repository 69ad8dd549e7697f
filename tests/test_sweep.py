"""Sweeps on a real local Ray with a real MLflow SQLite store: Optuna search, kill and resume.

Each test runs the shipped demo study shrunk by overrides (tiny T5, a few steps, few test
instances) so that it costs seconds per trial on two cores.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from itstudy.config import load_study
from itstudy.paths import itstudy_home
from itstudy.sweep import run_sweep
from itstudy.sweep.parent import parent_run_name
from itstudy.sweep.trials import expand_grid, sweep_name
from itstudy.tracking import download_artifact, experiment_id_of, load_runs

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
DEMO = "experiments/demo.yaml"
# The demo made cheap: 14 tasks x 20 instances, 7 test tasks x 8 instances, a few optimiser steps.
TINY = [
    "data.instances_per_task=20",
    "data.test_instances_per_task=8",
    "train.max_steps=4",
    "train.checkpoints_to_keep=1",  # Tune snapshots its state at every checkpoint: a kill loses none
    "eval.batch_size=64",
    "baselines=[random]",
]


def _uri() -> str:
    return f"sqlite:///{itstudy_home() / 'mlflow.db'}"


def _runs(kind: str | None = None):
    runs = load_runs(_uri(), "demo")
    if kind is None or "tags.itstudy.kind" not in runs:  # no run created yet: no tag columns either
        return runs
    return runs[runs["tags.itstudy.kind"] == kind]


def test_optuna_search_over_the_learning_rate_nests_its_trials_under_the_sweep(tmp_path):
    space = "search={space: {train.learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}}, num_samples: 3}"
    # The demo chooses nothing and so holds out no dev tasks; a search chooses, on dev tasks only.
    study = load_study(REPO / DEMO, [*TINY, "grid={seed: [1]}", "data.dev_tasks=4", "eval.select_on=dev", space])

    result = run_sweep(study)

    assert [outcome.status for outcome in result.outcomes] == ["FINISHED"] * 3
    parent = _runs("sweep")
    assert len(parent) == 1 and parent.iloc[0]["tags.itstudy.sweep"] == sweep_name(study)
    assert parent.iloc[0]["name"] == parent_run_name(study) == f"demo sweep {sweep_name(study)[-8:]}"
    trials = _runs("trial")
    assert len(trials) == 3
    assert set(trials["parent_run_id"]) == {result.parent_run_id} == set(parent["run_id"])
    assert set(trials["status"]) == {"FINISHED"}
    rates = [float(value) for value in trials["params.train.learning_rate"]]
    assert len(set(rates)) == 3 and all(1e-4 <= rate <= 1e-2 for rate in rates)
    assert trials["metrics.exact_match"].notna().all()
    # What Optuna chose on is in MLflow: a dev metric, logged by every trial (test figures are never read).
    assert parent.iloc[0]["params.search.metric"] == "dev_exact_match"
    assert trials["metrics.dev_exact_match"].notna().all()
    # Names read whole, what varies first; the digest is in the key tag.
    assert all(name.startswith("def-original+ex-original n20 lr") and name.endswith(" seed=1") for name in trials["name"])
    # The baseline sits beside the trials, under the same parent.
    baselines = _runs("baseline")
    assert list(baselines["parent_run_id"]) == [result.parent_run_id]
    assert "lr" in result.table and "random" in result.table
    # The sweep run carries each configuration's and baseline's mean, and lists every child.
    sweep = parent.iloc[0]
    assert sweep["metrics.mean_exact_match/random"] == pytest.approx(baselines["metrics.exact_match"].iloc[0])
    assert len([column for column in parent if column.startswith("metrics.mean_exact_match/def-original ex-original n20 lr")]) == 3
    children = pd.read_csv(download_artifact(_uri(), sweep["run_id"], "children.csv", tmp_path))
    assert sorted(children["run_id"]) == sorted([*trials["run_id"], *baselines["run_id"]])


def test_a_failing_trial_ends_failed_with_its_error_and_the_sweep_says_so(tmp_path):
    study = load_study(REPO / DEMO, [*TINY, "grid={seed: [1]}", "train.fail_at_step=2", "train.max_failures=0"])

    result = run_sweep(study)

    assert [outcome.status for outcome in result.outcomes] == ["FAILED"]
    trial = _runs("trial").iloc[0]
    assert trial["status"] == "FAILED" and trial["tags.itstudy.status"] == "FAILED"
    error = download_artifact(_uri(), trial["run_id"], "error.txt", tmp_path).read_text()
    assert "InjectedFault" in error and "train.fail_at_step=2" in error
    assert _runs("sweep").iloc[0]["status"] == "FAILED"
    assert list(_runs("baseline")["status"]) == ["FINISHED"]  # the baselines stand regardless
    assert "1 trial(s) failed" in result.table and "rerun the same command" in result.table


def _sweep_command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "itstudy.cli", "run", DEMO, *overrides]


def _wait_until(process, condition, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        runs = _runs("trial") if experiment_id_of(_uri(), "demo") else None
        if runs is not None and "tags.itstudy.trial_key" in runs and condition(runs):
            return runs
        time.sleep(0.3)
    raise AssertionError("the sweep never reached the point where the test interrupts it")


def test_a_killed_sweep_resumes_with_the_same_command(tmp_path, kill_tree):
    # Three trials, two at a time: a short one finishes while a long one is part-way (it has
    # written a checkpoint) and the third waits. The driver is then killed without warning.
    overrides = [*TINY, "grid={train.max_steps: [10, 60, 20]}", "train.eval_every_steps=10", "resources.max_concurrent_trials=2"]
    study = load_study(REPO / DEMO, overrides)
    short, long, waiting = (trial.key for trial in expand_grid(study))
    long_trial_dirs = f"{sweep_name(study)}-run*/{long}"  # Tune state is named after the sweep and its parent run

    with open(tmp_path / "first.log", "w") as out:
        first = subprocess.Popen(_sweep_command(overrides), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    def short_done_long_checkpointed(runs) -> bool:
        done = set(runs[runs["status"] == "FINISHED"]["tags.itstudy.trial_key"])
        return short in done and any((itstudy_home() / "ray_results").glob(f"{long_trial_dirs}/checkpoint_*"))

    try:
        before = _wait_until(first, short_done_long_checkpointed)
        time.sleep(1.0)  # the driver records the checkpoint in Tune's experiment state
    finally:
        kill_tree(first)
    assert set(_runs("sweep")["status"]) == {"RUNNING"}, "a SIGKILLed driver cannot close its runs"
    short_ended_at = before[before["tags.itstudy.trial_key"] == short]["end_time"].iloc[0]

    second = subprocess.run(_sweep_command(overrides), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming" in second.stdout

    runs = _runs()
    trials = runs[runs["tags.itstudy.kind"] == "trial"].set_index("tags.itstudy.trial_key")
    # Exactly one MLflow run per trial, all finished, none left RUNNING anywhere.
    assert sorted(trials.index) == sorted([short, long, waiting])
    assert set(runs["status"]) == {"FINISHED"}
    assert len(runs[runs["tags.itstudy.kind"] == "sweep"]) == 1
    # The trial finished before the kill was not run again: its run was not touched.
    assert trials.loc[short, "end_time"] == short_ended_at
    # The interrupted trial continued from its last checkpoint (step 10 or later), not from step 0.
    assert int(trials.loc[long, "tags.itstudy.resumed_from_step"]) >= 10, second.stdout[-3000:]
    assert trials["metrics.exact_match"].notna().all()
