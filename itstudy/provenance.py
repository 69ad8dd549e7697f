"""Where a result came from: Python and package versions, the git commit, the host, and the content
of what a run reads besides its config (`inputs_digest`: its data and tokenizer).

Plain Python (no MLflow): the tracking logger records it as `env.*` params, and the Ray driver
passes its commit to workers whose working directory is a copy without `.git`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
from functools import cache, lru_cache
from importlib import metadata
from pathlib import Path

from itstudy.paths import GIT_COMMIT_ENV, GIT_DIRTY_ENV, SUPERNI_DIR_ENV, T5_TOKENIZER_ENV

VERSIONED_PACKAGES = ("torch", "transformers", "ray", "mlflow")


def environment_info() -> dict[str, str]:
    """Python and package versions, git commit (+ dirty flag), hostname and platform of this process."""
    info = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = "not installed"
    info["git_commit"], info["git_dirty"] = git_state()
    info["hostname"] = socket.gethostname()
    info["platform"] = platform.platform()
    return info


@cache
def git_state() -> tuple[str, str]:
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


# --- what a run reads besides its config --------------------------------------------------------


def inputs_digest(study) -> str:
    """A short hash of the content a run reads besides its config: the selected tasks (definitions,
    demonstrations, instances: the selection digest, so an edited SuperNI file or another synthetic
    generator shows) and the tokenizer's files.

    Part of the sweep and run names (`itstudy.config.identity_digest`): after the data or the
    tokenizer is fixed, a rerun starts a new sweep instead of resuming results made from the old
    content. Computed once per process for the same settings and files.
    """
    tokenizer = study.model.tokenizer
    tokenizer_folder = os.environ.get(T5_TOKENIZER_ENV, "") if tokenizer == "t5" else tokenizer
    superni_folder = str(study.data.superni_dir or os.environ.get(SUPERNI_DIR_ENV, "")) if study.data.source == "superni" else ""
    return _inputs_digest(
        study.data.model_dump_json(), study.seed, tokenizer, _folder_files(tokenizer_folder), _folder_files(superni_folder)
    )


def _folder_files(folder: str) -> tuple[tuple[str, int, int], ...]:
    # (path, size, mtime) of every file: the cache key, so a file replaced in this process is read again.
    if not folder or not Path(folder).is_dir():
        return ()
    files = sorted(path for path in Path(folder).rglob("*") if path.is_file())
    return tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files)


@lru_cache(maxsize=64)
def _inputs_digest(data_json: str, seed: int, tokenizer: str, tokenizer_files: tuple, superni_files: tuple) -> str:
    from itstudy.config import DataConfig  # the data layer sits above this plain module: imported on use
    from itstudy.data import load_study_data

    hasher = hashlib.sha256(load_study_data(DataConfig.model_validate(json.loads(data_json)), seed).digest.encode())
    hasher.update(tokenizer.encode())  # bpe: trained on the data above; a hub id: its name
    for path, _, _ in tokenizer_files:
        hasher.update(Path(path).name.encode() + Path(path).read_bytes())
    return hasher.hexdigest()[:16]
