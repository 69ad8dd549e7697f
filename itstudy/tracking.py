"""The only door to MLflow: one tracking URI, explicit runs, a logger that never breaks training.

What it does:
- resolves the one tracking URI of a study (config, else $MLFLOW_TRACKING_URI, else an SQLite file
  under `itstudy_home()`), creates experiments once with an absolute artifact root, and creates runs
  explicitly by id (children carry `mlflow.parentRunId`), so nothing depends on MLflow's
  thread-local "active run" across processes (ray#19978, mlflow#2194);
- `RunLogger` writes params once (flattened, truncated), metrics in batches, artifacts and dataset
  lineage. A tracking failure is retried, then reported as a warning: it never raises into
  training (mlflow#5269);
- `check_tracking` is the loud counterpart, called at driver and worker start: an unreachable or
  misconfigured store raises there, instead of a worker silently writing to ./mlruns (ray#36257);
- read side for resume and reports: find runs by tags or name, load an experiment as a DataFrame,
  fetch artifacts.

What it refuses: `file:` stores and bare paths (each Ray worker would resolve its own ./mlruns) and
relative SQLite paths (each worker would open a different file).

    uri = resolve_tracking_uri(study.tracking); check_tracking(uri)
    experiment_id = ensure_experiment(uri, study.name)
    run_id = create_run(uri, experiment_id, "trial-...", tags={"itstudy.kind": "trial"}, parent_run_id=parent)
    with RunLogger(uri, run_id) as logger:      # FINISHED on exit; FAILED with error.txt on an exception
        logger.log_config(study)
        logger.log_metrics({"train_loss": 2.3}, step=10)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd
import requests
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from itstudy.config import ConfigError, Study, TrackingConfig, config_digest, itstudy_home, to_plain
from itstudy.metrics import aggregate, task_rows
from itstudy.paths import WORKER_ENV_VARIABLES

log = logging.getLogger(__name__)

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
# Error codes with which a store refuses a request for good (anything else may be transient).
REFUSALS = (
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
    "BAD_REQUEST",
)
# MLflow refuses longer dataset digests; the full digest goes into the dataset's source.
MAX_DATASET_DIGEST_LENGTH = 36
VERSIONED_PACKAGES = ("torch", "transformers", "ray", "mlflow", "datasets")
GIT_COMMIT_ENV = "ITSTUDY_GIT_COMMIT"
GIT_DIRTY_ENV = "ITSTUDY_GIT_DIRTY"
# MLflow's HTTP client retries 7 times with backoff 2 by default (about 4 minutes per call, sized for
# rate-limited hosted services); a training worker would stall that long on every flush against a
# dead server. Workers get a short budget instead; RunLogger buffers what still fails.
WORKER_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# Variables that carry credentials or TLS settings for a tracking server; forwarded when the driver has them.
FORWARDED_MLFLOW_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
)


class TrackingError(ConfigError):
    """The tracking store cannot be used; the message names the URI, the reason and the fix."""


# --- where results go --------------------------------------------------------------------------


def resolve_tracking_uri(tracking: TrackingConfig) -> str:
    """tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///<itstudy_home()>/mlflow.db.

    A relative SQLite path is made absolute against this process's working directory, so the
    URI pushed to Ray workers names the same file the driver uses.
    """
    if tracking.tracking_uri:
        uri, origin = tracking.tracking_uri, "tracking.tracking_uri"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri, origin = os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI"
    else:
        home = itstudy_home()
        home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'mlflow.db'}"
    _refuse_file_store(uri, origin)
    if _is_sqlite(uri) and not _sqlite_path(uri).is_absolute():
        uri = f"sqlite:///{_sqlite_path(uri).resolve()}"
    return uri


def _is_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def _sqlite_path(uri: str) -> Path:
    # sqlite:////abs/mlflow.db -> /abs/mlflow.db ; sqlite:///rel.db -> rel.db
    return Path(uri[len("sqlite:///") :])


def _refuse_file_store(uri: str, origin: str) -> None:
    if urlparse(uri).scheme in ("", "file") and uri != "databricks":
        raise TrackingError(
            f"{origin}={uri!r}: file stores are refused (every Ray worker would write its own ./mlruns); "
            f"use sqlite:////ABSOLUTE/PATH/mlflow.db or http://HOST:PORT of an `mlflow server`"
        )


def artifact_root(uri: str) -> str | None:
    """Where a new experiment's artifacts go: beside an SQLite file, else the server's default."""
    if _is_sqlite(uri):
        return (_sqlite_path(uri).parent / "artifacts").as_uri()
    return None


def check_tracking(uri: str) -> None:
    """Raise TrackingError unless `uri` names a store this process can read and write.

    Called at driver and worker start: the one place where a tracking problem is allowed to stop
    the work, before any resource is spent.
    """
    _refuse_file_store(uri, "tracking URI")
    if _is_sqlite(uri):
        path = _sqlite_path(uri)
        if not path.is_absolute():
            raise TrackingError(
                f"tracking URI {uri!r}: a relative SQLite path names a different file in each Ray worker's "
                f"working directory; use sqlite:////ABSOLUTE/PATH/mlflow.db"
            )
        if not path.parent.is_dir():
            raise TrackingError(
                f"tracking URI {uri!r}: folder {path.parent} does not exist on {socket.gethostname()}; "
                f"an SQLite store is only reachable on the machine that holds it, use an `mlflow server` "
                f"for multi-node clusters"
            )
    elif uri.startswith(("http://", "https://")):
        _probe_server(uri)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:  # any failure here means the store is unusable; say which and why
        raise TrackingError(f"tracking URI {uri!r}: the store does not answer MLflow requests: {error}") from None


def _probe_server(uri: str) -> None:
    # A direct request with a short timeout: MLflow's own client would retry for minutes first.
    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=5)
    except requests.RequestException as error:
        raise TrackingError(
            f"tracking URI {uri!r}: no MLflow server answers ({type(error).__name__}); "
            f"start one with `mlflow server --host ... --port ...` or fix tracking.tracking_uri"
        ) from None
    if response.status_code != 200:
        raise TrackingError(
            f"tracking URI {uri!r}: GET /health answered HTTP {response.status_code}; "
            f"is this an MLflow server, and does it allow this host (--allowed-hosts)?"
        )


def tracking_env(uri: str) -> dict[str, str]:
    """Environment variables for Ray workers' runtime_env: the URI, credentials, commit, HTTP budget."""
    env = {"MLFLOW_TRACKING_URI": uri, **WORKER_HTTP_SETTINGS}
    env.update({name: os.environ[name] for name in FORWARDED_MLFLOW_VARIABLES if name in os.environ})
    # Workers may run from a working_dir copy without .git: they read the driver's commit from here.
    commit, dirty = _git_state()
    env[GIT_COMMIT_ENV], env[GIT_DIRTY_ENV] = commit, dirty
    return env


