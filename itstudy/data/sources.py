"""Where task files come from: a local folder in the SuperNI layout, or GitHub on demand.

A source answers two questions: which tasks does a split list (`task_names`), and what is in
one task (`load_task`). Three sources exist, all reading the same SuperNI layout
(`tasks/<task>.json`, `splits/<split>/{train,test}_tasks.txt`) through the same parser:

- a local folder: `data.superni_dir`, else `$ITSTUDY_SUPERNI_DIR`;
- a download cache: only the files a run needs are fetched from the SuperNI repository at the
  pinned commit (`data.superni_commit`), resumably (HTTP Range into a `.part` file), verified
  (it must parse) and recorded with its sha256 in `index.json`, so that later runs use the
  cached bytes only if they still match;
- the synthetic suite, written once into the cache by `itstudy.data.synthetic`.

It refuses: an unknown task name (one line naming the task and the source), a folder without
`tasks/`, a missing split list, and being offline with nothing cached (the error says how to
point at a local copy instead).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Protocol, TypeVar

import requests
import urllib3
from filelock import FileLock
from tqdm.auto import tqdm

from itstudy.config import DataConfig
from itstudy.data.superni import TaskFileError, parse_task
from itstudy.data.synthetic import cached_synthetic_suite
from itstudy.data.task import Task
from itstudy.errors import UserError
from itstudy.paths import SUPERNI_DIR_ENV, cache_home

log = logging.getLogger(__name__)

# (connect, read) seconds: a stalled transfer fails and can be resumed instead of hanging a run.
HTTP_TIMEOUT = (10, 60)
# Ranges count bytes of the file as stored; a compressed transfer would make them count something else.
_HEADERS = {"Accept-Encoding": "identity"}

# Task names become file names; anything else (slashes, '..') is refused before touching disk.
_TASK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")

Which = Literal["train", "test"]
T = TypeVar("T")


class SourceError(UserError):
    """Task files cannot be found or fetched; the message says where it looked and what to do."""


class UnknownTaskError(SourceError):
    """A task name that the source does not hold; the message names the task and the source."""


class _NotFound(Exception):
    """The server answered 404; the caller turns it into an error that names what was missing."""


class TaskSource(Protocol):
    """What selection needs from a source of SuperNI-format task files."""

    description: str
    """Where the tasks come from, for notes, logs and the run's dataset lineage."""

    def task_names(self, which: Which, split: str) -> list[str]:
        """The task names listed in splits/<split>/<which>_tasks.txt, in file order."""

    def load_task(self, name: str) -> Task:
        """The parsed task; UnknownTaskError if the source has no such task."""


def cache_root(data: DataConfig) -> Path:
    """data.cache_dir, else $ITSTUDY_CACHE, else ~/.cache/itstudy."""
    if data.cache_dir is not None:
        return Path(data.cache_dir).expanduser()
    return cache_home()


def make_source(data: DataConfig) -> TaskSource:
    """The source a data config names: the synthetic suite, a local SuperNI folder, or downloads."""
    if data.source == "synthetic":
        folder = cached_synthetic_suite(cache_root(data), data.synthetic)
        return LocalFolderSource(folder, description=f"synthetic suite {folder.name} at {folder}")
    if data.superni_dir is not None:
        return LocalFolderSource.checked(Path(data.superni_dir), origin="data.superni_dir")
    if os.environ.get(SUPERNI_DIR_ENV):
        return LocalFolderSource.checked(Path(os.environ[SUPERNI_DIR_ENV]), origin=f"${SUPERNI_DIR_ENV}")
    return DownloadSource(data.superni_url, data.superni_commit, cache_root(data) / "superni" / data.superni_commit)


def check_task_name(name: str, description: str) -> None:
    if not isinstance(name, str) or not _TASK_NAME.match(name):
        raise UnknownTaskError(f"task {name!r} is not a valid task name (letters, digits, _ . -) in {description}")


def parse_split_list(data: bytes, origin: str) -> list[str]:
    """The task names of a split file: one per line, blank lines ignored."""
    try:
        names = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise SourceError(f"{origin}: not UTF-8 text; expected one task name per line") from None
    for number, name in enumerate(names, start=1):
        if not _TASK_NAME.match(name):
            raise SourceError(f"{origin}: entry {number} {name!r} is not a task name; expected one task name per line")
    return names


@dataclass(frozen=True)
class LocalFolderSource:
    """Task files in a folder with the SuperNI layout (a checkout, a copy, or the synthetic suite)."""

    root: Path
    description: str

    @classmethod
    def checked(cls, root: Path, origin: str) -> "LocalFolderSource":
        root = root.expanduser()
        if not (root / "tasks").is_dir():
            raise SourceError(
                f"{origin}={root}: not a SuperNI folder (expected {root / 'tasks'}/ with <task>.json files "
                f"and splits/<split>/train_tasks.txt, test_tasks.txt)"
            )
        return cls(root, description=f"SuperNI folder {root}")

    def task_names(self, which: Which, split: str) -> list[str]:
        path = self.root / "splits" / split / f"{which}_tasks.txt"
        if not path.is_file():
            raise SourceError(f"{path}: no such split list in {self.description} (data.split={split!r})")
        return parse_split_list(path.read_bytes(), origin=str(path))

    def load_task(self, name: str) -> Task:
        check_task_name(name, self.description)
        path = self.root / "tasks" / f"{name}.json"
        if not path.is_file():
            raise UnknownTaskError(f"task '{name}' is not in {self.description} (no file tasks/{name}.json)")
        return parse_task(path.read_bytes(), name=name, origin=str(path))


