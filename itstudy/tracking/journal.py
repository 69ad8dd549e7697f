"""The write-ahead record of a run's metrics: on disk, fsync'd, before MLflow hears of them.

    journal = MetricJournal(folder / f"{run_id}.jsonl")
    journal.append([Metric("train_loss", 2.3, timestamp, 10)])   # durable when it returns
    replay(journal, uri)                                         # sends what MLflow lacks, once

The record, not MLflow, is the source of truth for what a trial measured: one JSON line per
metric point, appended and fsync'd. MLflow receives it idempotently: before sending, the run's
history of those keys is read and only the (key, step) pairs it lacks are sent, the first value
recorded for a pair winning. So replaying twice, or after a resume that re-measured steps past
its checkpoint, never logs a step twice; and an outage or a killed worker loses nothing that
reached the record. A line cut short by a crash mid-write is ignored (it was never acknowledged).

A sweep keeps its records in `<storage>/<sweep>-run<parent run id>-journal/` and a copy travels inside each
checkpoint (`metrics.jsonl`), so a trial resumed on another node starts from its record too.
A text artifact MLflow did not take (`predictions.jsonl`, `task_metrics.csv` of a trial that ended
during an outage) is kept beside the record, in `<run id>.artifacts/`, until a replay has uploaded it.
`sync_folder` is what `itstudy sync` and every rerun of a study call.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

log = logging.getLogger(__name__)

CHECKPOINT_COPY = "metrics.jsonl"
"""The record's name inside a checkpoint folder."""
SYNCED_SUFFIX = ".synced"
"""Beside a record: its size in bytes when MLflow last held all of it (a later sync skips it unread)."""
ARTIFACTS_SUFFIX = ".artifacts"
"""Beside a record: the folder of the run's text artifacts that MLflow has not taken yet."""


class MetricJournal:
    """One run's append-only record of metric points (JSON lines, fsync'd on every append)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.stem

    def append(self, points: Iterable[Metric]) -> None:
        """Write `points` and fsync: when this returns they survive a crash of this process or machine."""
        text = "".join(_line(point) for point in points)
        if not text:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as record:
            if record.tell() and _last_byte(record) != b"\n":
                text = "\n" + text  # a crash cut the last line short: keep it apart from the new ones
            record.write(text.encode())
            record.flush()
            os.fsync(record.fileno())

    def read(self) -> list[Metric]:
        """Every complete point, in the order recorded; a line cut short by a crash is skipped."""
        if not self.path.exists():
            return []
        points = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            try:
                entry = json.loads(line)
                points.append(Metric(entry["key"], float(entry["value"]), int(entry["timestamp"]), int(entry["step"])))
            except (ValueError, KeyError, TypeError):
                log.warning("%s line %d is incomplete (a crash mid-write); skipped", self.path, number)
        return points

    def latest(self) -> dict[str, float]:
        """Each key's value at its highest step: the run's final figures as the loop measured them."""
        newest: dict[str, Metric] = {}
        for point in self.read():
            if point.key not in newest or point.step >= newest[point.key].step:
                newest[point.key] = point
        return {key: point.value for key, point in newest.items()}

    def copy_into(self, folder: Path) -> None:
        """Put a copy of the record in a checkpoint folder, so it travels with the checkpoint."""
        if self.path.exists():
            shutil.copyfile(self.path, folder / CHECKPOINT_COPY)

    def adopt(self, checkpoint: Path | None) -> None:
        """Start from a restored checkpoint's copy when this node has no record of the run (another node wrote it)."""
        copy = checkpoint / CHECKPOINT_COPY if checkpoint else None
        if copy is not None and copy.exists() and not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(copy, self.path)

    @property
    def artifacts(self) -> Path:
        """The folder of artifacts kept for MLflow, laid out as in the run (`predictions.jsonl`, `sub/x.txt`)."""
        return self.path.parent / (self.run_id + ARTIFACTS_SUFFIX)

    def keep_artifact(self, text: str, artifact_file: str) -> Path:
        """Keep a text artifact MLflow did not take, for the next replay; written whole or not at all."""
        path = self.artifacts / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".partial-{path.name}")
        with open(partial, "w") as kept:
            kept.write(text)
            kept.flush()
            os.fsync(kept.fileno())
        os.replace(partial, path)
        return path

    def kept_artifacts(self) -> list[Path]:
        """The kept artifacts not uploaded yet (a write cut short by a crash left only a `.partial-` file)."""
        if not self.artifacts.is_dir():
            return []
        return sorted(path for path in self.artifacts.rglob("*") if path.is_file() and not path.name.startswith(".partial-"))

    def mark_synced(self, size: int) -> None:
        """MLflow holds the first `size` bytes of the record (measured before they were read)."""
        (self.path.parent / (self.path.name + SYNCED_SUFFIX)).write_text(str(size))

    def synced(self) -> bool:
        """Whether MLflow held the whole record when it was last synced and nothing was appended since."""
        marker = self.path.parent / (self.path.name + SYNCED_SUFFIX)
        return marker.exists() and self.path.exists() and marker.read_text() == str(self.path.stat().st_size)


