"""One study at a time: the lock a sweep holds while it runs, and the serialised creation of a store.

Two invocations of one sweep at once would train every trial twice into the same MLflow runs.
So a sweep holds a lock keyed by its store and its name (`<study>-<digest8>`) from before its
parent run is reopened until it ends; a second one is refused in one line naming the holder.

- SQLite store: a file lock `<store folder>/locks/<sweep>.lock` (`filelock`, an flock on Linux:
  the kernel releases it when its holder dies, SIGKILL included, so a stale lock is simply taken
  over); the holder (host, pid, Ray job id, start) is written beside it for the refusal message.
  Creating a new store is serialised by `<store>.lock` too, so two first runs never race MLflow's
  schema migration.
- server store: a lease on the sweep's parent run: tags `itstudy.lock.holder` and
  `itstudy.lock.heartbeat`, renewed every `HEARTBEAT_S` by a thread; a lease not renewed for
  `STALE_AFTER` heartbeats (its holder was killed) is taken over.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from itstudy.errors import UserError
from itstudy.tracking import FoundRun, RunLogger, get_run

HEARTBEAT_S = 30.0
"""How often a server-store lease is renewed."""
STALE_AFTER = 3
"""Heartbeats a lease may miss before another invocation takes it over."""
CONFIRM_S = 2.0
"""After writing a lease: wait this long and read it back, so that of two simultaneous takers one wins."""
HOLDER_TAG = "itstudy.lock.holder"
HEARTBEAT_TAG = "itstudy.lock.heartbeat"


class StudyLocked(UserError):
    """Another invocation is running this sweep."""


def holder() -> str:
    """Who this invocation is: host, pid and, inside `ray job submit`, the job id."""
    job = os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_ID")
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"pid {os.getpid()} on {socket.gethostname()}" + (f", Ray job {job}" if job else "") + f", since {started}"


def sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


@contextmanager
def study_lock(sweep: str, uri: str, find_parent: Callable[[], FoundRun]) -> Iterator[FoundRun]:
    """Hold sweep `sweep` of the store at `uri` while the block runs; yields its parent run
    (`find_parent()`, found or created under the file lock, so two first runs make one).
    StudyLocked if another invocation holds it."""
    database = sqlite_file(uri)
    if database is not None:
        with _file_lock(database.parent / "locks" / f"{sweep}.lock", sweep):
            yield find_parent()
    else:
        parent = find_parent()
        with _lease(uri, parent.run_id, sweep):
            yield parent


@contextmanager
def _file_lock(path: Path, sweep: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    who = path.with_suffix(".holder")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        held_by = who.read_text().strip() if who.exists() else "an unknown process"
        raise StudyLocked(
            f"sweep {sweep} is already running ({held_by}; lock {path}): wait for it, or stop it and rerun"
        ) from None
    try:
        who.write_text(holder() + "\n")
        yield
    finally:
        who.unlink(missing_ok=True)
        lock.release()


@contextmanager
def _lease(uri: str, run_id: str, sweep: str) -> Iterator[None]:
    me = holder()
    _refuse_live_lease(uri, run_id, sweep)
    logger = RunLogger(uri, run_id)
    logger.set_tags({HOLDER_TAG: me, HEARTBEAT_TAG: time.time()})
    time.sleep(CONFIRM_S)
    tags = get_run(uri, run_id).data.tags
    if tags.get(HOLDER_TAG) != me:
        raise StudyLocked(f"sweep {sweep} was started at the same time by {tags.get(HOLDER_TAG)} (MLflow run {run_id})")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(logger, stop), daemon=True, name="itstudy-lease")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        logger.set_tags({HOLDER_TAG: "", HEARTBEAT_TAG: 0})


def _refuse_live_lease(uri: str, run_id: str, sweep: str) -> None:
    tags = get_run(uri, run_id).data.tags
    held_by, beat = tags.get(HOLDER_TAG), float(tags.get(HEARTBEAT_TAG) or 0)
    age = time.time() - beat
    if held_by and age < HEARTBEAT_S * STALE_AFTER:
        raise StudyLocked(
            f"sweep {sweep} is already running ({held_by}; last heartbeat {age:.0f} s ago on MLflow run {run_id}): "
            f"wait for it, or stop it; its lease expires {HEARTBEAT_S * STALE_AFTER - age:.0f} s after it dies"
        )


def _heartbeat(logger: RunLogger, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        logger.set_tags({HEARTBEAT_TAG: time.time()})