def worker_env(tracking_uri: str | None) -> dict[str, str]:
    """Environment variables for Ray workers: tracking (URI, credentials, commit) and itstudy's own."""
    env = tracking_env(tracking_uri) if tracking_uri else {}
    env.update({name: os.environ[name] for name in WORKER_ENV_VARIABLES if name in os.environ})
    return env


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a run RUNNING again when a rerun continues it (its earlier end set FINISHED/FAILED/KILLED)."""
    MlflowClient(tracking_uri=uri).update_run(run_id, status="RUNNING")
    MlflowClient(tracking_uri=uri).set_tag(run_id, "itstudy.status", "RUNNING")


# --- experiments and runs ----------------------------------------------------------------------


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment `name`, created with an absolute artifact root if missing.

    Safe when several processes race to create it: the loser re-reads the winner's experiment.
    """
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_root(uri))
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} at {uri} is deleted; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or set tracking.experiment"
        )
    return experiment.experiment_id


def experiment_name(study: Study) -> str:
    """tracking.experiment, else the study name."""
    return study.tracking.experiment or study.name


def create_run(
    uri: str, experiment_id: str, run_name: str, tags: Mapping[str, Any], parent_run_id: str | None = None
) -> str:
    """Create a run explicitly (no active-run state); a child carries `mlflow.parentRunId`."""
    all_tags = {key: _tag_value(value) for key, value in tags.items()}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = MlflowClient(tracking_uri=uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


@dataclass(frozen=True)
class FoundRun:
    """A run found by its identity tags, or just created."""

    run_id: str
    created: bool
    status: str
    """Its status when found (RUNNING for a new run)."""
    metrics: dict[str, float]
    """Its latest metrics when found (empty for a new run)."""


def get_or_create_run(
    uri: str,
    experiment_id: str,
    name: str,
    identity: Mapping[str, Any],
    tags: Mapping[str, Any] = {},
    parent_run_id: str | None = None,
    reuse_status: str | None = None,
) -> FoundRun:
    """The newest run whose tags equal `identity` (with status `reuse_status`, if given), else a new
    run called `name` tagged with `identity` and `tags`: how every rerun finds its earlier work."""
    found = find_runs(uri, experiment_id, identity, status=reuse_status)
    if found:
        run = found[0]
        return FoundRun(run.info.run_id, False, run.info.status, dict(run.data.metrics))
    run_id = create_run(uri, experiment_id, name, {**identity, **tags}, parent_run_id=parent_run_id)
    return FoundRun(run_id, True, "RUNNING", {})


def _tag_value(value: Any) -> str:
    return str(value)[:MAX_TAG_VAL_LENGTH]


def get_run(uri: str, run_id: str) -> Run:
    return MlflowClient(tracking_uri=uri).get_run(run_id)


def find_runs(uri: str, experiment_id: str, tags: Mapping[str, Any], status: str | None = None) -> list[Run]:
    """Runs of the experiment whose tags equal all of `tags` (and status, if given), newest first."""
    clauses = [f"tags.`{key}` = {_quoted(str(value))}" for key, value in tags.items()]
    if status:
        clauses.append(f"attributes.status = {_quoted(status)}")
    return _search(uri, experiment_id, " AND ".join(clauses))


def find_run_by_name(uri: str, experiment_id: str, name: str, status: str | None = None) -> Run | None:
    """The newest run called `name` (and with that status, if given), or None."""
    clauses = [f"attributes.run_name = {_quoted(name)}"]
    if status:
        clauses.append(f"attributes.status = {_quoted(status)}")
    runs = _search(uri, experiment_id, " AND ".join(clauses))
    return runs[0] if runs else None


def _quoted(value: str) -> str:
    # MLflow's filter grammar has no escape character: pick the quote the value does not contain.
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow for a value containing both quote characters: {value!r}")


def _search(uri: str, experiment_id: str, filter_string: str) -> list[Run]:
    client = MlflowClient(tracking_uri=uri)
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string,
            ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


# --- the logger a run writes through -----------------------------------------------------------


class RunLogger:
    """Writes one existing run: params once, batched metrics, artifacts, lineage, final status.

    Every write is retried `attempts` times with exponential backoff (SQLite answers "database is
    locked" under concurrent writers; servers restart), then given up with a warning: logging never
    raises into training. Metrics that could not be sent stay buffered and go with the next flush.
    One logger per run and per thread; only rank 0 of a training run should hold one.
    """

    def __init__(
        self,
        uri: str,
        run_id: str,
        flush_every: int = 200,
        flush_interval_s: float = 30.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.uri = uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.failures = 0
        """Writes given up after all attempts (tests and reports read it)."""
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._params: dict[str, str] | None = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is None:
            self.end("FINISHED")
            return
        self.log_text("".join(traceback.format_exception(kind, error, tb)), "error.txt")
        self.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def _attempt(self, what: str, call: Callable[[], Any]) -> bool:
        for attempt in range(self.attempts):
            try:
                call()
                return True
            except Exception as error:  # tracking must not stop the work; report and retry
                refused = _refused(error)
                if refused or attempt + 1 == self.attempts:
                    self.failures += 1
                    how = "was refused" if refused else f"failed {self.attempts} times"
                    log.warning("MLflow %s for run %s %s, giving up: %s", what, self.run_id, how, error)
                    return False
                time.sleep(self.backoff_s * 2**attempt)
        return False

    @property
    def pending_metrics(self) -> int:
        """Metric values buffered and not yet sent."""
        return len(self._pending)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log nested params once: keys flattened with dots, values stringified and truncated.

        A param already logged with the same value is skipped (a resumed run logs its config again);
        a different value is kept as it was, with a warning, because MLflow params are immutable.
        """
        if self._params is None:
            self._params = {}
            self._attempt("read params", lambda: self._params.update(self.client.get_run(self.run_id).data.params))
        new = {}
        for key, value in flatten(params).items():
            text = _param_text(value)
            if key not in self._params:
                new[key] = text
            elif self._params[key] != text:
                log.warning(
                    "param %r of run %s stays %r (MLflow params are immutable); new value %r not logged",
                    key,
                    self.run_id,
                    self._params[key],
                    text,
                )
        items = [Param(key, value) for key, value in new.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            if self._attempt("log params", lambda: self.client.log_batch(self.run_id, params=chunk)):
                self._params.update((param.key, param.value) for param in chunk)

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Buffer metrics at `step`; they are sent in batches (every `flush_every` values or interval)."""
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            try:
                self._pending.append(Metric(key, float(value), timestamp, int(step)))
            except (TypeError, ValueError):
                log.warning("metric %r=%r is not a number; not logged", key, value)
        due = time.monotonic() - self._last_flush >= self.flush_interval_s
        if len(self._pending) >= self.flush_every or due:
            self.flush()

    def flush(self) -> bool:
        """Send buffered metrics now; what fails stays buffered for the next flush."""
        self._last_flush = time.monotonic()
        while self._pending:
            chunk = self._pending[:MAX_METRICS_PER_BATCH]
            if not self._attempt("log metrics", lambda: self.client.log_batch(self.run_id, metrics=chunk)):
                return False
            del self._pending[: len(chunk)]
        return True

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(key, _tag_value(value)) for key, value in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._attempt("set tags", lambda: self.client.log_batch(self.run_id, tags=chunk))

    def log_text(self, text: str, artifact_file: str) -> bool:
        return self._attempt(f"log {artifact_file}", lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_dict_yaml(self, obj: Any, artifact_file: str) -> bool:
        """Write `obj` as YAML in its own key order (MLflow's log_dict sorts keys)."""
        return self.log_text(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True), artifact_file)

    def log_file(self, path: str | Path, artifact_dir: str | None = None) -> bool:
        return self._attempt(f"log {path}", lambda: self.client.log_artifact(self.run_id, str(path), artifact_dir))

    def log_dir(self, path: str | Path, artifact_dir: str | None = None) -> bool:
        return self._attempt(f"log {path}/", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_dir))

    def log_config(self, study: Study) -> None:
        """The full study as `config.yaml`, flattened as params, its digest as a tag."""
        plain = to_plain(study)
        self.log_dict_yaml(plain, "config.yaml")
        self.log_params(plain)
        self.set_tags({"itstudy.config_digest": config_digest(study)})

    def log_environment(self) -> None:
        """Versions, git commit, host and platform as `env.*` params."""
        self.log_params({"env": environment_info()})

    def log_dataset(self, digest: str, source: str, name: str, n_instances: int, context: str = "evaluation") -> None:
        """Record the data a run used (MLflow dataset lineage): its digest, where it came from, its size."""
        source_info = CodeDatasetSource({"source": source, "digest": digest, "instances": str(n_instances)})
        dataset = MetaDataset(source_info, name=name, digest=digest[:MAX_DATASET_DIGEST_LENGTH])
        entity = Dataset(**dataset.to_dict())
        inputs = [DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        self._attempt("log dataset", lambda: self.client.log_inputs(self.run_id, datasets=inputs))

    def log_error(self, text: str) -> None:
        self.log_text(text, "error.txt")

    def end(self, status: str = "FINISHED") -> None:
        """Flush, tag `itstudy.status`, and terminate the run with FINISHED, FAILED or KILLED."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"run status must be one of {TERMINAL_STATUSES}, got {status!r}")
        if not self.flush():
            log.warning("%d metric values of run %s could not be sent to MLflow", len(self._pending), self.run_id)
        self.set_tags({"itstudy.status": status})
        self._attempt("end run", lambda: self.client.set_terminated(self.run_id, status))


def _refused(error: Exception) -> bool:
    """The store understood and refused the request: asking again cannot help."""
    return isinstance(error, MlflowException) and error.error_code in REFUSALS


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'data': {'source': 'x'}} -> {'data.source': 'x'}; an empty mapping stays one entry."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    # Lists read better as JSON (["a", "b"]) than as Python reprs; MLflow refuses longer values.
    text = json.dumps(value, default=str) if isinstance(value, (list, tuple, Mapping)) else str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def _chunks(items: list, size: int) -> Iterable[list]:
    return (items[start : start + size] for start in range(0, len(items), size))


# --- what a run is made of: predictions, environment --------------------------------------------


def log_predictions(logger: RunLogger, scored: list, prompts: Iterable[str] = (), step: int = 0) -> dict[str, float]:
    """Log predictions.jsonl, task_metrics.csv, prompts.txt (if any) and the aggregate metrics.

    `scored` are `itstudy.metrics.ScoredPrediction`s; returns the aggregate metrics logged.
    """
    logger.log_text("".join(json.dumps(item.record()) + "\n" for item in scored), "predictions.jsonl")
    logger.log_text(_csv_text(task_rows(scored)), "task_metrics.csv")
    prompts = list(prompts)
    if prompts:
        logger.log_text("\n\n----------\n\n".join(prompts) + "\n", "prompts.txt")
    metrics = aggregate(scored)
    logger.log_metrics(metrics, step=step)
    logger.flush()
    return metrics


def _csv_text(rows: list[dict]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def environment_info() -> dict[str, str]:
    """Python and package versions, git commit (+ dirty flag), hostname and platform of this process."""
    info = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["git_commit"], info["git_dirty"] = _git_state()
    info["hostname"] = socket.gethostname()
    info["platform"] = platform.platform()
    return info


@cache
def _git_state() -> tuple[str, str]:
    """(commit, dirty) of the checkout holding this package, else what the submitter exported."""
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            commit = _git(root, "rev-parse", "HEAD")
            dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
            return commit, "true" if dirty else "false"
        except (OSError, subprocess.SubprocessError):
            pass
    return os.environ.get(GIT_COMMIT_ENV, "unknown"), os.environ.get(GIT_DIRTY_ENV, "unknown")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


# --- read side: resume and reports --------------------------------------------------------------


def experiment_id_of(uri: str, name: str) -> str | None:
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None


def load_runs(uri: str, experiment_name: str) -> pd.DataFrame:
    """One row per run: run_id, name, status, parent_run_id, start/end time, metrics.*, params.*, tags.*.

    The columns follow `mlflow.search_runs`, which is not used because it reads the process-global
    tracking URI: reading a store must never change where this process logs.
    """
    experiment_id = experiment_id_of(uri, experiment_name)
    if experiment_id is None:
        raise TrackingError(f"no MLflow experiment {experiment_name!r} at {uri}")
    rows = []
    for run in _search(uri, experiment_id, ""):
        row = {
            "run_id": run.info.run_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "parent_run_id": run.data.tags.get(MLFLOW_PARENT_RUN_ID),
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True) if run.info.end_time else pd.NaT,
            "artifact_uri": run.info.artifact_uri,
        }
        row.update({f"metrics.{key}": value for key, value in run.data.metrics.items()})
        row.update({f"params.{key}": value for key, value in run.data.params.items()})
        row.update({f"tags.{key}": value for key, value in run.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    return [item.path for item in MlflowClient(tracking_uri=uri).list_artifacts(run_id, path)]


def download_artifact(uri: str, run_id: str, artifact_path: str, dst_dir: str | Path) -> Path:
    """Copy one artifact of a run into `dst_dir` and return its local path."""
    # Reports read a few small files; MLflow's per-download progress bars only clutter their output
    # (set the variable yourself to get them back).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    local = download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst_dir), tracking_uri=uri)
    return Path(local)


# --- read side for reports (dashboards) ---------------------------------------------------------


def run_dataset_digests(uri: str, experiment_name: str) -> dict[str, str]:
    """run_id -> digest of the dataset the run logged (`log_dataset`), for runs that logged one.

    A run logs one selection digest for training and evaluation alike (a baseline only for
    evaluation), so the first digest found stands for the run's data.
    """
    experiment_id = experiment_id_of(uri, experiment_name)
    if experiment_id is None:
        raise TrackingError(f"no MLflow experiment {experiment_name!r} at {uri}")
    digests = {}
    for run in _search(uri, experiment_id, ""):
        inputs = run.inputs.dataset_inputs if run.inputs else []
        if inputs:
            digests[run.info.run_id] = inputs[0].dataset.digest
    return digests
