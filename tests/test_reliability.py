"""Nothing lost, nothing doubled: the metric record, crash-safe checkpoints, one sweep at a time.

Fast tests drive the record (`itstudy.tracking.journal`) and the plain training loop against a
real SQLite store. The `ray` tests run `itstudy run` as real processes on the shrunk demo study,
kill them (SIGKILL, no warning), corrupt a checkpoint, start a study twice, and compare every
run's metric history with a clean run of the same study: 0 points lost, 0 (key, step) pairs
logged twice, 0 runs left RUNNING.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from itstudy.ui import wait_until_ready

from itstudy.config import load_study
from itstudy.sweep.trials import expand_grid, sweep_name
from itstudy.tracking import MetricJournal, RunLogger, check_tracking, create_run, ensure_experiment, replay
from itstudy.training.checkpoints import CHECKPOINT_PREFIX, MANIFEST, TRAINER_STATE
from itstudy.training.loop import InjectedFault, WorkerJob, run_worker
from itstudy.training.prepare import prepare_run
from itstudy.training.reporter import PlainReporter

REPO = Path(__file__).resolve().parents[1]
TRAIN_TINY = REPO / "experiments" / "train_tiny.yaml"


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    check_tracking(uri)
    return uri


def _new_run(uri: str, name: str) -> str:
    return create_run(uri, ensure_experiment(uri, name), name, tags={})


def _history(uri: str, run_id: str) -> collections.Counter:
    """How many values MLflow holds per (key, step) of a run (system metrics aside: they are time samples)."""
    client = MlflowClient(tracking_uri=uri)
    keys = [key for key in client.get_run(run_id).data.metrics if not key.startswith("system/")]
    return collections.Counter((m.key, m.step) for key in keys for m in client.get_metric_history(run_id, key))


def _points(steps, keys=("train_loss", "learning_rate")) -> list[Metric]:
    return [Metric(key, float(step), 1000 + step, step) for step in steps for key in keys]


# --- the record ---------------------------------------------------------------------------------


def test_replay_sends_each_key_and_step_once_however_often_it_runs(sqlite_uri, tmp_path):
    run_id = _new_run(sqlite_uri, "replay")
    journal = MetricJournal(tmp_path / f"{run_id}.jsonl")
    journal.append(_points([10, 20]))
    journal.append(_points([20, 30]))  # a resumed attempt re-measured step 20

    assert replay(journal, sqlite_uri).points == 6
    journal.append(_points([40]))
    assert replay(journal, sqlite_uri).points == 2
    (tmp_path / f"{run_id}.jsonl.synced").unlink()  # forget the marker: MLflow itself says what it holds
    assert replay(journal, sqlite_uri).points == 0

    history = _history(sqlite_uri, run_id)
    assert set(history) == {(key, step) for key in ("train_loss", "learning_rate") for step in (10, 20, 30, 40)}
    assert set(history.values()) == {1}


def test_a_line_cut_short_by_a_crash_is_skipped_and_later_lines_still_read(tmp_path):
    journal = MetricJournal(tmp_path / "run.jsonl")
    journal.append(_points([10]))
    with open(journal.path, "a") as record:
        record.write('{"key": "train_loss", "val')  # the process died mid-write
    journal.append(_points([20]))

    assert [(point.key, point.step) for point in journal.read()] == [
        ("train_loss", 10),
        ("learning_rate", 10),
        ("train_loss", 20),
        ("learning_rate", 20),
    ]
    assert journal.latest() == {"train_loss": 20.0, "learning_rate": 20.0}


def test_an_outage_keeps_every_point_on_disk_and_sync_sends_them_once(sqlite_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would wait minutes on the dead store
    run_id = _new_run(sqlite_uri, "outage")
    journal = MetricJournal(tmp_path / f"{run_id}.jsonl")
    dead = "http://127.0.0.1:9"  # nothing listens: every write fails
    logger = RunLogger(dead, run_id, journal=journal, attempts=1, backoff_s=0)
    logger.log_metrics({"train_loss": 1.5}, step=10)
    logger.log_metrics({"train_loss": 1.2, "exact_match": 40.0}, step=20)
    assert not logger.flush(), "the store is down"

    assert len(journal.read()) == 3, "every point reached the record before MLflow was tried"
    # The resumed trial logs through a live store: steps MLflow already holds are not sent again.
    replay(journal, sqlite_uri)
    resumed = RunLogger(sqlite_uri, run_id, journal=journal)
    resumed.log_metrics({"train_loss": 1.25, "exact_match": 41.0}, step=20)
    resumed.log_metrics({"train_loss": 1.0}, step=30)
    assert resumed.flush()

    history = _history(sqlite_uri, run_id)
    assert history == {("train_loss", 10): 1, ("train_loss", 20): 1, ("exact_match", 20): 1, ("train_loss", 30): 1}
    values = MlflowClient(tracking_uri=sqlite_uri).get_metric_history(run_id, "train_loss")
    assert [m.value for m in sorted(values, key=lambda m: m.step)] == [1.5, 1.2, 1.0], "the first recorded value wins"


def test_artifacts_an_outage_kept_from_mlflow_are_kept_beside_the_record_and_uploaded_once(sqlite_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run_id = _new_run(sqlite_uri, "outage-artifacts")
    journal = MetricJournal(tmp_path / f"{run_id}.jsonl")
    down = RunLogger("http://127.0.0.1:9", run_id, journal=journal, attempts=1, backoff_s=0)
    records = [{"task": "task1", "prediction": "yes", "target": "yes"}]
    down.log_predictions(records, [{"task": "task1", "exact_match": 100.0}], {"exact_match": 100.0}, step=60)
    assert {path.name for path in journal.kept_artifacts()} == {"predictions.jsonl", "task_metrics.csv"}

    # One of them reached MLflow before the replay failed: it is not uploaded twice.
    MlflowClient(tracking_uri=sqlite_uri).log_text(run_id, "already there\n", "task_metrics.csv")
    assert replay(journal, sqlite_uri) == (1, 1)
    assert replay(journal, sqlite_uri) == (0, 0) and not journal.kept_artifacts()

    client = MlflowClient(tracking_uri=sqlite_uri)
    assert {info.path for info in client.list_artifacts(run_id)} == {"predictions.jsonl", "task_metrics.csv"}
    uploaded = Path(client.download_artifacts(run_id, "predictions.jsonl", str(tmp_path / "down")))
    assert uploaded.read_text() == '{"task": "task1", "prediction": "yes", "target": "yes"}\n'


def test_a_full_disk_is_recognised_under_any_wrapping_and_named_in_one_line(tmp_path):
    import errno

    from mlflow.exceptions import MlflowException

    from itstudy.tracking import DiskFull, disk_full_named

    for raised in (OSError(errno.ENOSPC, "No space left on device"), MlflowException("(sqlite3.OperationalError) database or disk is full")):
        with pytest.raises(DiskFull) as caught:
            with disk_full_named(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "missing"):
                try:
                    raise raised
                except Exception as error:
                    raise RuntimeError("a checkpoint could not be written") from error
        assert str(caught.value).startswith(f"no space left on the disk of {tmp_path} (")
        assert "\n" not in str(caught.value)
    with pytest.raises(OSError, match="Permission denied"), disk_full_named("sqlite:///x.db"):
        raise OSError(errno.EACCES, "Permission denied")


# --- the lease of a server store -----------------------------------------------------------------


def test_a_live_lease_refuses_a_second_holder_and_a_stale_one_is_taken_over(sqlite_uri):
    from itstudy.sweep.lock import HEARTBEAT_TAG, HOLDER_TAG, StudyLocked, _lease

    run_id = _new_run(sqlite_uri, "lease")
    with _lease(sqlite_uri, run_id, "demo-1234"):
        with pytest.raises(StudyLocked, match=r"sweep demo-1234 is already running \(pid \d+ on "):
            with _lease(sqlite_uri, run_id, "demo-1234"):
                pass
    assert MlflowClient(tracking_uri=sqlite_uri).get_run(run_id).data.tags[HOLDER_TAG] == "", "released at the end"

    # A holder SIGKILLed ten minutes ago: its heartbeat is stale, the lease is taken over.
    RunLogger(sqlite_uri, run_id).set_tags({HOLDER_TAG: "pid 1 on elsewhere", HEARTBEAT_TAG: time.time() - 600})
    with _lease(sqlite_uri, run_id, "demo-1234"):
        assert MlflowClient(tracking_uri=sqlite_uri).get_run(run_id).data.tags[HOLDER_TAG].startswith(f"pid {os.getpid()} ")


# --- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    overrides = ["resources.workers_per_trial=1", "train.per_device_batch_size=4", "train.max_steps=30"]
    overrides += ["train.eval_every_steps=10", f"data.cache_dir={tmp_path_factory.mktemp('cache')}"]
    study = load_study(TRAIN_TINY, overrides)
    tokenizer, data = prepare_run(study)
    return study, tokenizer, data


def test_checkpoints_carry_the_metric_record_and_a_manifest_written_last(prepared, sqlite_uri, tmp_path):
    study, tokenizer, data = prepared
    run_id = _new_run(sqlite_uri, "sealed")
    journal = tmp_path / f"{run_id}.jsonl"
    reporter = PlainReporter(tmp_path / "checkpoints", keep=2)
    run_worker(WorkerJob(study, data, tokenizer, run_id, sqlite_uri, str(journal)), reporter)

    older, newest = reporter.checkpoints()
    assert [path.name for path in (older, newest)] == [f"{CHECKPOINT_PREFIX}00000020", f"{CHECKPOINT_PREFIX}00000030"]
    recorded = MetricJournal(older / "metrics.jsonl").read()
    assert max(point.step for point in recorded) == 20, "the record up to the checkpoint's step travels with it"
    assert (newest / MANIFEST).is_file() and not list(reporter.checkpoint_root.glob(".partial-*"))
    assert set(_history(sqlite_uri, run_id).values()) == {1}


def test_a_truncated_latest_checkpoint_is_named_and_the_previous_one_resumed(prepared, tmp_path, caplog):
    study, tokenizer, data = prepared
    uninterrupted = run_worker(WorkerJob(study, data, tokenizer), PlainReporter(tmp_path / "a"))
    failing = study.model_copy(update={"train": study.train.model_copy(update={"fail_at_step": 21})})
    first = PlainReporter(tmp_path / "b", keep=2)
    with pytest.raises(InjectedFault):  # after the checkpoints at steps 10 and 20
        run_worker(WorkerJob(failing, data, tokenizer), first)
    latest = first.checkpoints()[-1]
    state = latest / TRAINER_STATE
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a disk filled up mid-write

    resumed = PlainReporter(tmp_path / "b", keep=2)
    with caplog.at_level(logging.WARNING):
        metrics = run_worker(WorkerJob(study, data, tokenizer), resumed)

    assert f"checkpoint {latest} is unusable ({TRAINER_STATE} is" in caplog.text
    assert [report["step"] for report in resumed.history] == [20, 30], "resumed from step 10, not from scratch"
    assert metrics["exact_match"] == uninterrupted["exact_match"]
    assert metrics["train_loss"] == pytest.approx(uninterrupted["train_loss"])


# --- storage and tracking faults: one line, naming the file or URI, and nothing touched ----------


def _store_with_runs(home: Path, runs: int = 20) -> str:
    """An SQLite store in `home` holding experiment demo with `runs` FINISHED runs."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    home.mkdir(parents=True, exist_ok=True)
    check_tracking(uri)
    experiment_id = ensure_experiment(uri, "demo")
    for index in range(runs):
        RunLogger(uri, create_run(uri, experiment_id, f"run-{index}", tags={})).end("FINISHED")
    return uri


