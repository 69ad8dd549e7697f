"""`RunLogger`: writes one existing run, and never breaks the work it records.

Params once (flattened, truncated), metrics in batches, artifacts and dataset lineage, the final
status. A failing write is retried, then reported as a warning: tracking never raises into
training (mlflow#5269). With a `MetricJournal`, every metric point is recorded on disk first and
MLflow gets each (key, step) exactly once: what an outage kept from it stays in the record for
`itstudy sync` (see `itstudy.tracking.journal`), and so do the text artifacts it did not take. Used as a context manager it is the one place
that turns how a block ended into the run's status: FINISHED, or FAILED (KILLED on Ctrl-C) with
the traceback in error.txt.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from itstudy.config import Study, config_digest, to_plain
from itstudy.provenance import environment_info
from itstudy.tracking.disk import is_disk_full
from itstudy.tracking.journal import HeldPoints, MetricJournal
from itstudy.tracking.names import mlflow_metric_name
from itstudy.tracking.runs import STATUS_TAG, TERMINAL_STATUSES, tag_value

log = logging.getLogger(__name__)

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
PROMPT_SEPARATOR = "\n\n----------\n\n"


class RunLogger:
    """Writes one existing run: params once, batched metrics, artifacts, lineage, final status.

    Every write is retried `attempts` times with exponential backoff (SQLite answers "database is
    locked" under concurrent writers; servers restart), then given up with a warning: logging never
    raises into training. After such a failure no write is tried for `outage_pause_s`, so that a
    trial in a long outage does not wait out the retries of every write (minutes per evaluation):
    metrics stay buffered (and in the record) and go with the next flush after the pause; text
    artifacts are kept beside the record for the replay.
    One logger per run and per thread; only rank 0 of a training run should hold one.

        with RunLogger(uri, run_id) as logger:   # FINISHED on exit; FAILED with error.txt on an exception
            logger.log_config(study)
            logger.log_metrics({"train_loss": 2.3}, step=10)
    """

    def __init__(
        self,
        uri: str,
        run_id: str,
        flush_every: int = 200,
        flush_interval_s: float = 30.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
        journal: MetricJournal | None = None,
        outage_pause_s: float = 60.0,
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
        self.outage_pause_s = outage_pause_s
        self._paused_until = 0.0
        self.store_full = False
        """The store answered that its disk is full: later writes are not tried (the sweep stops on it)."""
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()
        self._params: dict[str, str] | None = None
        self.journal = journal
        """The run's write-ahead record: metric points go there first, and are sent once per (key, step)."""
        self._held = HeldPoints(self.client, run_id) if journal else None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, kind, error, tb) -> None:
        if error is None:
            self.end("FINISHED")
            return
        self.log_error("".join(traceback.format_exception(kind, error, tb)))
        self.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def _attempt(self, what: str, call: Callable[[], Any]) -> bool:
        # A full store would fail every write again (each with MLflow's traceback in the log); a store that
        # did not answer is given `outage_pause_s` before the next write waits for it.
        if self.store_full or time.monotonic() < self._paused_until:
            self.failures += 1
            log.debug("MLflow %s for run %s not tried: the store did not answer just before", what, self.run_id)
            return False
        for attempt in range(self.attempts):
            try:
                call()
                return True
            except Exception as error:  # tracking must not stop the work; report and retry
                self.store_full = is_disk_full(error)
                refused = _refused(error) or self.store_full  # a full disk stays full while we wait
                if refused or attempt + 1 == self.attempts:
                    self.failures += 1
                    how = "was refused" if refused else f"failed {self.attempts} times"
                    log.warning("MLflow %s for run %s %s, giving up: %s", what, self.run_id, how, error)
                    if not refused:
                        self._paused_until = time.monotonic() + self.outage_pause_s
                    return False
                time.sleep(self.backoff_s * 2**attempt)
        return False

    @property
    def pending_metrics(self) -> int:
        """Metric values buffered and not yet sent."""
        return len(self._pending)

    # --- params and tags -------------------------------------------------------------------------

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

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(key, tag_value(value)) for key, value in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._attempt("set tags", lambda: self.client.log_batch(self.run_id, tags=chunk))

    def try_set_tag(self, key: str, value: Any) -> bool:
        """Set a display tag in one attempt; False if MLflow did not take it (not retried, not a failure:
        the next update replaces it)."""
        try:
            self.client.set_tag(self.run_id, key, tag_value(value))
            return True
        except Exception as error:  # a display must never slow or stop the work
            log.debug("MLflow tag %s for run %s not set: %s", key, self.run_id, error)
            return False

    def log_config(self, study: Study) -> None:
        """The full study as `config.yaml`, flattened as params, its digest as a tag."""
        plain = to_plain(study)
        self.log_dict_yaml(plain, "config.yaml")
        self.log_params(plain)
        self.set_tags({"itstudy.config_digest": config_digest(study)})

    def log_environment(self) -> None:
        """Versions, git commit, host and platform as `env.*` params."""
        self.log_params({"env": environment_info()})

    # --- metrics ---------------------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Buffer metrics at `step` (per-task ones renamed by `mlflow_metric_name`); they are sent in batches
        (every `flush_every` values or interval)."""
        timestamp = int(time.time() * 1000)
        points = []
        for key, value in metrics.items():
            try:
                points.append(Metric(mlflow_metric_name(key), float(value), timestamp, int(step)))
            except (TypeError, ValueError):
                log.warning("metric %r=%r is not a number; not logged", key, value)
        self._pending.extend(points)
        if self.journal:
            self._record(points)
        due = time.monotonic() - self._last_flush >= self.flush_interval_s
        if len(self._pending) >= self.flush_every or due:
            self.flush()

    def _record(self, points: list[Metric]) -> None:
        """Append `points` to the record; if its disk is full, MLflow (a server may still answer) gets them now."""
        try:
            self.journal.append(points)
        except OSError as error:
            if is_disk_full(error):
                self.flush()
            raise

    def flush(self) -> bool:
        """Send buffered metrics now; what fails stays buffered for the next flush."""
        self._last_flush = time.monotonic()
        while self._pending:
            chunk = self._pending[:MAX_METRICS_PER_BATCH]
            if not self._attempt("log metrics", lambda: self._send(chunk)):
                return False
            del self._pending[: len(chunk)]
        return True

    def _send(self, points: list[Metric]) -> None:
        """Send `points`; with a journal only the (key, step) pairs MLflow does not hold yet."""
        if self._held is None:
            self.client.log_batch(self.run_id, metrics=points)
            return
        try:
            missing = self._held.missing(points)
            if missing:
                self.client.log_batch(self.run_id, metrics=missing)
        except Exception:
            self._held.forget()  # the batch may have reached the store: ask it again before resending
            raise
        self._held.add(missing)

    # --- artifacts and lineage -------------------------------------------------------------------

    def log_text(self, text: str, artifact_file: str) -> bool:
        """Write a text artifact; with a journal, one MLflow did not take is kept beside the record for the replay."""
        if self._attempt(f"log {artifact_file}", lambda: self.client.log_text(self.run_id, text, artifact_file)):
            return True
        if self.journal:
            try:
                kept = self.journal.keep_artifact(text, artifact_file)
                log.warning("%s of run %s kept in %s for `itstudy sync`", artifact_file, self.run_id, kept)
            except OSError as error:  # a full disk: the artifact is lost, the training goes on
                log.warning("%s of run %s could not be kept either: %s", artifact_file, self.run_id, error)
        return False


    def log_dict_yaml(self, obj: Any, artifact_file: str) -> bool:
        """Write `obj` as YAML in its own key order (MLflow's log_dict sorts keys)."""
        return self.log_text(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True), artifact_file)

    def log_file(self, path: str | Path, artifact_dir: str | None = None) -> bool:
        return self._attempt(f"log {path}", lambda: self.client.log_artifact(self.run_id, str(path), artifact_dir))

    def log_dir(self, path: str | Path, artifact_dir: str | None = None) -> bool:
        return self._attempt(f"log {path}/", lambda: self.client.log_artifacts(self.run_id, str(path), artifact_dir))

    def log_model(self, folder: str | Path, registered_name: str) -> None:
        """`folder` (a `save_pretrained` model with its tokenizer) as the `model/` artifact, registered as a
        new version of model `registered_name` that points at this run."""
        if not self.log_dir(folder, "model"):
            return
        self._attempt("register model", lambda: self._register(registered_name))

    def _register(self, name: str) -> None:
        try:
            self.client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/model"
        self.client.create_model_version(name, source, run_id=self.run_id)

    def log_prompts(self, prompts: Iterable[str]) -> None:
        """Sample prompts as prompts.txt, so a reader sees what the model was given (nothing if none)."""
        prompts = list(prompts)
        if prompts:
            self.log_text(PROMPT_SEPARATOR.join(prompts) + "\n", "prompts.txt")

    def log_predictions(
        self,
        records: Iterable[Mapping[str, Any]],
        task_metrics: list[Mapping[str, Any]],
        metrics: Mapping[str, float],
        step: int = 0,
    ) -> None:
        """predictions.jsonl (one record per instance), task_metrics.csv (one row per task) and the
        aggregate metrics at `step`, sent at once."""
        self.log_text("".join(json.dumps(record) + "\n" for record in records), "predictions.jsonl")
        self.log_text(pd.DataFrame(task_metrics).to_csv(index=False) if task_metrics else "", "task_metrics.csv")
        self.log_metrics(metrics, step=step)
        self.flush()

    def log_dataset(self, digest: str, source: str, name: str, n_instances: int, context: str = "evaluation") -> None:
        """Record the data a run used (MLflow dataset lineage): its digest, where it came from, its size."""
        source_info = CodeDatasetSource({"source": source, "digest": digest, "instances": str(n_instances)})
        dataset = MetaDataset(source_info, name=name, digest=digest[:MAX_DATASET_DIGEST_LENGTH])
        entity = Dataset(**dataset.to_dict())
        inputs = [DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
        self._attempt("log dataset", lambda: self.client.log_inputs(self.run_id, datasets=inputs))

    # --- the end ---------------------------------------------------------------------------------

    def log_error(self, text: str) -> None:
        self.log_text(text, "error.txt")

    def close(self) -> None:
        """Send what is buffered; say how many values could not be sent, and where they are kept."""
        if not self.flush():
            kept = f"kept in {self.journal.path} for `itstudy sync`" if self.journal else "lost"
            unsent = len(self._pending)
            log.warning("%d metric values of run %s could not be sent to MLflow: %s", unsent, self.run_id, kept)

    def end(self, status: str = "FINISHED") -> None:
        """Flush, tag `itstudy.status`, and terminate the run with FINISHED, FAILED or KILLED."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"run status must be one of {TERMINAL_STATUSES}, got {status!r}")
        self.close()
        self.set_tags({STATUS_TAG: status})
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
