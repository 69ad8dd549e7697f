"""Where things live: every environment variable the project reads and the folders derived from them.

One module so that a newcomer finds every path and variable name in one place, and so that the
variables forwarded to Ray workers are exactly the ones read here.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "ITSTUDY_HOME"
"""Folder for the embedded MLflow store, Ray results and reports; default ./itstudy-runs."""
CACHE_ENV = "ITSTUDY_CACHE"
"""Download and data cache; default ~/.cache/itstudy."""
SUPERNI_DIR_ENV = "ITSTUDY_SUPERNI_DIR"
"""A local SuperNI checkout (tasks/, splits/) used instead of downloading."""
T5_TOKENIZER_ENV = "ITSTUDY_T5_TOKENIZER"
"""A folder holding T5's spiece.model, used instead of the Hugging Face Hub."""
GIT_COMMIT_ENV = "ITSTUDY_GIT_COMMIT"
"""The code's commit, for jobs whose working directory is not a git checkout (`ray job submit`)."""
GIT_DIRTY_ENV = "ITSTUDY_GIT_DIRTY"
"""Whether that checkout had uncommitted changes."""
VERBOSE_ENV = "ITSTUDY_VERBOSE"
"""1: Ray, Tune and MLflow print everything they would (`itstudy --verbose`); default: what a user can act on."""

WORKER_ENV_VARIABLES = (HOME_ENV, CACHE_ENV, SUPERNI_DIR_ENV, T5_TOKENIZER_ENV, "HF_HUB_OFFLINE")
"""Forwarded to every Ray worker, so that workers read the same data, tokenizer and store as the driver."""


def itstudy_home() -> Path:
    """$ITSTUDY_HOME or ./itstudy-runs, absolute."""
    return Path(os.environ.get(HOME_ENV) or "itstudy-runs").expanduser().resolve()


def cache_home() -> Path:
    """$ITSTUDY_CACHE or ~/.cache/itstudy."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/itstudy").expanduser()


def storage_path(configured: str | Path | None) -> str:
    """Ray's storage path: the configured folder (tracking.storage_path), else $ITSTUDY_HOME/ray_results;
    absolute, because Ray refuses relative paths."""
    path = Path(configured) if configured else itstudy_home() / "ray_results"
    return str(path.expanduser().resolve())
