"""Which MLflow store a study uses, whether it can be used, its experiments, and what Ray workers need to reach it.

The URI of a study is tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else an SQLite file under
`itstudy_home()`. Refused: `file:` stores and bare paths (each Ray worker would resolve its own
./mlruns) and relative SQLite paths (each worker would open a different file). `check_tracking`
is the one place where a tracking problem may stop the work, at driver and worker start, instead
of a worker silently writing to ./mlruns (ray#36257): a store folder that is read-only, an
`mlflow.db` that is cut short or not a database, a server that does not answer within seconds
(MLflow's own client retries for minutes) are each one line naming the file or URI and the fix.
Reading a study (`itstudy.tracking.read`, hence `itstudy report`) and `itstudy ui` ask
`check_readable` instead, which also refuses an SQLite file that does not exist (MLflow would
create an empty one).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from itstudy.config import ConfigError, Study, TrackingConfig, config_digest, load_study
from itstudy.paths import GIT_COMMIT_ENV, GIT_DIRTY_ENV, WORKER_ENV_VARIABLES, itstudy_home
from itstudy.provenance import git_state

# MLflow's HTTP client retries 7 times with backoff 2 by default (about 4 minutes per call, sized for
# rate-limited hosted services); a training worker would stall that long on every flush against a
# dead server. Workers get a short budget instead; RunLogger buffers what still fails.
WORKER_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
# TLS settings for a tracking server: not secret, forwarded to workers when the driver has them.
FORWARDED_MLFLOW_VARIABLES = ("MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH")
# Never in a runtime environment: Ray writes runtime environments in plain text into its session
# logs (runtime_env_agent.log, 0644). Workers read credentials on their own node instead: a local
# Ray's workers inherit the driver's environment through the raylet it starts; on a cluster the
# launcher sets them in `ray start`'s environment or writes ~/.mlflow/credentials (mode 0600),
# which MLflow reads when these variables are unset (cluster/README.md).
SECRET_MLFLOW_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


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


@dataclass(frozen=True)
class StudyStore:
    """Where a study's runs are: tracking URI and experiment, and the config digest when a file was given."""

    tracking_uri: str
    experiment: str
    config_digest: str | None
    """The experiment file's config digest (selects its sweep); None for a bare study name."""


def study_store(study_or_experiment: str | None, tracking_uri: str | None = None) -> StudyStore:
    """An experiment file (`*.yaml`, `*.yml` or an existing file) or a study name -> its store.

    The URI is `tracking_uri` if given, else the file's tracking settings, else
    $MLFLOW_TRACKING_URI, else the SQLite store under $ITSTUDY_HOME (`resolve_tracking_uri`).
    """
    override = TrackingConfig(tracking_uri=tracking_uri) if tracking_uri else None
    target = study_or_experiment or ""
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        study = load_study(target)
        return StudyStore(resolve_tracking_uri(override or study.tracking), experiment_name(study), config_digest(study))
    return StudyStore(resolve_tracking_uri(override or TrackingConfig()), target, None)


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


# --- can it be used ----------------------------------------------------------------------------


