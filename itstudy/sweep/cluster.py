"""The Ray side of a sweep: the Ray session, the tracking URI its workers reach, and per-trial resources.

Each trial's resources are its model's (`resources.per_model`, folded into the trial's study when
the grid is expanded, so this request, the TorchTrainer's workers and the capacity checks agree).
A single-worker trial, and every untuned baseline, takes cpus/gpus_per_worker (a fraction of a
GPU lets small trials share one) and runs in the Tune trial itself. A multi-worker trial's driver takes
one unit of the custom `trial_driver` resource instead of a CPU (a Tune driver otherwise holds a
CPU that its own Train workers need) and its TorchTrainer reserves the workers. Trials in
flight: resources.max_concurrent_trials, else as many as the cluster (at its autoscaling
maximum) fits. A trial that the cluster could never hold, even at that maximum (GPUs on a machine
without any, more CPUs than it has), is refused before it would wait forever (`check_capacity`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import ray
from ray import tune

from itstudy import console
from itstudy.config import ConfigError, ResourcesConfig, Study
from itstudy.loopback import local_ray_options
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
    local = {} if os.environ.get("RAY_ADDRESS") else {"resources": {TRIAL_DRIVER: LOCAL_TRIAL_DRIVERS}, "include_dashboard": False, **local_ray_options()}
    # Inside a job the job's runtime environment applies too; the sweep's tracking settings win.
    os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    local.update(console.ray_init_options())  # (also for a cluster's job: how much its workers log)
    ray.init(runtime_env={"env_vars": {**worker_env(uri), **console.worker_env()}}, **local)
    try:
        worker_uri = worker_tracking_uri(uri)
        if worker_uri != uri:  # the runtime environment is fixed at init: start over with the head's address
            ray.shutdown()
            ray.init(runtime_env={"env_vars": {**worker_env(worker_uri), **console.worker_env()}}, **local)
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
    """Refuse what this cluster cannot run: multi-worker trials without the `trial_driver` resource, and
    trials larger than the cluster at its autoscaling maximum."""
    if any(trial.study.resources.workers_per_trial > 1 for trial in trials) and not ray.cluster_resources().get(TRIAL_DRIVER):
        raise ConfigError(
            f"resources.workers_per_trial > 1 needs the custom Ray resource '{TRIAL_DRIVER}' on the cluster: "
            f"start its head with --resources='{{\"{TRIAL_DRIVER}\": 16}}' (cluster/local-up.sh does)"
        )
    check_capacity(trials, cluster_capacity(), "the Ray cluster (at its autoscaling maximum)")


def local_capacity() -> dict[str, float]:
    """What the local Ray that a sweep starts without RAY_ADDRESS will have: this machine's CPUs and GPUs."""
    import torch
    from ray._private.utils import get_num_cpus  # what `ray.init` itself counts (cgroup limits included)

    return {"CPU": get_num_cpus(), "GPU": torch.cuda.device_count()}


def check_capacity(trials: list[Trial], capacity: dict[str, float], where: str) -> None:
    """Refuse a trial whose workers need more CPUs or GPUs than `capacity` holds: Tune would wait for them forever."""
    for trial in trials:
        resources = trial.study.resources
        asked = (("CPU", "cpus_per_worker", resources.cpus_per_worker), ("GPU", "gpus_per_worker", resources.gpus_per_worker))
        for name, field, each in asked:
            need = each * resources.workers_per_trial
            if need > capacity.get(name, 0):
                raise ConfigError(
                    f"trial {trial.key}: resources.{field}={each:g} x workers_per_trial={resources.workers_per_trial} needs "
                    f"{need:g} {name}s; {where} has {capacity.get(name, 0):g}, so the trial would wait forever; lower it"
                    + (" or set resources.gpus_per_worker=0 to train on CPUs" if name == "GPU" else "")
                )


def max_concurrent_trials(study: Study, trials: list[Trial]) -> int:
    """resources.max_concurrent_trials, else how many of the largest trial the cluster can hold (at least 1).

    "Can hold" is the larger of what the cluster has now and what its autoscaler may add (the
    node groups of the cluster config, as Ray Train reads them), so that a cluster that starts
    with no GPU nodes does not get a concurrency of one.
    """
    if study.resources.max_concurrent_trials:
        return study.resources.max_concurrent_trials
    capacity = cluster_capacity()
    fits = []
    for trial in trials:
        resources = trial.study.resources
        fit = capacity.get("CPU", 0) // (resources.workers_per_trial * resources.cpus_per_worker)
        if resources.gpus_per_worker:
            fit = min(fit, capacity.get("GPU", 0) // (resources.workers_per_trial * resources.gpus_per_worker))
        fits.append(fit)
    return max(1, int(min(fits)))


def cluster_capacity() -> dict[str, float]:
    """Each resource's total: the cluster's now, or the autoscaler's maximum when that is larger."""
    from ray._private.state import state  # the GCS view that Ray Train also reads the maximum from

    capacity = dict(ray.cluster_resources())
    for name, most in (state.get_max_resources_from_cluster_config() or {}).items():
        capacity[name] = max(capacity.get(name, 0), most)
    return capacity


def trial_bundles(resources: ResourcesConfig, kind: str) -> list[dict[str, float]]:
    """The placement-group bundles of one trial: the one place that turns resources into a Ray request.

    A multi-worker training trial's driver takes a `trial_driver` unit (its TorchTrainer reserves
    the workers); every other trial, untuned baselines included, is one worker with the trial's
    CPUs and accelerator share (over a model axis, its model's), so that fractional GPUs pack
    several trials onto one GPU.
    """
    if resources.workers_per_trial > 1 and kind == "trial":
        return [{TRIAL_DRIVER: 1}]
    return [{"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker}]


class TrialResources:
    """Tune's per-trial resource request, from the resources of the training trial at the config's point.

    An untuned baseline's own study has its resources reset (its key must not depend on them),
    so it takes the resources of the training trial it stands beside: the same accelerator.
    """

    def __init__(self, context: SweepContext):
        self.context = context

    def __call__(self, config: dict) -> tune.PlacementGroupFactory:
        entry = config["trial"]
        training = resolve_trial({"trial": {**entry, "kind": "trial"}}, self.context)
        return tune.PlacementGroupFactory(trial_bundles(training.study.resources, entry["kind"]))
