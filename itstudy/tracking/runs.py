"""Runs, created explicitly by id and found again by their identity tags.

Runs are never MLflow's thread-local "active run": every call names its run id, and a child run
carries `mlflow.parentRunId`, so nothing depends on state shared across Ray processes
(ray#19978, mlflow#2194). `get_or_create_run` is how every rerun finds its earlier work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from itstudy.tracking.names import measured_metrics

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
STATUS_TAG = "itstudy.status"
"""Mirrors the run's status as a tag, which the MLflow UI can filter and colour by."""
FAILURE_REASON_TAG = "itstudy.failure_reason"
"""Why a run was ended FAILED by someone other than its own process (its driver or trial was killed)."""


@dataclass(frozen=True)
class FoundRun:
    """A run found by its identity tags, or just created."""

    run_id: str
    created: bool
    status: str
    """Its status when found (RUNNING for a new run)."""
    metrics: dict[str, float]
    """Its latest metrics when found, by the names they were measured by (empty for a new run)."""


def create_run(
    uri: str, experiment_id: str, run_name: str, tags: Mapping[str, Any], parent_run_id: str | None = None
) -> str:
    """Create a run explicitly (no active-run state); a child carries `mlflow.parentRunId`."""
    all_tags = {key: tag_value(value) for key, value in tags.items()}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = MlflowClient(tracking_uri=uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


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
        return FoundRun(run.info.run_id, False, run.info.status, measured_metrics(run.data.metrics))
    run_id = create_run(uri, experiment_id, name, {**identity, **tags}, parent_run_id=parent_run_id)
    return FoundRun(run_id, True, "RUNNING", {})


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a run RUNNING again when a rerun continues it (its earlier end set FINISHED/FAILED/KILLED);
    the reason an earlier end gave no longer holds."""
    client = MlflowClient(tracking_uri=uri)
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, STATUS_TAG, "RUNNING")
    if FAILURE_REASON_TAG in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, FAILURE_REASON_TAG)


def get_run(uri: str, run_id: str) -> Run:
    return MlflowClient(tracking_uri=uri).get_run(run_id)


def find_runs(uri: str, experiment_id: str, tags: Mapping[str, Any], status: str | None = None) -> list[Run]:
    """Runs of the experiment whose tags equal all of `tags` (and status, if given), newest first."""
    clauses = [f"tags.`{key}` = {_quoted(str(value))}" for key, value in tags.items()]
    if status:
        clauses.append(f"attributes.status = {_quoted(status)}")
    return search_runs(uri, experiment_id, " AND ".join(clauses))


def find_run_by_name(uri: str, experiment_id: str, name: str, status: str | None = None) -> Run | None:
    """The newest run called `name` (and with that status, if given), or None."""
    clauses = [f"attributes.run_name = {_quoted(name)}"]
    if status:
        clauses.append(f"attributes.status = {_quoted(status)}")
    runs = search_runs(uri, experiment_id, " AND ".join(clauses))
    return runs[0] if runs else None


def search_runs(uri: str, experiment_id: str, filter_string: str = "") -> list[Run]:
    """Every active run of the experiment matching `filter_string`, newest first, all pages."""
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


def tag_value(value: Any) -> str:
    """A tag as MLflow stores it: text, truncated to the longest value MLflow accepts."""
    return str(value)[:MAX_TAG_VAL_LENGTH]


def _quoted(value: str) -> str:
    # MLflow's filter grammar has no escape character: pick the quote the value does not contain.
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow for a value containing both quote characters: {value!r}")
