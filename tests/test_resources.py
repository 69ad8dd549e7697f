"""What each trial asks of the cluster: one place for every trial kind, GPU shares Ray can place.

The sweep test runs on a local Ray that declares two GPUs on this CPU-only machine: placement
and concurrency are Ray's bookkeeping, checked from its placement-group table, not from CUDA
(torch sees no CUDA device here, so the trials compute on the CPU).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import ray

from itstudy.config import ConfigError, load_study, to_plain
from itstudy.loopback import local_ray_options
from itstudy.paths import itstudy_home
from itstudy.sweep import run_sweep
from itstudy.sweep.cluster import LOCAL_TRIAL_DRIVERS, TRIAL_DRIVER, TrialResources, max_concurrent_trials
from itstudy.sweep.preflight import preflight
from itstudy.sweep.trainable import SweepContext
from itstudy.sweep.trials import expand_grid
from itstudy.sweep.tuning import untuned_trials
from itstudy.tracking import worker_env

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments/demo.yaml"
# Two training trials and, beside them, their two untuned baselines: four trials of half a GPU.
HALF_GPU = [
    "grid={variant.definition: [original, simplified], seed: [1]}",
    "data.instances_per_task=20",
    "data.test_instances_per_task=8",
    "train.max_steps=4",
    "baselines=[untuned]",
    "resources.gpus_per_worker=0.5",
]


def _bundles(study, kind: str) -> list[dict]:
    context = SweepContext(
        study=to_plain(study), tracking_uri="", experiment_id="", parent_run_id="", train_storage_path="", journal_dir=""
    )
    point = expand_grid(study)[0].point
    return TrialResources(context)({"trial": {"kind": kind, "point": point}}).bundles


def test_untuned_trials_take_the_accelerator_of_the_training_trials():
    study = load_study(DEMO, HALF_GPU)
    assert _bundles(study, "trial") == [{"CPU": 1.0, "GPU": 0.5}]
    assert _bundles(study, "untuned") == [{"CPU": 1.0, "GPU": 0.5}]


def test_the_untuned_trial_beside_a_multi_worker_trial_takes_one_worker_share():
    study = load_study(DEMO, [*HALF_GPU, "resources.gpus_per_worker=1", "resources.workers_per_trial=2"])
    assert _bundles(study, "trial") == [{TRIAL_DRIVER: 1}]  # its TorchTrainer reserves the workers
    assert _bundles(study, "untuned") == [{"CPU": 1.0, "GPU": 1.0}]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["resources.workers_per_trial=2", "train.per_device_batch_size=8"], "gpus_per_worker=0.5 with workers_per_trial=2"),
        (["resources.gpus_per_worker=1.5"], "resources.gpus_per_worker=1.5: expected a fraction below 1 or a whole number"),
    ],
)
def test_gpu_shares_ray_cannot_place_safely_are_refused_before_ray_starts(overrides, message):
    study = load_study(DEMO, [*HALF_GPU, *overrides])
    with pytest.raises(ConfigError, match=message) as refused:
        preflight(study, expand_grid(study))
    assert "\n" not in str(refused.value)


class PlacementWatch:
    """Samples Ray's placement-group table while a sweep runs: the most half-GPU groups placed at once."""

    def __init__(self):
        self.table = ray.util.placement_group_table
        self.most_placed = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self.done.wait(0.2):
            placed = [
                group
                for group in self.table().values()
                if group["state"] == "CREATED" and list(group["bundles"].values()) == [{"CPU": 1.0, "GPU": 0.5}]
            ]
            self.most_placed = max(self.most_placed, len(placed))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


@pytest.mark.ray
def test_half_gpu_trials_untuned_included_run_four_at_once_on_two_gpus():
    study = load_study(DEMO, HALF_GPU)
    trials = expand_grid(study)
    assert len(trials) + len(untuned_trials(study, trials)) == 4
    uri = f"sqlite:///{itstudy_home() / 'mlflow.db'}"
    # Two GPUs declared on a CPU-only machine (run_sweep uses a Ray its caller started as it is).
    ray.init(
        num_cpus=4, num_gpus=2, resources={TRIAL_DRIVER: LOCAL_TRIAL_DRIVERS},
        include_dashboard=False, runtime_env={"env_vars": worker_env(uri)}, **local_ray_options(),
    )
    try:
        assert max_concurrent_trials(study, trials) == 4
        with PlacementWatch() as watch:
            result = run_sweep(study)
    finally:
        ray.shutdown()
    assert sorted(outcome.kind for outcome in result.outcomes) == ["trial", "trial", "untuned", "untuned"]
    assert {outcome.status for outcome in result.outcomes} == {"FINISHED"}
    assert watch.most_placed == 4
