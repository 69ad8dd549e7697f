"""Shared fixtures. Real data is reached through the environment variables that `make test` and
`.ci/run` set (ITSTUDY_SUPERNI_DIR, ITSTUDY_T5_TOKENIZER); tests that need it skip with a reason."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest


def _env_dir(variable: str, must_contain: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set (make test sets it to ../shared)")
    path = Path(value)
    if not (path / must_contain).exists():
        pytest.skip(f"{variable}={path} has no {must_contain}")
    return path


@pytest.fixture(scope="session")
def superni_dir() -> Path:
    """The real SuperNI sample (tasks/, splits/)."""
    return _env_dir("ITSTUDY_SUPERNI_DIR", "tasks")


@pytest.fixture(scope="session")
def t5_tokenizer_dir() -> Path:
    """A folder holding the real T5 spiece.model."""
    return _env_dir("ITSTUDY_T5_TOKENIZER", "spiece.model")


@pytest.fixture(scope="session")
def t5_tokenizer(t5_tokenizer_dir):
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(t5_tokenizer_dir))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch) -> Path:
    """Every test writes its MLflow store, Ray results and caches under its own tmp folder."""
    home = tmp_path / "itstudy-home"
    monkeypatch.setenv("ITSTUDY_HOME", str(home))
    monkeypatch.setenv("ITSTUDY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _free_ports(count: int = 1) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:  # held together, so the ports differ
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="session")
def free_ports():
    """`free_ports(n)`: n distinct TCP ports on 127.0.0.1 that nothing listens on when it is called."""
    return _free_ports


def _kill_tree(process: subprocess.Popen) -> None:
    import psutil

    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


@pytest.fixture(scope="session")
def kill_tree():
    """`kill_tree(process)`: SIGKILL a started command and every process it started (its local Ray
    included), as a crash or `kill -9` would, and wait for them."""
    return _kill_tree
