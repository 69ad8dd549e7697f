"""`ray job submit --working-dir .` against a real local cluster started by cluster/local-up.sh.

The cluster is this test's own: a Ray head on free ports with its own temp folder and an MLflow
server on SQLite; cluster/local-down.sh stops exactly these processes (never `ray stop`, which
would stop every Ray on the machine). The study is the shipped demo, shrunk by overrides.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from itstudy.config import load_study
from itstudy.sweep.trials import expand_grid, sweep_name, untuned_trial
from itstudy.tracking import list_artifacts, load_runs

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
# One single-worker trial (the loop inside the Tune trial) and one two-worker trial (a
# TorchTrainer inside the trial, its driver on the `trial_driver` resource local-up.sh declares).
OVERRIDES = [
    "grid={resources.workers_per_trial: [1, 2], seed: [1]}",
    "train.per_device_batch_size=8",
    "data.instances_per_task=20",
    "data.test_instances_per_task=8",
    "train.max_steps=4",
    "baselines=[random, majority, untuned]",
]
RAY_SERVICES = (
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
    "node-manager-port",
    "object-manager-port",
)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture
def local_cluster(tmp_path):
    """cluster/local-up.sh on free ports; yields the environment its env.sh exports; local-down.sh after."""
    ray_port, dashboard, mlflow, *services = _free_ports(3 + len(RAY_SERVICES))
    env = {
        **os.environ,
        "ITSTUDY_CLUSTER_DIR": str(tmp_path / "cluster"),
        "RAY_PORT": str(ray_port),
        "RAY_DASHBOARD_PORT": str(dashboard),
        "MLFLOW_PORT": str(mlflow),
        "RAY_NUM_CPUS": "2",
        "RAY_EXTRA_START_ARGS": " ".join(f"--{flag}={port}" for flag, port in zip(RAY_SERVICES, services)),
    }
    try:
        up = subprocess.run(["cluster/local-up.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        exported = dict(re.findall(r"export (\w+)=(\S+)", (tmp_path / "cluster" / "env.sh").read_text()))
        yield {**env, **exported}
    finally:
        down = subprocess.run(["cluster/local-down.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr


def _ray(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv/bin/ray"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_study_submitted_as_a_ray_job_lands_in_mlflow(local_cluster, tmp_path):
    env = local_cluster
    uri = env["MLFLOW_TRACKING_URI"]
    # The checked-in runtime env names the server on port 5000; this test's server is on a free
    # port, so the entrypoint sets the URI for the driver, which hands it to every worker.
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    job_env = [f"{name}={env[name]}" for name in ("ITSTUDY_HOME", "ITSTUDY_CACHE", "HF_HUB_OFFLINE")]
    job_env += [f"MLFLOW_TRACKING_URI={uri}", f"ITSTUDY_GIT_COMMIT={commit}"]
    entrypoint = ["env", *job_env, "python", "-m", "itstudy.cli", "run", "experiments/demo.yaml", *OVERRIDES]
    submitted = _ray(
        env, "job", "submit", "--no-wait", "--submission-id", "itstudy-test-job",
        "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--", *entrypoint,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    deadline = time.monotonic() + 300
    outcome = None
    while outcome is None and time.monotonic() < deadline:
        time.sleep(2)
        # `ray job status` ends with "Job '<id>' succeeded" / "failed" / "was stopped" once the job is over.
        found = re.search(r"Job 'itstudy-test-job' (succeeded|failed|was stopped)", _ray(env, "job", "status", "itstudy-test-job").stdout)
        outcome = found and found.group(1)
    logs = _ray(env, "job", "logs", "itstudy-test-job").stdout
    assert outcome == "succeeded", f"job {outcome or 'still running after 300 s'}:\n{logs[-5000:]}"
    assert "Study demo" in logs and "random" in logs  # the comparison table, printed by the job's driver

    study = load_study(REPO / "experiments/demo.yaml", OVERRIDES)
    trials = expand_grid(study)
    runs = load_runs(uri, "demo")
    assert set(runs["status"]) == {"FINISHED"}  # nothing left RUNNING
    parent = runs[runs["tags.itstudy.kind"] == "sweep"]
    assert list(parent["name"]) == [sweep_name(study)]
    parent_id = parent["run_id"].iloc[0]
    assert {"config.yaml", "trials.yaml", "trials.csv", "comparison.txt", "experiment"} <= set(list_artifacts(uri, parent_id))
    assert parent["params.env.git_commit"].iloc[0] == commit  # the code version, though .git stays behind
    children = runs[runs["parent_run_id"] == parent_id]
    assert len(children) == len(runs) - 1
    # One child per trial and per baseline: 2 trials, 1 untuned (the worker count cannot change
    # an untrained model's predictions), random and majority.
    expected = {trial.key for trial in trials} | {untuned_trial(trial).key for trial in trials}
    assert len(expected) == 3 and set(children["tags.itstudy.trial_key"]) >= expected and len(children) == 5
    assert sorted(children[children["tags.itstudy.kind"] == "baseline"]["tags.itstudy.baseline"]) == [
        "majority", "random", "untuned"
    ]
    for _, child in children.iterrows():
        assert child["metrics.exact_match"] >= 0
        assert {"predictions.jsonl", "task_metrics.csv"} <= set(list_artifacts(uri, child["run_id"]))
    trained = children[children["tags.itstudy.kind"] == "trial"]
    assert trained["metrics.train_loss"].notna().all()
    assert sorted(trained["params.run.world_size"]) == ["1", "2"]  # logged by rank 0 of each run
    assert trained["tags.itstudy.checkpoint"].notna().all()  # MLflow points at the Ray checkpoint
