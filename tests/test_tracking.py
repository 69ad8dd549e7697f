"""The tracking layer against real MLflow stores: an SQLite file and a real `mlflow server` over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from itstudy.config import TrackingConfig, study_from_dict
from itstudy.ui import wait_until_ready
from itstudy.metrics import Prediction, aggregate, score_predictions, task_rows
from itstudy.provenance import environment_info
from itstudy.tracking import (
    COMPARISON_VIEW,
    measured_metrics,
    RunLogger,
    TrackingError,
    check_tracking,
    create_run,
    download_artifact,
    ensure_experiment,
    find_run_by_name,
    find_runs,
    get_or_create_run,
    get_run,
    list_artifacts,
    load_runs,
    reopen_run,
    resolve_tracking_uri,
    tracking_env,
)


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating the schema costs about 1.5 s); tests use their own experiments."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    check_tracking(uri)
    return uri


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, free_ports):
    """A real `mlflow server` on loopback that proxies artifacts over HTTP, as a multi-node cluster uses it."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--serve-artifacts", "--artifacts-destination", (folder / "artifacts").as_uri()]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # Its own process group, so that stopping it also stops the web workers it forks, and only those.
    with open(folder / "server.log", "w") as server_log:
        server = subprocess.Popen(command, env=env, stdout=server_log, stderr=server_log, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(uri, server, timeout_s=60)  # its log is in the fixture folder
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _new_run(uri: str, experiment: str) -> str:
    return create_run(uri, ensure_experiment(uri, experiment), "run", tags={})


# --- where results go --------------------------------------------------------------------------


def test_default_uri_is_an_absolute_sqlite_file_in_itstudy_home(isolated_home, monkeypatch, tmp_path):
    uri = resolve_tracking_uri(TrackingConfig())
    assert uri == f"sqlite:///{isolated_home / 'mlflow.db'}"
    assert isolated_home.is_dir()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(TrackingConfig()) == "http://tracking.example:5000"
    # The config beats the environment; a relative SQLite path is pinned to this working directory.
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="sqlite:///runs.db")) == f"sqlite:///{tmp_path / 'runs.db'}"


def test_experiment_is_created_once_with_artifacts_beside_the_database(isolated_home):
    uri = resolve_tracking_uri(TrackingConfig())
    first = ensure_experiment(uri, "study-a")
    assert ensure_experiment(uri, "study-a") == first
    experiment = MlflowClient(uri).get_experiment(first)
    assert experiment.artifact_location == (isolated_home / "artifacts").as_uri()
    # The MLflow 3 UI opens it on the training runs table, and holds the comparison view.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.{COMPARISON_VIEW}"])
    assert "tags.`itstudy.variant`" in view["selectedColumns"] and "metrics.`exact_match`" in view["selectedColumns"]


@pytest.mark.parametrize(
    "uri, reason",
    [
        ("file:///tmp/mlruns", "file stores are refused"),
        ("./mlruns", "file stores are refused"),
        ("sqlite:///relative.db", "relative SQLite path"),
        ("sqlite:////no/such/folder/mlflow.db", "does not exist"),
    ],
)
def test_check_tracking_refuses_stores_a_worker_cannot_share(uri, reason):
    with pytest.raises(TrackingError, match=reason) as error:
        check_tracking(uri)
    assert repr(uri) in str(error.value) and "\n" not in str(error.value)


def test_check_tracking_names_an_unreachable_server(free_ports):
    uri = f"http://127.0.0.1:{free_ports(1)[0]}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match="no MLflow server answers"):
        check_tracking(uri)
    assert time.monotonic() - started < 10, "a dead server must be reported at once, not after MLflow's retries"


def test_a_file_store_in_the_config_is_refused_naming_the_field():
    with pytest.raises(TrackingError, match=r"tracking\.tracking_uri='file:///x'"):
        resolve_tracking_uri(TrackingConfig(tracking_uri="file:///x"))


