"""The only door to MLflow: one tracking URI, explicit runs, a logger that never breaks training.

- `store`: which store a study uses (config, else $MLFLOW_TRACKING_URI, else an SQLite file under
  `itstudy_home()`), the loud `check_tracking`, experiments, what Ray workers need to reach it;
- `runs`: runs created explicitly by id and found again by identity (`get_or_create_run`);
- `logger`: `RunLogger`, which writes one run and maps how a block ended to the run's status;
- `names`: metric names as MLflow holds them (per-task figures under `per_task/`) and back;
- `disk`: a full disk recognised wherever it surfaces (`DiskFull`, one line);
- `journal`: the write-ahead record of a run's metrics, replayed to MLflow once per (key, step);
- `read`: a study read back for reports (runs as a DataFrame, artifacts, dataset digests).

    uri = resolve_tracking_uri(study.tracking); check_tracking(uri)
    experiment_id = ensure_experiment(uri, experiment_name(study))
    run = get_or_create_run(uri, experiment_id, "trial-...", identity={"itstudy.trial_key": "..."}, parent_run_id=parent)
    with RunLogger(uri, run.run_id) as logger:      # FINISHED on exit; FAILED with error.txt on an exception
        logger.log_config(study)
        logger.log_metrics({"train_loss": 2.3}, step=10)
"""

from itstudy.tracking.disk import DiskFull, disk_full_cause, disk_full_named
from itstudy.tracking.journal import MetricJournal, replay, sync_folder
from itstudy.tracking.logger import RunLogger
from itstudy.tracking.names import PER_TASK_PREFIX, measured_metrics
from itstudy.tracking.read import download_artifact, experiment_id_of, list_artifacts, load_runs, run_dataset_digests
from itstudy.tracking.runs import (
    FAILURE_REASON_TAG,
    TERMINAL_STATUSES,
    FoundRun,
    create_run,
    find_run_by_name,
    find_runs,
    get_or_create_run,
    get_run,
    reopen_run,
)
from itstudy.tracking.store import (
    COMPARISON_VIEW,
    StudyStore,
    TrackingError,
    artifact_root,
    check_readable,
    check_server,
    check_tracking,
    check_writable,
    comparison_view_link,
    ensure_experiment,
    experiment_name,
    resolve_tracking_uri,
    store_creation_lock,
    study_store,
    tracking_env,
    worker_env,
)

__all__ = [
    "COMPARISON_VIEW",
    "DiskFull",
    "FAILURE_REASON_TAG",
    "TERMINAL_STATUSES",
    "FoundRun",
    "MetricJournal",
    "PER_TASK_PREFIX",
    "RunLogger",
    "StudyStore",
    "TrackingError",
    "artifact_root",
    "check_readable",
    "check_server",
    "check_tracking",
    "check_writable",
    "comparison_view_link",
    "create_run",
    "disk_full_cause",
    "disk_full_named",
    "download_artifact",
    "ensure_experiment",
    "experiment_id_of",
    "experiment_name",
    "find_run_by_name",
    "find_runs",
    "get_or_create_run",
    "get_run",
    "list_artifacts",
    "load_runs",
    "measured_metrics",
    "reopen_run",
    "replay",
    "resolve_tracking_uri",
    "run_dataset_digests",
    "store_creation_lock",
    "study_store",
    "sync_folder",
    "tracking_env",
    "worker_env",
]