def check_tracking(uri: str) -> None:
    """Raise TrackingError unless `uri` names a store this process can read and write.

    Called at driver and worker start, before any resource is spent.
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
        check_writable(uri)
        _check_sqlite_file(path)
    check_server(uri)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:  # any failure here means the store is unusable; say which and why
        reason = _first_line(error)
        hint = f"; free space on the disk of {_sqlite_path(uri).parent} and rerun" if "full" in reason and _is_sqlite(uri) else ""
        raise TrackingError(f"tracking URI {uri!r}: the store does not answer MLflow requests: {reason}{hint}") from None


def check_readable(uri: str) -> None:
    """Raise TrackingError unless `uri` names an existing store that answers within seconds (for commands that read)."""
    if _is_sqlite(uri):
        path = _sqlite_path(uri)
        if not store_exists(uri):
            raise TrackingError(
                f"tracking store {path} does not exist: run the study first (itstudy run EXPERIMENT.yaml), or name its "
                f"store with --tracking-uri, $MLFLOW_TRACKING_URI or $ITSTUDY_HOME"
            )
        _check_sqlite_file(path)
    check_server(uri)


def store_exists(uri: str) -> bool:
    """False only for an SQLite store whose file is not made yet (a server's store is the server's)."""
    return not _is_sqlite(uri) or _sqlite_path(uri).is_file()


@contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    """Serialise first contact with an SQLite store: MLflow creates and migrates its schema then, and a
    second process that opens it meanwhile (a study, `report`, `ui`) would migrate it too and fail."""
    if not _is_sqlite(uri):
        yield
        return
    database = _sqlite_path(uri)
    database.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{database}.lock"):
        yield


def check_writable(uri: str) -> None:
    """For an SQLite store, that this user may write its folder and file (checked before any lock file is made there)."""
    if not _is_sqlite(uri):
        return
    path = _sqlite_path(uri)
    # SQLite writes a journal beside the file: the folder must be writable too (os.access also sees a read-only mount).
    for target in (path.parent, path):
        if target.exists() and not os.access(target, os.W_OK):
            raise TrackingError(
                f"tracking store {path}: {target} is read-only for this user; make it writable, or move the study "
                f"to a writable folder ($ITSTUDY_HOME, or tracking.tracking_uri=sqlite:////PATH/mlflow.db)"
            )


def _check_sqlite_file(path: Path) -> None:
    """A cut-short or overwritten mlflow.db fails later, deep in MLflow, without its name: ask SQLite first."""
    if not path.is_file():
        return  # a new store: MLflow creates it
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)) as connection:
            verdict = connection.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.Error as error:
        verdict = str(error)
    if verdict != "ok":
        raise TrackingError(
            f"tracking store {path} is damaged ({verdict}): restore it from a backup, or move it away to start a new "
            f"store (its runs are lost to MLflow; metric records and checkpoints stay under {path.parent})"
        )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def check_server(uri: str) -> None:
    """For a tracking server, that it answers /health within seconds (MLflow's own client would retry for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
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


# --- Ray workers -------------------------------------------------------------------------------


def tracking_env(uri: str) -> dict[str, str]:
    """Environment variables for Ray workers' runtime_env: the URI, TLS settings, commit, HTTP budget; no secret."""
    env = {"MLFLOW_TRACKING_URI": uri, **WORKER_HTTP_SETTINGS}
    env.update({name: os.environ[name] for name in FORWARDED_MLFLOW_VARIABLES if name in os.environ})
    # Workers may run from a working_dir copy without .git: they read the driver's commit from here.
    env[GIT_COMMIT_ENV], env[GIT_DIRTY_ENV] = git_state()
    return env


def worker_env(tracking_uri: str | None) -> dict[str, str]:
    """Environment variables for Ray workers: tracking (URI, commit) and itstudy's own; never a secret.

    Credentials (SECRET_MLFLOW_VARIABLES) stay out: workers find them on their node.
    """
    env = tracking_env(tracking_uri) if tracking_uri else {}
    env.update({name: os.environ[name] for name in WORKER_ENV_VARIABLES if name in os.environ})
    return env


# --- experiments -------------------------------------------------------------------------------


def experiment_name(study: Study) -> str:
    """tracking.experiment, else the study name."""
    return study.tracking.experiment or study.name


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
"""The tag with which MLflow 3 UIs open an experiment on its training runs, not on GenAI traces (values
from the UI bundle's experiment-kind enum). The 3.17 UI reads it only with its GenAI / Model training
switch off; with the switch on (its default), the mode comes from the browser or the link's
`workflowType=machine_learning` (`comparison_view_link`)."""
COMPARISON_VIEW = "comparison"
"""The key of the saved runs-table view (`comparison_view_link`)."""
COMPARISON_COLUMNS = [
    "tags.`itstudy.variant`",
    "tags.`itstudy.instances_per_task`",
    "tags.`itstudy.seed`",
    "tags.`itstudy.model`",
    "metrics.`exact_match`",
    "metrics.`rank_exact_match`",
    "metrics.`label_space_rate`",
    "metrics.`rougeL`",
]
"""The runs table's columns in the comparison view, as the UI names them: the type, then the key in backticks."""

RUN_NAME_COLUMN = "attributes.`Run Name`"
"""The UI's id of the run-name column (widened in the comparison view, so that names read whole)."""


def comparison_view_state() -> str:
    """The saved runs-table view, as the MLflow UI reads a shared view from `mlflow.sharedViewState.<key>`:
    trials and baselines side by side (the sweep runs filtered out, so nothing is nested under a
    collapsed parent), the comparison columns shown, whole run names, every run in the charts."""
    return json.dumps(
        {
            "searchFilter": "tags.`itstudy.kind` != 'sweep'",
            "orderByKey": "tags.`mlflow.runName`",
            "orderByAsc": True,
            "selectedColumns": COMPARISON_COLUMNS,
            # The UI applies widths only to columns in columnOrder.
            "columnOrder": [RUN_NAME_COLUMN, *COMPARISON_COLUMNS],
            "columnWidths": {
                RUN_NAME_COLUMN: 330,
                "tags.`itstudy.variant`": 220,
                **dict.fromkeys(COMPARISON_COLUMNS[1:], 120),
            },
            "runsHiddenMode": "SHOW_ALL",
        }
    )


def comparison_view_link(experiment_id: str) -> str:
    """The UI address (after the host) of an experiment's comparison view, in the Model training mode."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={COMPARISON_VIEW}&workflowType=machine_learning"


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment `name`, created with an absolute artifact root if missing, tagged as model
    training and holding the comparison view (`COMPARISON_VIEW`).

    Safe when several processes race to create it: the loser re-reads the winner's experiment.
    """
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=artifact_root(uri))
            experiment = client.get_experiment(experiment_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} at {uri} is deleted; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or set tracking.experiment"
        )
    tags = {**EXPERIMENT_KIND, f"mlflow.sharedViewState.{COMPARISON_VIEW}": comparison_view_state()}
    for key, value in tags.items():
        if experiment.tags.get(key) != value:  # set once per store, not on every call
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id