def test_worker_environment_carries_uri_and_commit_but_no_credentials(sqlite_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    env = tracking_env(sqlite_uri)
    # Credentials reach workers from their node, never through Ray's (logged) runtime environment.
    assert env["MLFLOW_TRACKING_URI"] == sqlite_uri and "MLFLOW_TRACKING_USERNAME" not in env
    driver = environment_info()
    assert driver["git_commit"] != "unknown", "the test runs from the git checkout"

    # A Ray worker runs a working_dir copy of the package without .git: it must still name the
    # driver's commit, and find the store through the environment alone.
    copy = tmp_path / "working_dir"
    shutil.copytree(Path(__file__).resolve().parents[1] / "itstudy", copy / "itstudy")
    worker = (
        "import json, os; from itstudy.provenance import environment_info; from itstudy.tracking import check_tracking; "
        "check_tracking(os.environ['MLFLOW_TRACKING_URI']); print(json.dumps(environment_info()))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ITSTUDY_GIT"))}
    worker_env = {**clean, **env, "PYTHONPATH": str(copy)}
    done = subprocess.run([sys.executable, "-c", worker], cwd=copy, env=worker_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    worker_info = json.loads(done.stdout.strip().splitlines()[-1])
    assert (worker_info["git_commit"], worker_info["git_dirty"]) == (driver["git_commit"], driver["git_dirty"])


# --- writing a run -----------------------------------------------------------------------------


def test_params_are_flattened_truncated_and_written_once(sqlite_uri):
    run_id = _new_run(sqlite_uri, "params")
    long_text = "x" * (MAX_PARAM_VAL_LENGTH + 500)
    logger = RunLogger(sqlite_uri, run_id)
    data = {"source": "superni", "tasks": ["a", "b"], "classification": {"max_labels": 10}}
    logger.log_params({"data": data, "template": long_text, "grid": {}})
    params = get_run(sqlite_uri, run_id).data.params
    assert params["data.source"] == "superni"
    assert params["data.tasks"] == '["a", "b"]'
    assert params["data.classification.max_labels"] == "10"
    assert params["grid"] == "{}"
    assert params["template"] == long_text[:MAX_PARAM_VAL_LENGTH]

    # A resumed run logs its params again from a new process: same values pass, a changed value
    # keeps the first one (MLflow params are immutable) and nothing raises.
    resumed = RunLogger(sqlite_uri, run_id)
    resumed.log_params({"data": {"source": "superni", "tasks": ["a", "b"]}, "template": long_text, "seed": 3})
    resumed.log_params({"data": {"source": "synthetic"}})
    assert resumed.failures == 0
    params = get_run(sqlite_uri, run_id).data.params
    assert params["data.source"] == "superni" and params["seed"] == "3"


def test_config_is_logged_as_yaml_that_loads_back_as_the_same_study(sqlite_uri, tmp_path):
    study = study_from_dict({"name": "demo", "seed": 7, "grid": {"seed": [1, 2]}, "train": {"learning_rate": 1e-4}})
    run_id = _new_run(sqlite_uri, "config")
    logger = RunLogger(sqlite_uri, run_id)
    logger.log_config(study)
    logger.log_environment()
    logger.end()
    run = get_run(sqlite_uri, run_id)
    assert run.data.params["train.learning_rate"] == "0.0001"
    assert run.data.params["env.mlflow"] and run.data.params["env.git_commit"]
    saved = download_artifact(sqlite_uri, run_id, "config.yaml", tmp_path)
    assert study_from_dict(yaml.safe_load(saved.read_text())) == study


def test_metrics_are_sent_in_batches_and_all_arrive_with_their_steps(sqlite_uri):
    run_id = _new_run(sqlite_uri, "metrics")
    logger = RunLogger(sqlite_uri, run_id, flush_every=100)
    batches = []
    send = logger.client.log_batch
    logger.client.log_batch = lambda *args, **kwargs: batches.append(kwargs) or send(*args, **kwargs)
    for step in range(150):
        logger.log_metrics({"train_loss": 1.0 / (step + 1), "learning_rate": 5e-5}, step=step)
    logger.log_metrics({"tokens_per_s": "fast"}, step=150)  # not a number: warned about, never raised
    logger.end("FINISHED")

    metric_batches = [b for b in batches if b.get("metrics")]
    assert len(metric_batches) == 3, "300 values with flush_every=100 should take 3 calls, not 300"
    history = MlflowClient(sqlite_uri).get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(150))
    assert {m.step: m.value for m in history}[9] == pytest.approx(0.1)
    run = get_run(sqlite_uri, run_id)
    assert run.info.status == "FINISHED" and run.data.tags["itstudy.status"] == "FINISHED"


