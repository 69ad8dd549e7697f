"""Reading a study back for reports: its runs as one table, their artifacts and dataset digests."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from itstudy.tracking.runs import search_runs
from itstudy.tracking.store import TrackingError, check_readable, store_creation_lock, store_exists


def experiment_id_of(uri: str, name: str) -> str | None:
    """The id of experiment `name`, None if the store has none (or is an SQLite file not made yet: MLflow
    would create an empty one); a damaged store or a silent server is one line (`check_readable`)."""
    if not store_exists(uri):
        return None
    check_readable(uri)
    with store_creation_lock(uri):  # the store may be in its first migration, by a study starting
        experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    return experiment.experiment_id if experiment else None


def _existing_experiment_id(uri: str, name: str) -> str:
    experiment_id = experiment_id_of(uri, name)
    if experiment_id is None:
        raise TrackingError(f"no MLflow experiment {name!r} at {uri}")
    return experiment_id


def load_runs(uri: str, experiment_name: str) -> pd.DataFrame:
    """One row per run: run_id, name, status, parent_run_id, start/end time, metrics.*, params.*, tags.*.

    The columns follow `mlflow.search_runs`, which is not used because it reads the process-global
    tracking URI: reading a store must never change where this process logs.
    """
    rows = []
    for run in search_runs(uri, _existing_experiment_id(uri, experiment_name)):
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


def run_dataset_digests(uri: str, experiment_name: str) -> dict[str, str]:
    """run_id -> digest of the dataset the run logged (`RunLogger.log_dataset`), for runs that logged one.

    A run logs one selection digest for training and evaluation alike (a baseline only for
    evaluation), so the first digest found stands for the run's data.
    """
    digests = {}
    for run in search_runs(uri, _existing_experiment_id(uri, experiment_name)):
        inputs = run.inputs.dataset_inputs if run.inputs else []
        if inputs:
            digests[run.info.run_id] = inputs[0].dataset.digest
    return digests


def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    return [item.path for item in MlflowClient(tracking_uri=uri).list_artifacts(run_id, path)]


def download_artifact(uri: str, run_id: str, artifact_path: str, dst_dir: str | Path) -> Path:
    """Copy one artifact of a run into `dst_dir` and return its local path."""
    # Reports read a few small files; MLflow's per-download progress bars only clutter their output
    # (set the variable yourself to get them back).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    local = download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst_dir), tracking_uri=uri)
    return Path(local)
