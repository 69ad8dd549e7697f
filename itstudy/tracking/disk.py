"""A full disk, recognised wherever it surfaces, and said in one line.

A study writes to its disk from many places: the metric record (an `OSError` with errno ENOSPC),
Ray's copy of a checkpoint (pyarrow's `OSError: [Errno 28] ...`), MLflow's SQLite store
(`sqlite3.OperationalError: database or disk is full`, wrapped by SQLAlchemy and MLflow), inside a
Ray worker (a `RayTaskError` whose `cause` is the trial's error). Retrying any of them cannot help
until someone frees space, so the logger does not retry them, a trial turns them into `DiskFull`,
and the sweep stops at the first one instead of letting Tune retry the trial:

    with disk_full_named(uri, storage_folder):   # any disk-full error below -> DiskFull, one line
        ...
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from itstudy.tracking.store import TrackingError, _is_sqlite, _sqlite_path

SQLITE_FULL = "database or disk is full"
"""SQLite's message for SQLITE_FULL (its error code does not survive SQLAlchemy's and MLflow's wrapping)."""


class DiskFull(TrackingError):
    """No space left where the study writes; the message names the folder and what to do."""


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from (a Ray worker's cause included), is a full disk."""
    return disk_full_cause(error) is not None


def disk_full_cause(error: BaseException | None) -> BaseException | None:
    """The full-disk error in `error`'s chain, else None: the `DiskFull` a trial raised if any (the innermost:
    Ray's copy of it around the worker's traceback is one too), else the first ENOSPC or SQLITE_FULL."""
    chain = list(_chain(error))
    named = [link for link in chain if isinstance(link, DiskFull)]
    full = [link for link in chain if _is_full(link)]
    return named[-1] if named else (full or [None])[0]


def disk_full_error(folders: list[str | Path], error: BaseException | None = None) -> DiskFull:
    """The one line for a full disk: the folder (of `folders`, the local ones) whose disk has the least space."""
    if isinstance(error, DiskFull):
        return error
    local = [Path(folder) for folder in folders if folder and Path(folder).exists()]
    if not local:
        return DiskFull(f"no space left on the disk the study writes to ({error}); free space there and rerun the same command")
    folder = min(local, key=lambda path: shutil.disk_usage(path).free)
    free_mb = shutil.disk_usage(folder).free / 2**20
    return DiskFull(
        f"no space left on the disk of {folder} ({free_mb:.1f} MB free), where the study keeps its store, checkpoints "
        f"and metric records: free space there (or point $ITSTUDY_HOME / tracking.storage_path at a larger disk) and "
        f"rerun the same command: the study resumes from its last checkpoints"
    )


@contextlib.contextmanager
def disk_full_named(uri: str, *folders: str | Path) -> Iterator[None]:
    """Turn any full-disk error raised in the block into `DiskFull` naming the fullest of `folders` and, for an
    SQLite store at `uri`, its folder."""
    try:
        yield
    except Exception as error:
        cause = disk_full_cause(error)
        if cause is None:
            raise
        store = [_sqlite_path(uri).parent] if _is_sqlite(uri) else []
        raise disk_full_error([*folders, *store], cause) from None


def _is_full(error: BaseException) -> bool:
    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or SQLITE_FULL in str(error)


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then what it was raised from or during; a Ray task error's `cause` (the worker's own error) too."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        cause = getattr(error, "cause", None)
        error = cause if isinstance(cause, BaseException) else (error.__cause__ or error.__context__)