def test_artifacts_predictions_and_dataset_lineage(sqlite_uri, tmp_path):
    run_id = _new_run(sqlite_uri, "artifacts")
    predictions = [
        Prediction("task1_a", "textual_entailment", "task1-0", "yes", ("Yes",), True),
        Prediction("task1_a", "textual_entailment", "task1-1", "yes", ("no",), True),
        Prediction("task2_b", "title_generation", "task2-0", "a short title", ("a title",), False),
    ]
    digest = "0123456789abcdef" * 4  # a sha256: longer than MLflow's 36-character dataset digest
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "pointer.txt").write_text("s3://bucket/ckpt-10\n")
    scored = score_predictions(predictions)
    metrics = aggregate(scored)
    with RunLogger(sqlite_uri, run_id) as logger:
        logger.log_predictions([item.record() for item in scored], task_rows(scored), metrics)
        logger.log_prompts(["Definition: x\n\nOutput: "])
        logger.log_dir(checkpoint, "checkpoint")
        logger.log_dataset(digest, "superni:/data@ae457ac", name="demo-test", n_instances=3)

    assert metrics["exact_match"] == pytest.approx(100 / 3)
    expected = {"predictions.jsonl", "task_metrics.csv", "prompts.txt", "checkpoint"}
    assert set(list_artifacts(sqlite_uri, run_id)) >= expected
    lines = download_artifact(sqlite_uri, run_id, "predictions.jsonl", tmp_path).read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 3 and first["instance_id"] == "task1-0" and first["exact_match"] == 1.0
    table = download_artifact(sqlite_uri, run_id, "task_metrics.csv", tmp_path).read_text()
    assert table.splitlines()[1].startswith("task1_a,textual_entailment,True,2,50.0")
    run = get_run(sqlite_uri, run_id)
    # Per-task figures sit under one prefix (one folded section in the UI), and read back by their measured names.
    assert run.data.metrics["per_task/exact_match_for_task1_a"] == 50.0 and "exact_match_for_task1_a" not in run.data.metrics
    assert measured_metrics(run.data.metrics)["exact_match_for_task1_a"] == 50.0
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == digest[:36]
    source = json.loads(dataset_input.dataset.source)["tags"]
    assert source == {"source": "superni:/data@ae457ac", "digest": digest, "instances": "3"}


def test_a_model_folder_is_logged_and_registered_as_a_version_of_the_study_model(sqlite_uri, tmp_path):
    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "spiece.model").write_bytes(b"vocabulary")
    run_id = _new_run(sqlite_uri, "models")
    RunLogger(sqlite_uri, run_id).log_model(folder, "demo")
    RunLogger(sqlite_uri, _new_run(sqlite_uri, "models")).log_model(folder, "demo")  # a second version

    assert sorted(list_artifacts(sqlite_uri, run_id, "model")) == ["model/config.json", "model/spiece.model"]
    versions = MlflowClient(sqlite_uri).search_model_versions("name = 'demo'")
    assert len(versions) == 2 and run_id in {version.run_id for version in versions}
    assert all(version.source.endswith("/model") for version in versions)