def _statuses(uri: str) -> dict[str, str]:
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("demo")
    return {run.info.run_name: run.info.status for run in client.search_runs([experiment.experiment_id], max_results=1000)}


def _read_only(home: Path) -> list[str]:
    """A command prefix under which `home` is read-only: a read-only bind mount for root (whom file
    modes do not stop), else the folder's write bits taken away (restored by the caller)."""
    if os.geteuid() != 0:
        home.chmod(0o555)
        return []
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"root without a mount namespace (unshare: {probe.stderr.decode().strip()}): cannot make a folder read-only")
    return ["unshare", "-m", "sh", "-c", f'mount --bind "{home}" "{home}" && mount -o remount,bind,ro "{home}" && exec "$0" "$@"']


def _cli(*args: str) -> tuple[int, str]:
    from itstudy.cli import main

    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


def test_a_read_only_store_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    home = tmp_path / "home"
    uri = _store_with_runs(home, runs=1)
    before = _statuses(uri)
    prefix = _read_only(home)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "itstudy.cli", "run", DEMO, *STUDY, f"tracking.storage_path={tmp_path / 'storage'}"],
            cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=300,
        )
    finally:
        home.chmod(0o755)
    errors = [line for line in done.stderr.splitlines() if line.startswith("itstudy:") or "Traceback" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0] == f"itstudy: tracking store {home / 'mlflow.db'}: {home} is read-only for this user; make it writable, " \
        "or move the study to a writable folder ($ITSTUDY_HOME, or tracking.tracking_uri=sqlite:////PATH/mlflow.db)"
    assert _statuses(uri) == before and not (tmp_path / "storage").exists()


