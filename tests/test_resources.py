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


def _bundles(study, kind: str, index: int = 0) -> list[dict]:
    context = SweepContext(
        study=to_plain(study), tracking_uri="", experiment_id="", parent_run_id="", train_storage_path="", journal_dir=""
    )
    point = expand_grid(study)[index].point
    return TrialResources(context)({"trial": {"kind": kind, "point": point}}).bundles


def test_untuned_trials_take_the_accelerator_of_the_training_trials():
    study = load_study(DEMO, HALF_GPU)
    assert _bundles(study, "trial") == [{"CPU": 1.0, "GPU": 0.5}]
    assert _bundles(study, "untuned") == [{"CPU": 1.0, "GPU": 0.5}]


def test_the_untuned_trial_beside_a_multi_worker_trial_takes_one_worker_share():
    study = load_study(DEMO, [*HALF_GPU, "resources.gpus_per_worker=1", "resources.workers_per_trial=2"])
    assert _bundles(study, "trial") == [{TRIAL_DRIVER: 1}]  # its TorchTrainer reserves the workers
    assert _bundles(study, "untuned") == [{"CPU": 1.0, "GPU": 1.0}]


# A model axis where the larger model trains on two whole GPUs and the smaller one shares half a GPU.
PER_MODEL = [
    *HALF_GPU,
    "grid={model.name: [scratch/t5-tiny, scratch/llama-tiny]}",
    'resources.per_model={"scratch/llama-tiny": {workers_per_trial: 2, gpus_per_worker: 1}}',
]


def test_each_model_of_a_model_axis_takes_its_own_resources_untuned_baseline_included():
    study = load_study(DEMO, PER_MODEL)
    small, large = expand_grid(study)
    assert (small.study.resources.workers_per_trial, small.study.resources.gpus_per_worker) == (1, 0.5)
    assert (large.study.resources.workers_per_trial, large.study.resources.gpus_per_worker) == (2, 1.0)
    assert large.study.resources.cpus_per_worker == 1.0 and large.study.resources.per_model == {}  # the rest kept, folded
    assert _bundles(study, "trial", 0) == _bundles(study, "untuned", 0) == [{"CPU": 1.0, "GPU": 0.5}]
    assert _bundles(study, "trial", 1) == [{TRIAL_DRIVER: 1}]  # its TorchTrainer reserves the two workers
    assert _bundles(study, "untuned", 1) == [{"CPU": 1.0, "GPU": 1.0}]  # one worker's share of its model
    # Resources do not name trials: the keys are those of the study without per_model.
    assert [t.key for t in expand_grid(study)] == [t.key for t in expand_grid(load_study(DEMO, PER_MODEL[:-1]))]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (['resources.per_model={"scratch/t5-small": {gpus_per_worker: 1}}'],
         r"resources.per_model.scratch/t5-small: not a value of grid.model.name \(scratch/t5-tiny, scratch/llama-tiny\)"),
        (['resources.per_model={"scratch/llama-tiny": {gpus_per_worker: -1}}'],
         r"resources.per_model.scratch/llama-tiny.gpus_per_worker: Input should be greater than or equal to 0"),
        (['resources.per_model={"scratch/llama-tiny": {gpus: 1}}'], r"resources.per_model.scratch/llama-tiny.gpus: Extra inputs"),
        (["grid={seed: [1]}"], r"resources.per_model.scratch/llama-tiny: needs model.name as a grid axis"),
    ],
)
def test_per_model_resources_name_a_model_of_the_grid_with_the_fields_of_resources(overrides, message):
    with pytest.raises(ConfigError, match=message) as refused:
        load_study(DEMO, [*PER_MODEL, *overrides])
    assert "\n" not in str(refused.value)


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
