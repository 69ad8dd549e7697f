"""Where a result came from: Python and package versions, the git commit, the host.

Plain Python (no MLflow): the tracking logger records it as `env.*` params, and the Ray driver
passes its commit to workers whose working directory is a copy without `.git`.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

from itstudy.paths import GIT_COMMIT_ENV, GIT_DIRTY_ENV

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
