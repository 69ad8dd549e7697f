"""How much the console shows: by default what a user can act on; with `itstudy --verbose`, everything.

Ray, Tune and MLflow each print chatter a user of itstudy cannot act on (Tune's configuration box,
results folder and TensorBoard hint, its snapshot-frequency warnings, "checkpoint created" lines,
MLflow's "View run" links and schema-migration lines). Each is lowered through that library's own
setting, never by filtering output, so errors and warnings that matter still show: `quiet()` sets
them in this process (before Ray, Tune or MLflow is imported: several are read at import),
`ray_init_options()` and `worker_env()` carry them to Ray's workers. A variable the user set
already wins.
"""

from __future__ import annotations

import logging
import os

from itstudy.paths import VERBOSE_ENV

QUIET_ENV = {
    # Tune's legacy reporter honours verbose=0: no configuration box, results folder, TensorBoard hint
    # or progress tables. (Its result files stay: the ResultGrid reads a trial's metrics from them.)
    "RAY_AIR_NEW_OUTPUT": "0",
    # "Experiment state snapshotting has been triggered multiple times": every checkpoint forces a
    # snapshot when checkpoints_to_keep is small, which is how the studies are meant to run.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # "View run ... at: http://..." and "View experiment at" after every ended run.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # MLflow's INFO lines (creating and migrating the SQLite schema) on every new store.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}
"""Environment variables, read by Ray, Tune and MLflow themselves, that quiet their chatter."""
QUIET_LOGGERS = {
    # "Token authentication is enabled for this Ray cluster": said of the local Ray the sweep starts
    # itself, on loopback; a cluster's own token set-up is cluster/local-up.sh's.
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}
"""Loggers of this process lowered by level, for messages without a setting of their own."""


def verbose() -> bool:
    """Whether `itstudy --verbose` (or ITSTUDY_VERBOSE=1) asked for everything."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def quiet() -> None:
    """Lower Ray, Tune and MLflow chatter in this process, unless verbose; call before importing them."""
    if verbose():
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def ray_init_options() -> dict:
    """`ray.init` arguments: Ray's own INFO lines, and its workers' (Tune's checkpoint lines), at WARNING."""
    if verbose():
        return {}
    import ray

    return {"logging_level": logging.WARNING, "logging_config": ray.LoggingConfig(log_level="WARNING")}


def worker_env() -> dict[str, str]:
    """The quiet settings for Ray workers' runtime environment (on a cluster they do not inherit ours)."""
    if verbose():
        return {VERBOSE_ENV: os.environ[VERBOSE_ENV]}
    return {name: os.environ.get(name, value) for name, value in QUIET_ENV.items()}