def test_a_failing_block_marks_the_run_failed_with_its_error(sqlite_uri, tmp_path):
    run_id = _new_run(sqlite_uri, "failure")
    with pytest.raises(ZeroDivisionError):
        with RunLogger(sqlite_uri, run_id):
            1 / 0
    assert get_run(sqlite_uri, run_id).info.status == "FAILED"
    assert "ZeroDivisionError" in download_artifact(sqlite_uri, run_id, "error.txt", tmp_path).read_text()


def test_child_runs_are_found_by_parent_and_tags(sqlite_uri):
    experiment_id = ensure_experiment(sqlite_uri, "sweep")
    parent = create_run(sqlite_uri, experiment_id, "sweep-demo", {"itstudy.kind": "sweep"})
    trials = [
        create_run(sqlite_uri, experiment_id, f"trial-{seed}", {"itstudy.kind": "trial", "itstudy.seed": seed}, parent)
        for seed in (1, 2)
    ]
    baseline = create_run(sqlite_uri, experiment_id, "baseline-random", {"itstudy.kind": "baseline"}, parent)
    RunLogger(sqlite_uri, trials[0]).end("FINISHED")

    found = find_runs(sqlite_uri, experiment_id, {"mlflow.parentRunId": parent, "itstudy.kind": "trial"})
    assert {run.info.run_id for run in found} == set(trials)
    finished = find_runs(sqlite_uri, experiment_id, {"itstudy.kind": "trial"}, status="FINISHED")
    assert [run.info.run_id for run in finished] == [trials[0]]
    assert find_run_by_name(sqlite_uri, experiment_id, "trial-2").info.run_id == trials[1]
    assert find_run_by_name(sqlite_uri, experiment_id, "trial-3") is None

    table = load_runs(sqlite_uri, "sweep").set_index("run_id")
    assert table.loc[baseline, "parent_run_id"] == parent and table.loc[baseline, "tags.itstudy.kind"] == "baseline"
    assert table.loc[trials[0], "status"] == "FINISHED" and table.loc[trials[1], "tags.itstudy.seed"] == "2"
    assert len(table) == 4


def test_a_run_is_found_by_its_identity_else_created_and_reopened_to_continue(sqlite_uri):
    experiment_id = ensure_experiment(sqlite_uri, "identity")
    identity = {"itstudy.trial_key": "def-original_n10_s1_abc", "itstudy.kind": "trial"}
    first = get_or_create_run(sqlite_uri, experiment_id, "trial-a", identity, tags={"itstudy.seed": 1})
    assert first.created and first.status == "RUNNING"
    with RunLogger(sqlite_uri, first.run_id) as logger:
        logger.log_metrics({"exact_match": 40.0})

    again = get_or_create_run(sqlite_uri, experiment_id, "trial-a", identity)
    assert (again.run_id, again.created, again.status, again.metrics) == (first.run_id, False, "FINISHED", {"exact_match": 40.0})
    # Only FINISHED runs are reused when asked so: a run of another status means "create a new one".
    reopen_run(sqlite_uri, first.run_id)
    run = get_run(sqlite_uri, first.run_id)
    assert run.info.status == "RUNNING" and run.data.tags["itstudy.status"] == "RUNNING"
    assert run.data.tags["itstudy.seed"] == "1"
    fresh = get_or_create_run(sqlite_uri, experiment_id, "trial-a", identity, reuse_status="FINISHED")
    assert fresh.created and fresh.run_id != first.run_id


# --- a real tracking server ----------------------------------------------------------------------


