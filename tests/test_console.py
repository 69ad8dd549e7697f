"""What the console shows: quiet settings by default, everything with --verbose, the progress line. No Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from itstudy import console
from itstudy.paths import VERBOSE_ENV
from itstudy.training.reporter import progress_text

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch):
    """A copy of the environment without the quiet settings; what `quiet()` sets stays in the test."""
    environ = {name: value for name, value in os.environ.items() if name not in (*console.QUIET_ENV, VERBOSE_ENV)}
    monkeypatch.setattr(os, "environ", environ)


def test_quiet_sets_each_library_setting_and_keeps_what_the_user_set(clean_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "DEBUG")
    console.quiet()
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0" and os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "DEBUG"  # the user's choice wins
    assert console.worker_env()["MLFLOW_LOGGING_LEVEL"] == "DEBUG"
    assert console.ray_init_options()["logging_level"] > 20  # above INFO


def test_verbose_leaves_every_library_at_its_own_default(clean_env, monkeypatch):
    monkeypatch.setenv(VERBOSE_ENV, "1")
    console.quiet()
    assert not any(name in os.environ for name in console.QUIET_ENV)
    assert console.ray_init_options() == {} and console.worker_env() == {VERBOSE_ENV: "1"}


def test_the_cli_takes_verbose_and_answers_help_fast():
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "itstudy.cli", "--help"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and "--verbose" in result.stdout
    assert time.perf_counter() - started < 5  # measured 0.6 s; generous for a loaded CI machine


def test_progress_line_has_step_loss_throughput_and_eta():
    line = progress_text(120, 420, {"train_loss": 2.3141, "tokens_per_s": 5400.4}, seconds_per_step=0.5)
    assert line == "step 120/420 (28%), loss 2.31, 5400 tokens/s, ETA 2m30s"
