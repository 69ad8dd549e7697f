"""`ray job submit --working-dir .` against a real local cluster started by cluster/local-up.sh.

The cluster is this test's own: a Ray head on free ports with its own temp folder and an MLflow
server on SQLite; cluster/local-down.sh stops exactly these processes (never `ray stop`, which
would stop every Ray on the machine). The study is the shipped demo, shrunk by overrides.

The cluster runs on a Python that has every dependency but not itstudy itself (as a cloud node or
an image whose package install is older than the submitted code), so the job can import the
package only from the uploaded working directory: a module that cluster/runtime_env.yaml leaves
out fails the job.

A resubmitted study meets the Ray state its earlier submissions left in ITSTUDY_HOME, which
outlives the cluster and its store: the last test checks that state from another store is not
taken for this store's results.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from itstudy.config import load_study
from itstudy.paths import itstudy_home
from itstudy.sweep import run_sweep
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


def _python_without_itstudy(folder: Path) -> Path:
    """A virtual environment that sees this one's dependencies but not its (editable) itstudy; its bin folder.

    A `.pth` line adds the dependencies' folder to sys.path without processing the `.pth` files
    inside it, so the editable install's import hook stays behind.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site_packages = Path(sysconfig.get_paths(vars={"base": str(folder), "platbase": str(folder)})["purelib"])
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for tool in ("ray", "mlflow"):  # the console scripts, run by this environment's python
        script = folder / "bin" / tool
        script.write_text(f"#!{folder}/bin/python\n" + (Path(sys.executable).parent / tool).read_text().split("\n", 1)[1])
        script.chmod(0o755)
    return folder / "bin"


@pytest.fixture
def local_cluster(tmp_path, free_ports):
    """cluster/local-up.sh on free ports; yields the environment its env.sh exports; local-down.sh after."""
    ray_port, dashboard, mlflow, *services = free_ports(3 + len(RAY_SERVICES))
    bin_folder = _python_without_itstudy(tmp_path / "venv")
    inherited = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {
        **inherited,
        "ITSTUDY_BIN": str(bin_folder),
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
    return subprocess.run([f"{env['ITSTUDY_BIN']}/ray", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_study_submitted_as_a_ray_job_lands_in_mlflow(local_cluster, tmp_path):
    env = local_cluster
    uri = env["MLFLOW_TRACKING_URI"]
    # The job's driver learns the URI (this test's server is on a free port) from the cluster:
    # local-up.sh starts Ray with it, and the driver hands it to every worker.
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    job_env = [f"{name}={env[name]}" for name in ("ITSTUDY_HOME", "ITSTUDY_CACHE", "HF_HUB_OFFLINE")]
    job_env += [f"ITSTUDY_GIT_COMMIT={commit}"]
    run = ["env", *job_env, "python", "-m", "itstudy.cli", "run", "experiments/demo.yaml", *OVERRIDES]
    where = "python -c 'import itstudy; print(\"itstudy imported from\", itstudy.__file__)'"
    entrypoint = ["sh", "-c", f"{where} && exec {shlex.join(run)}"]
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
    imported_from = re.search(r"itstudy imported from (\S+)", logs).group(1)
    assert "runtime_resources" in imported_from and str(REPO) not in imported_from  # the uploaded copy

    study = load_study(REPO / "experiments/demo.yaml", OVERRIDES)
    trials = expand_grid(study)
    runs = load_runs(uri, "demo")
    assert set(runs["status"]) == {"FINISHED"}  # nothing left RUNNING
    parent = runs[runs["tags.itstudy.kind"] == "sweep"]
    assert list(parent["tags.itstudy.sweep"]) == [sweep_name(study)]
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
        # Every run, trained, untuned or model-free, carries its headline and format metrics (NaN fails both).
        assert 0 <= child["metrics.exact_match"] <= 100 and 0 <= child["metrics.label_space_rate"] <= 100
        assert {"predictions.jsonl", "task_metrics.csv"} <= set(list_artifacts(uri, child["run_id"]))
    trained = children[children["tags.itstudy.kind"] == "trial"]
    assert trained["metrics.train_loss"].notna().all()
    assert sorted(trained["params.run.world_size"]) == ["1", "2"]  # logged by rank 0 of each run
    assert trained["tags.itstudy.checkpoint"].notna().all()  # MLflow points at the Ray checkpoint


def test_a_study_resubmitted_against_a_fresh_store_trains_and_records_every_trial_there(monkeypatch):
    overrides = [*OVERRIDES[1:5], "grid={seed: [1, 2]}", "baselines=[random]"]
    study = load_study(REPO / "experiments/demo.yaml", overrides)
    run_sweep(study)  # into the default store; Ray's state stays behind in ITSTUDY_HOME
    fresh = f"sqlite:///{itstudy_home() / 'fresh.db'}"  # a new cluster's empty store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh)

    second = run_sweep(study)

    assert [outcome.status for outcome in second.outcomes] == ["FINISHED", "FINISHED"]
    runs = load_runs(fresh, "demo")
    trained = runs[runs["tags.itstudy.kind"] == "trial"]
    assert sorted(trained["tags.itstudy.trial_key"]) == sorted(trial.key for trial in expand_grid(study))
    assert set(trained["status"]) == {"FINISHED"} and trained["metrics.train_loss"].notna().all()
    assert trained["metrics.exact_match"].notna().all()