class DownloadSource:
    """SuperNI files fetched from `<base_url>/<commit>/...` on demand into a verified cache folder."""

    def __init__(self, base_url: str, commit: str, folder: Path, session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.commit = commit
        self.cache = DownloadCache(folder, session or requests.Session())
        self.description = f"SuperNI {self.base_url} at commit {commit} (cache {folder})"

    def url(self, relative: str) -> str:
        return f"{self.base_url}/{self.commit}/{relative}"

    def task_names(self, which: Which, split: str) -> list[str]:
        relative = f"splits/{split}/{which}_tasks.txt"
        url = self.url(relative)
        try:
            return self.cache.get(relative, url, lambda data: parse_split_list(data, origin=url))
        except _NotFound:
            raise SourceError(f"{url}: no such split list in {self.description} (data.split={split!r})") from None

    def load_task(self, name: str) -> Task:
        check_task_name(name, self.description)
        relative = f"tasks/{name}.json"
        url = self.url(relative)
        try:
            return self.cache.get(relative, url, lambda data: parse_task(data, name=name, origin=url))
        except _NotFound:
            raise UnknownTaskError(f"task '{name}' is not in {self.description} ({url} answered 404)") from None


class DownloadCache:
    """Files under one folder, each fetched once, verified by a check function, and pinned by sha256.

    `index.json` maps a relative path to the sha256 of the bytes that passed the check. A cached
    file whose bytes no longer match (edited, truncated, bit rot) is fetched again. A transfer
    that breaks leaves `<file>.part`; the next attempt asks for the remaining bytes only (files at
    a pinned commit never change, so appending is safe, and the check still runs on the result).
    A file lock per file lets parallel trials share one cache.
    """

    def __init__(self, folder: Path, session: requests.Session):
        self.folder = Path(folder)
        self.session = session
        self.index_path = self.folder / "index.json"

    def get(self, relative: str, url: str, check: Callable[[bytes], T]) -> T:
        target = self.folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{target}.lock"):
            cached = self._verified_bytes(relative, target)
            if cached is not None:
                return check(cached)
            value, data = self._download_checked(url, target, check)
            os.replace(f"{target}.part", target)
            self._record(relative, data)
            return value

    def _verified_bytes(self, relative: str, target: Path) -> bytes | None:
        if not target.is_file():
            return None
        data = target.read_bytes()
        recorded = self._index().get(relative)
        if recorded == hashlib.sha256(data).hexdigest():
            return data
        log.warning("cached %s does not match its recorded sha256; fetching it again", target)
        target.unlink()
        return None

    def _download_checked(self, url: str, target: Path, check: Callable[[bytes], T]) -> tuple[T, bytes]:
        part = Path(f"{target}.part")
        resumed = part.exists() and part.stat().st_size > 0
        self._fetch_into(url, part)
        try:
            data = part.read_bytes()
            return check(data), data
        except (TaskFileError, SourceError):
            part.unlink()
            if not resumed:
                raise
        # The kept partial bytes were not the start of this file: fetch it whole once more.
        log.warning("resumed download of %s did not verify; fetching it whole", url)
        self._fetch_into(url, part)
        data = part.read_bytes()
        return check(data), data

    def _fetch_into(self, url: str, part: Path) -> None:
        offset = part.stat().st_size if part.exists() else 0
        headers = {**_HEADERS, "Range": f"bytes={offset}-"} if offset else _HEADERS
        try:
            with self.session.get(url, headers=headers, stream=True, timeout=HTTP_TIMEOUT) as response:
                if response.status_code == 404:
                    raise _NotFound(url)
                if response.status_code == 416:
                    return  # the .part already holds every byte; the check decides whether they are right
                response.raise_for_status()
                if offset and response.status_code != 206:
                    offset = 0  # the server ignored the Range header and sends the whole file
                self._write_body(response, part, offset)
        except requests.ConnectionError as error:
            raise SourceError(self._offline_message(url, part, error)) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            kept = part.stat().st_size if part.exists() else 0
            raise SourceError(f"{url}: download broke off ({type(error).__name__}); {kept} bytes kept in {part}; run again to resume") from None

    @staticmethod
    def _write_body(response: requests.Response, part: Path, offset: int) -> None:
        size = response.headers.get("Content-Length")
        total = offset + int(size) if size is not None else None
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
            disable=None, leave=False,
        ) as bar:
            # read1 hands over bytes as they arrive, so a transfer that breaks off keeps all it
            # received (iter_content drops a partly filled chunk when the connection fails).
            for chunk in iter(lambda: response.raw.read1(1 << 16), b""):
                out.write(chunk)
                bar.update(len(chunk))

    def _offline_message(self, url: str, part: Path, error: Exception) -> str:
        partial = f"; {part.stat().st_size} bytes kept in {part} for a resume" if part.exists() else ""
        reason = type(error).__name__
        return (
            f"cannot download {url} ({reason}) and it is not in the cache {self.folder}{partial}; "
            f"to work offline point at a local SuperNI copy: set data.superni_dir or ${SUPERNI_DIR_ENV}"
        )

    def _index(self) -> dict[str, str]:
        if not self.index_path.is_file():
            return {}
        try:
            return json.loads(self.index_path.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("cache index %s is unreadable; cached files will be fetched again", self.index_path)
            return {}

    def _record(self, relative: str, data: bytes) -> None:
        with FileLock(f"{self.index_path}.lock"):
            index = self._index()
            index[relative] = hashlib.sha256(data).hexdigest()
            scratch = self.index_path.with_suffix(f".{os.getpid()}.tmp")
            scratch.write_text(json.dumps(index, indent=1, sort_keys=True))
            os.replace(scratch, self.index_path)