def test_a_truncated_store_is_named_by_report_and_run(tmp_path, monkeypatch):
    home = tmp_path / "home"
    _store_with_runs(home)
    database = home / "mlflow.db"
    database.write_bytes(database.read_bytes()[: database.stat().st_size // 2])
    monkeypatch.setenv("ITSTUDY_HOME", str(home))
    for command in (["report", DEMO], ["sync", DEMO]):
        code, printed = _cli(*command)
        assert code == 2 and printed.startswith(f"itstudy: tracking store {database} is damaged (database disk image is malformed)")
        assert len(printed.strip().splitlines()) == 1


def test_a_missing_store_is_named_and_not_created_by_report_or_ui(isolated_home):
    code, printed = _cli("report", DEMO)
    assert code == 2 and printed == (
        f"itstudy: no MLflow experiment named 'demo' at sqlite:///{isolated_home / 'mlflow.db'}; run the study first (itstudy run FILE)\n"
    )
    code, printed = _cli("ui", DEMO)
    assert code == 2 and printed.startswith(f"itstudy: tracking store {isolated_home / 'mlflow.db'} does not exist: run the study first")
    assert not (isolated_home / "mlflow.db").exists()


def test_a_dead_tracking_server_is_named_within_seconds_by_run_sync_report_and_ui(monkeypatch, free_ports):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    for command in (["run", DEMO], ["sync", DEMO], ["report", DEMO], ["ui", DEMO]):
        started = time.monotonic()
        code, printed = _cli(*command)
        assert code == 2 and printed.strip() == (
            f"itstudy: tracking URI '{dead}': no MLflow server answers (ConnectionError); "
            f"start one with `mlflow server --host ... --port ...` or fix tracking.tracking_uri"
        ), command
        assert time.monotonic() - started < 15, command


def test_a_port_that_is_not_one_is_refused_in_one_line():
    code, printed = _cli("ui", "--port", "70000")
    assert code == 2 and printed == "itstudy: --port 70000: a TCP port is a number from 1 to 65535\n"


# --- the resume digest covers what the run read ----------------------------------------------------


def test_a_changed_tokenizer_or_task_file_names_a_new_sweep_and_train_run(superni_dir, t5_tokenizer_dir, tmp_path, monkeypatch):
    import json
    import shutil

    from itstudy.training.runner import run_name

    tokenizer, data = tmp_path / "t5", tmp_path / "superni"
    shutil.copytree(t5_tokenizer_dir, tokenizer)
    shutil.copytree(superni_dir, data)
    monkeypatch.setenv("ITSTUDY_T5_TOKENIZER", str(tokenizer))
    monkeypatch.setenv("ITSTUDY_SUPERNI_DIR", str(data))
    overrides = ["data.source=superni", "model.tokenizer=t5", "data.num_train_tasks=2"]
    names = lambda: (sweep_name(load_study(TRAIN_TINY, overrides)), run_name(load_study(TRAIN_TINY, overrides)))  # noqa: E731
    first = names()
    assert names() == first, "same config and files: the rerun resumes"

    (tokenizer / "spiece.model").write_bytes((tokenizer / "spiece.model").read_bytes()[:-1] + b"x")  # the vocabulary fixed (or broken)
    second = names()
    assert second[0] != first[0] and second[1] != first[1]

    listed = (data / "splits" / "default" / "test_tasks.txt").read_text().split()
    task_file = next(data / "tasks" / f"{name}.json" for name in listed if (data / "tasks" / f"{name}.json").is_file())
    task = json.loads(task_file.read_text())
    task["Definition"] = [task["Definition"][0] + " (corrected)"]
    task_file.write_text(json.dumps(task))
    third = names()
    assert third[0] not in (first[0], second[0]) and third[1] not in (first[1], second[1])



def test_the_resume_digest_reads_a_study_with_path_settings(tmp_path):
    # data.cache_dir and data.superni_dir are paths: the digest must read them back (a study file that sets one).
    study = load_study(TRAIN_TINY, [f"data.cache_dir={tmp_path / 'cache'}"])
    assert sweep_name(study) == sweep_name(load_study(TRAIN_TINY, [f"data.cache_dir={tmp_path / 'cache'}"]))

# --- real processes: the shrunk demo study ----------------------------------------------------

DEMO = "experiments/demo.yaml"
STUDY = [
    "data.instances_per_task=20",
    "data.test_instances_per_task=8",
    "eval.batch_size=64",
    "baselines=[random]",
    "grid={seed: [1]}",
    "train.max_steps=60",
    "train.eval_every_steps=10",
    "train.log_every_steps=5",
    "train.checkpoints_to_keep=2",
]


def _env(home: Path, uri: str | None = None) -> dict[str, str]:
    """The study's store: `uri` (through the environment: an override would change run names), else
    the SQLite file in `home`."""
    env = {**os.environ, "ITSTUDY_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def _start(home: Path, log: Path, uri: str | None = None) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "itstudy.cli", "run", DEMO, *STUDY],
            cwd=REPO,
            env=_env(home, uri),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _finish(process: subprocess.Popen, log: Path, timeout_s: float = 300) -> str:
    process.wait(timeout=timeout_s)
    return log.read_text()


def _study_runs(home: Path, uri: str | None = None) -> dict[str, tuple[str, collections.Counter]]:
    """Every child run of the study (trials, baselines): its name -> (status, values per (key, step)).

    The parent run is left out: its progress metrics count the events of each invocation."""
    uri = uri or f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("demo")
    runs = {}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        if "mlflow.parentRunId" in run.data.tags:
            runs[run.info.run_name] = (run.info.status, _history(uri, run.info.run_id))
    return runs


def _assert_same_as(reference: dict, runs: dict) -> None:
    """Same runs, each FINISHED, each (key, step) once, the same pairs as the clean run's."""
    assert sorted(runs) == sorted(reference)
    for name, (status, history) in runs.items():
        assert status == "FINISHED", f"{name} is {status}"
        doubled = [pair for pair, n in history.items() if n > 1]
        assert not doubled, f"{name}: logged twice: {doubled[:5]}"
        lost = set(reference[name][1]) - set(history)
        assert not lost, f"{name}: lost {len(lost)} points, e.g. {sorted(lost)[:5]}"
        assert set(history) == set(reference[name][1])


@pytest.fixture(scope="module")
def clean_reference(tmp_path_factory):
    """The study started twice at once on a fresh store: one runs it, the other is refused; the
    finished one is the clean reference the fault tests compare with."""
    home = tmp_path_factory.mktemp("clean")
    first = _start(home, home.parent / "clean-1.log")
    second = _start(home, home.parent / "clean-2.log")
    logs = [_finish(first, home.parent / "clean-1.log"), _finish(second, home.parent / "clean-2.log")]
    return home, [first.returncode, second.returncode], logs, _study_runs(home)


@pytest.mark.ray
def test_a_study_started_twice_at_once_runs_once_and_the_other_is_refused_in_one_line(clean_reference):
    home, codes, logs, runs = clean_reference
    assert sorted(codes) == [0, 2], logs
    refused = logs[codes.index(2)]
    assert "is already running (pid" in refused and "Traceback" not in refused, refused[-2000:]
    assert len(refused.strip().splitlines()) <= 3, refused
    (trial,) = [history for status, history in runs.values() if ("train_loss", 5) in history]
    assert set(trial.values()) == {1}, "no step trained twice into the run"
    assert ("exact_match", 60) in trial and ("train_loss", 60) in trial


def _sealed_checkpoints(home: Path, study, trial) -> list[Path]:
    """The trial's whole checkpoints (manifest written), oldest first; the Tune state folder is
    named after the sweep and its parent run in this store."""
    pattern = f"{sweep_name(study)}-run*/{trial.key}/{CHECKPOINT_PREFIX}*/{MANIFEST}"
    return sorted(manifest.parent for manifest in (home / "ray_results").glob(pattern))


@pytest.mark.ray
def test_a_killed_driver_and_a_corrupt_latest_checkpoint_lose_and_double_nothing(clean_reference, tmp_path, kill_tree):
    reference = clean_reference[3]
    home = tmp_path / "home"
    study = load_study(REPO / DEMO, STUDY)
    (trial,) = expand_grid(study)
    first = _start(home, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 240
        while len(_sealed_checkpoints(home, study, trial)) < 2:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no second checkpoint"
            time.sleep(0.2)
        time.sleep(1.0)  # Tune records the checkpoint in its experiment state
    finally:
        kill_tree(first)
    # Every checkpoint is cut short, whichever of them Tune recorded last before the kill: the trial
    # names the one it was given and starts over (the fast test covers falling back to an older one).
    corrupted = sorted(path.parent for path in (home / "ray_results").glob(f"{sweep_name(study)}-run*/{trial.key}/{CHECKPOINT_PREFIX}*/{TRAINER_STATE}"))
    for checkpoint in corrupted:
        state = checkpoint / TRAINER_STATE
        state.write_bytes(state.read_bytes()[:1000])

    second = _start(home, tmp_path / "second.log")
    output = _finish(second, tmp_path / "second.log")

    assert second.returncode == 0, output[-3000:]
    assert any(f"checkpoint {checkpoint} is unusable" in output for checkpoint in corrupted), output[-3000:]
    _assert_same_as(reference, _study_runs(home))


def _wait_for(condition, process: subprocess.Popen, log: Path, what: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the sweep ended before {what}: " + log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.2)


def _mlflow_server(folder: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    command += ["--serve-artifacts", "--artifacts-destination", (folder / "artifacts").as_uri()]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "a") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
    wait_until_ready(f"http://127.0.0.1:{port}", server, timeout_s=60)
    return server


@pytest.mark.ray
def test_a_tracking_server_killed_while_the_trial_ends_loses_and_doubles_nothing(clean_reference, tmp_path, free_ports, kill_tree):
    reference = clean_reference[3]
    (port,) = free_ports(1)
    uri = f"http://127.0.0.1:{port}"
    home, server_log = tmp_path / "home", tmp_path / "server.log"
    server = _mlflow_server(tmp_path, port, server_log)
    study = load_study(REPO / DEMO, STUDY)
    records = f"{sweep_name(study)}-run*-journal/*.jsonl"  # keyed by the sweep's parent run in this store
    sweep = _start(home, tmp_path / "sweep.log", uri)
    try:
        def trial_checkpointed() -> bool:
            return any((home / "ray_results").glob(records)) and any(
                point.key == "exact_match" for path in (home / "ray_results").glob(records) for point in MetricJournal(path).read()
            )

        _wait_for(trial_checkpointed, sweep, tmp_path / "sweep.log", "the first evaluation")
        os.killpg(server.pid, signal.SIGKILL)  # down from step 10 until after the trial's end
        server.wait()

        def trial_ended() -> bool:
            points = (point for path in (home / "ray_results").glob(records) for point in MetricJournal(path).read())
            return any((point.key, point.step) == ("exact_match", 60) for point in points)

        _wait_for(trial_ended, sweep, tmp_path / "sweep.log", "the trial's last evaluation")
        # The trial gives up sending (longer than its retries) and leaves the rest in its record.
        def gave_up() -> bool:
            return "for `itstudy sync`" in (tmp_path / "sweep.log").read_text()

        _wait_for(gave_up, sweep, tmp_path / "sweep.log", "the trial giving up on MLflow")
        server = _mlflow_server(tmp_path, port, server_log)
        output = _finish(sweep, tmp_path / "sweep.log", timeout_s=400)
        assert sweep.returncode == 0, output[-3000:]
        assert "recorded metric values and" in output, "the driver sent what the trial could not"

        synced = subprocess.run(
            [sys.executable, "-m", "itstudy.cli", "sync", DEMO, *STUDY],
            cwd=REPO,
            env=_env(home, uri),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert synced.returncode == 0 and "every recorded metric of demo is in MLflow" in synced.stdout, synced
        _assert_same_as(reference, _study_runs(home, uri))
        # The evaluations' artifacts the trial could not send were kept beside its record and uploaded.
        client = MlflowClient(tracking_uri=uri)
        experiment_id = client.get_experiment_by_name("demo").experiment_id
        (trial_run,) = client.search_runs([experiment_id], "tags.`itstudy.kind` = 'trial'")
        assert {"predictions.jsonl", "task_metrics.csv"} <= {info.path for info in client.list_artifacts(trial_run.info.run_id)}
    finally:
        if sweep.poll() is None:
            kill_tree(sweep)
        os.killpg(server.pid, signal.SIGKILL)


def _trial_worker(driver: subprocess.Popen) -> psutil.Process | None:
    """The Ray worker process running the Tune trial (titled `ray::ImplicitFunc...` or after the trainable)."""
    for child in psutil.Process(driver.pid).children(recursive=True):
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::") and ("ImplicitFunc" in title or "run_trial" in title):
            return child
    return None


@pytest.mark.ray
def test_a_training_worker_killed_after_a_checkpoint_resumes_losing_and_doubling_nothing(clean_reference, tmp_path, kill_tree):
    reference = clean_reference[3]
    home = tmp_path / "home"
    study = load_study(REPO / DEMO, STUDY)
    (trial,) = expand_grid(study)
    sweep = _start(home, tmp_path / "sweep.log")
    try:
        _wait_for(
            lambda: len(_sealed_checkpoints(home, study, trial)) >= 2,
            sweep,
            tmp_path / "sweep.log",
            "a second checkpoint",
        )
        worker = _trial_worker(sweep)
        assert worker is not None, [" ".join(p.cmdline()) for p in psutil.Process(sweep.pid).children(recursive=True)]
        worker.send_signal(signal.SIGKILL)
        output = _finish(sweep, tmp_path / "sweep.log")
    finally:
        if sweep.poll() is None:
            kill_tree(sweep)

    assert sweep.returncode == 0, output[-3000:]
    _assert_same_as(reference, _study_runs(home))


# Inside a private mount namespace: the study's home on a 7 MB tmpfs (room for the store and one
# checkpoint of the 20-step study, not a second), the study run, its store copied out; then the
# tmpfs grown (space freed) and the same command run again.
FULL_DISK_SCRIPT = """
mount -t tmpfs -o size=7m tmpfs "$ITSTUDY_HOME" || exit 90
"$@" > "$OUT/first.log" 2>&1; echo $? > "$OUT/first.rc"
cp "$ITSTUDY_HOME/mlflow.db" "$OUT/first.db"
mount -o remount,size=256m "$ITSTUDY_HOME"
"$@" > "$OUT/second.log" 2>&1; echo $? > "$OUT/second.rc"
cp "$ITSTUDY_HOME/mlflow.db" "$OUT/second.db"
"""


@pytest.mark.ray
def test_a_disk_that_fills_up_while_a_trial_runs_stops_the_study_in_one_line_and_the_rerun_resumes(tmp_path):
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and a mount namespace to put the study on a small tmpfs")
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir(), out.mkdir()
    command = [sys.executable, "-m", "itstudy.cli", "run", DEMO, *STUDY, "train.max_steps=20"]
    subprocess.run(
        ["unshare", "-m", "sh", "-c", FULL_DISK_SCRIPT, "sh", *command],
        cwd=REPO, env={**_env(home), "OUT": str(out)}, timeout=600, check=True,
    )
    first = (out / "first.log").read_text()
    errors = [line for line in first.splitlines() if line.startswith("itstudy:")]
    assert (out / "first.rc").read_text().strip() == "2", first[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"itstudy: no space left on the disk of {home}"), errors
    assert errors[0].endswith("rerun the same command: the study resumes from its last checkpoints")
    assert "the full disk cut it short" in first and len(first.splitlines()) < 500, f"{len(first.splitlines())} lines"
    statuses = {run: status for run, (status, _) in _study_runs(out, f"sqlite:///{out / 'first.db'}").items()}
    assert "RUNNING" not in statuses.values(), statuses

    second = (out / "second.log").read_text()
    assert (out / "second.rc").read_text().strip() == "0", second[-3000:]
    runs = _study_runs(out, f"sqlite:///{out / 'second.db'}")
    (trial,) = [history for status, history in runs.values() if ("train_loss", 5) in history]
    measured = {("train_loss", step) for step in (5, 10, 15, 20)} | {("exact_match", step) for step in (10, 20)}
    assert measured <= set(trial) and set(trial.values()) == {1}, "nothing lost, nothing logged twice"
    assert {status for status, _ in runs.values()} == {"FINISHED"}