def test_runs_metrics_and_artifacts_travel_through_a_real_server(mlflow_server, tmp_path):
    check_tracking(mlflow_server)
    experiment_id = ensure_experiment(mlflow_server, "over-http")
    assert ensure_experiment(mlflow_server, "over-http") == experiment_id
    parent = create_run(mlflow_server, experiment_id, "sweep", {"itstudy.kind": "sweep"})
    child = create_run(mlflow_server, experiment_id, "trial", {"itstudy.kind": "trial"}, parent_run_id=parent)
    with RunLogger(mlflow_server, child, flush_every=50) as logger:
        logger.log_params({"train": {"learning_rate": 5e-5}})
        for step in range(120):
            logger.log_metrics({"train_loss": 2.0 - step / 100}, step=step)
        logger.log_text("task,exact_match\ntask1,50.0\n", "task_metrics.csv")

    (found,) = find_runs(mlflow_server, experiment_id, {"mlflow.parentRunId": parent})
    assert found.info.run_id == child and found.info.status == "FINISHED"
    assert found.data.params["train.learning_rate"] == "5e-05"
    history = MlflowClient(mlflow_server).get_metric_history(child, "train_loss")
    assert sorted(m.step for m in history) == list(range(120))
    # Artifacts went through the server (mlflow-artifacts:), not into a local ./mlruns.
    assert found.info.artifact_uri.startswith("mlflow-artifacts:")
    assert not Path("mlruns").exists()
    assert download_artifact(mlflow_server, child, "task_metrics.csv", tmp_path).read_text().endswith("task1,50.0\n")


def test_logging_to_a_dead_server_never_raises(monkeypatch, free_ports):
    # MLflow's own HTTP retries would take minutes; the logger's retries are what is under test.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_ports(1)[0]}"
    logger = RunLogger(uri, "0123456789abcdef", flush_every=5, attempts=2, backoff_s=0.01)
    started = time.monotonic()
    for step in range(12):
        logger.log_metrics({"train_loss": 1.0}, step=step)
    logger.log_params({"seed": 1})
    logger.log_text("x", "predictions.jsonl")
    logger.end("FINISHED")
    assert logger.failures >= 4 and time.monotonic() - started < 30
    assert logger.pending_metrics == 12, "unsent metrics stay buffered for a later flush"


def test_progress_is_a_display_that_an_outage_cannot_slow(sqlite_uri, tmp_path, monkeypatch):
    from itstudy.training.reporter import PROGRESS_TAG, PlainReporter

    experiment_id = ensure_experiment(sqlite_uri, "progress")
    run_id = create_run(sqlite_uri, experiment_id, "trial", {"itstudy.kind": "trial"})
    reporter = PlainReporter(tmp_path / "checkpoints")
    reporter.logger = RunLogger(sqlite_uri, run_id)
    training = {"train_loss": 2.5, "tokens_per_s": 1000.0}
    reporter.show_progress(10, 100, training, 0.1)
    reporter.show_progress(20, 100, training, 0.1)  # within PROGRESS_EVERY_S: not written
    assert get_run(sqlite_uri, run_id).data.tags[PROGRESS_TAG].startswith("step 10/100")

    # The tracking server gone: one write is tried, then none for a while; nothing counts as a lost value.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = PlainReporter(tmp_path / "down")
    down.logger = RunLogger("http://127.0.0.1:9", run_id)
    tries = []
    real_try = down.logger.try_set_tag
    monkeypatch.setattr(down.logger, "try_set_tag", lambda *args: tries.append(args) or real_try(*args))
    for step in range(1, 50):
        down.show_progress(step, 100, training, 0.1)
    assert len(tries) == 1 and down.logger.failures == 0


def test_after_a_write_gave_up_the_next_ones_wait_for_the_pause_not_for_the_retries(monkeypatch, free_ports):
    # A trial in a long outage: the first write waits out its retries; the following ones, within the
    # pause, are not tried (metrics stay buffered), so an evaluation costs no retry budget.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    logger = RunLogger(f"http://127.0.0.1:{free_ports(1)[0]}", "0123456789abcdef", attempts=3, backoff_s=0.2, outage_pause_s=600)
    started = time.monotonic()
    assert not logger.log_text("x", "predictions.jsonl")
    assert time.monotonic() - started >= 0.6, "retried with backoff 0.2 s, then 0.4 s"
    started = time.monotonic()
    for step in range(20):
        logger.log_metrics({"train_loss": 1.0}, step=step)
        assert not logger.flush()
    assert time.monotonic() - started < 0.5 and logger.failures == 21 and logger.pending_metrics == 20
