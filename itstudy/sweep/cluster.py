"""The Ray side of a sweep: the Ray session, the tracking URI its workers reach, and per-trial resources.

A single-worker trial takes cpus/gpus_per_worker (a fraction of a GPU lets small trials share
one) and runs the training loop in the Tune trial itself. A multi-worker trial's driver takes
one unit of the custom `trial_driver` resource instead of a CPU (a Tune driver otherwise holds a
CPU that its own Train workers need) and its TorchTrainer reserves the workers. Trials in
flight: resources.max_concurrent_trials, else as many as the cluster fits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import ray
from ray import tune

from itstudy.config import ConfigError, Study
from itstudy.sweep.trainable import SweepContext, resolve_trial
from itstudy.sweep.trials import Trial
from itstudy.tracking import worker_env

TRIAL_DRIVER = "trial_driver"
"""Custom Ray resource that the driver of a multi-worker trial takes instead of a CPU."""
LOCAL_TRIAL_DRIVERS = 64
"""`trial_driver` units of a local Ray started by the sweep (a count of drivers, not a real limit)."""


@contextmanager
def ray_session(uri: str) -> Iterator[str]:
    """Ray for the sweep, its workers given the tracking settings; yields the URI as workers reach it.

    RAY_ADDRESS (set inside `ray job submit`) names the cluster; without it a local Ray starts,
    limited to this machine's CPUs. A Ray already initialised by the caller is used as it is.
    """
    if ray.is_initialized():
        yield uri
        return
    local = {} if os.environ.get("RAY_ADDRESS") else {"resources": {TRIAL_DRIVER: LOCAL_TRIAL_DRIVERS}, "include_dashboard": False}
    # Inside a job the job's runtime environment applies too; the sweep's tracking settings win.
    os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    ray.init(runtime_env={"env_vars": worker_env(uri)}, **local)
    try:
        worker_uri = worker_tracking_uri(uri)
        if worker_uri != uri:  # the runtime environment is fixed at init: start over with the head's address
            ray.shutdown()
            ray.init(runtime_env={"env_vars": worker_env(worker_uri)}, **local)
        yield worker_uri
    finally:
        ray.shutdown()


def worker_tracking_uri(uri: str) -> str:
    """`uri`, with a loopback host swapped for this (head) node's address when the cluster has other nodes."""
    parsed = urlparse(uri)
    alive = [node for node in ray.nodes() if node["Alive"]]
    if parsed.hostname not in ("127.0.0.1", "localhost") or len(alive) < 2:
        return uri
    host = ray.util.get_node_ip_address()
    return parsed._replace(netloc=f"{host}:{parsed.port}" if parsed.port else host).geturl()


def check_cluster(trials: list[Trial]) -> None:
    """Refuse multi-worker trials on a cluster that does not declare the `trial_driver` resource."""
    if any(trial.study.resources.workers_per_trial > 1 for trial in trials) and not ray.cluster_resources().get(TRIAL_DRIVER):
        raise ConfigError(
            f"resources.workers_per_trial > 1 needs the custom Ray resource '{TRIAL_DRIVER}' on the cluster: "
            f"start its head with --resources='{{\"{TRIAL_DRIVER}\": 16}}' (cluster/local-up.sh does)"
        )


def max_concurrent_trials(study: Study, trials: list[Trial]) -> int:
    """resources.max_concurrent_trials, else how many of the largest trial the cluster fits now (at least 1)."""
    if study.resources.max_concurrent_trials:
        return study.resources.max_concurrent_trials
    available = ray.cluster_resources()
    fits = []
    for trial in trials:
        resources = trial.study.resources
        fit = available.get("CPU", 0) // (resources.workers_per_trial * resources.cpus_per_worker)
        if resources.gpus_per_worker:
            fit = min(fit, available.get("GPU", 0) // (resources.workers_per_trial * resources.gpus_per_worker))
        fits.append(fit)
    return max(1, int(min(fits)))


class TrialResources:
    """Tune's per-trial resource request: what the trial's own config asks for."""

    def __init__(self, context: SweepContext):
        self.context = context

    def __call__(self, config: dict) -> tune.PlacementGroupFactory:
        resources = resolve_trial(config, self.context).study.resources
        if resources.workers_per_trial > 1 and config["trial"]["kind"] == "trial":
            return tune.PlacementGroupFactory([{TRIAL_DRIVER: 1}])
        return tune.PlacementGroupFactory([{"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker}])