class HeldPoints:
    """The (key, step) pairs a run holds in MLflow: read once per key, then kept up to date by the sender."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id
        self.pairs: set[tuple[str, int]] = set()
        self.keys: set[str] = set()

    def missing(self, points: list[Metric]) -> list[Metric]:
        """The points whose (key, step) MLflow does not hold, once each (the first recorded value wins)."""
        for key in {point.key for point in points} - self.keys:
            self.pairs.update((key, metric.step) for metric in self.client.get_metric_history(self.run_id, key))
            self.keys.add(key)
        unique: dict[tuple[str, int], Metric] = {}
        for point in points:
            if (point.key, point.step) not in self.pairs:
                unique.setdefault((point.key, point.step), point)
        return list(unique.values())

    def add(self, points: list[Metric]) -> None:
        self.pairs.update((point.key, point.step) for point in points)

    def forget(self) -> None:
        """After a failed send (which may have reached the store anyway): read MLflow again next time."""
        self.pairs.clear()
        self.keys.clear()


class Sent(NamedTuple):
    """What a replay sent MLflow."""

    points: int
    """Metric points it lacked."""
    artifacts: int
    """Kept artifacts it lacked."""


def replay(journal: MetricJournal, uri: str) -> Sent:
    """Send the store at `uri` the recorded points and kept artifacts its run lacks. Raises if MLflow
    fails (nothing is lost: the record and the kept files stay)."""
    client = MlflowClient(tracking_uri=uri)
    return Sent(_send_points(journal, client), _send_artifacts(journal, client))


def _send_points(journal: MetricJournal, client: MlflowClient) -> int:
    if journal.synced() or not journal.path.exists():
        return 0
    size = journal.path.stat().st_size  # lines appended while this runs are left for the next replay
    points = HeldPoints(client, journal.run_id).missing(journal.read())
    for start in range(0, len(points), MAX_METRICS_PER_BATCH):
        client.log_batch(journal.run_id, metrics=points[start : start + MAX_METRICS_PER_BATCH])
    journal.mark_synced(size)
    return len(points)


def _send_artifacts(journal: MetricJournal, client: MlflowClient) -> int:
    """Upload each kept artifact the run does not hold, then drop the local copy; idempotent (an upload
    that arrived before a failure is not repeated)."""
    sent = 0
    for path in journal.kept_artifacts():
        relative = path.relative_to(journal.artifacts)
        folder = relative.parent.as_posix() if relative.parent != Path(".") else None
        held = {info.path for info in client.list_artifacts(journal.run_id, folder)}
        if relative.as_posix() not in held:
            client.log_artifact(journal.run_id, str(path), folder)
            sent += 1
        path.unlink()
    return sent


def sync_folder(folder: Path, uri: str) -> tuple[Sent, list[str]]:
    """Replay every record (and kept artifacts) in `folder` to the store at `uri`: (what was sent, ids of
    runs still unsent).

    A record whose run the store does not have is reported unsent, never sent elsewhere.
    """
    folder = Path(folder)
    run_ids = {path.stem for path in folder.glob("*.jsonl")} | {path.name[: -len(ARTIFACTS_SUFFIX)] for path in folder.glob("*" + ARTIFACTS_SUFFIX)}
    points = artifacts = 0
    unsent = []
    for run_id in sorted(run_ids):
        try:
            sent = replay(MetricJournal(folder / f"{run_id}.jsonl"), uri)
        except Exception as error:  # report every run that could not be synced, not the first failure only
            log.warning("metrics of run %s (%s) not sent: %s", run_id, folder, error)
            unsent.append(run_id)
            continue
        points, artifacts = points + sent.points, artifacts + sent.artifacts
    return Sent(points, artifacts), unsent


def _line(point: Metric) -> str:
    return json.dumps({"key": point.key, "value": point.value, "step": point.step, "timestamp": point.timestamp}) + "\n"


def _last_byte(record) -> bytes:
    record.seek(-1, os.SEEK_END)
    return record.read(1)
