"""Pre-flight: everything a sweep refuses before Ray starts or MLflow is written.

Each refusal is a ConfigError naming the field (or the trial) at fault: a RAY_ADDRESS that is a
job-server URL or where no Ray answers (within seconds: `ray.init` would wait forever), a GPU
share Ray cannot place safely, a trial whose batch arithmetic does not fit its worker count,
whose model is unknown or whose tokenizer does not load or fit the model (everything `itstudy
train` checks: `check_run`), data that cannot be selected, a global batch larger than the
training set, a storage path this user cannot write, a variant that does not fit its tasks (a simplified definition on a task without
labels), CPUs or GPUs that the local machine does not have (on a cluster, `check_cluster` compares
with its autoscaling maximum once Ray answers), an unknown search-space type or a search over a
swept key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
from ray import tune

from itstudy.config import ConfigError, Study, with_overrides
from itstudy.data import SelectionError, SourceError, SyntheticError, TaskFileError, load_study_data
from itstudy.paths import storage_path
from itstudy.sweep.address import check_ray_address
from itstudy.sweep.cluster import check_capacity, local_capacity
from itstudy.sweep.trials import Trial
from itstudy.training.runner import check_batch_fits, check_run
from itstudy.variants import VariantError, apply_variant, apply_variant_to_test

SEARCH_TYPES = {
    "loguniform": lambda spec: tune.loguniform(spec["low"], spec["high"]),
    "uniform": lambda spec: tune.uniform(spec["low"], spec["high"]),
    "choice": lambda spec: tune.choice(spec["values"]),
}


def search_space(study: Study) -> dict[str, Any] | None:
    """The Tune search space of `search.space`, each key checked against the config; None without a search."""
    if study.search is None:
        return None
    if not study.search.space:
        raise ConfigError("search.space: empty; give at least one key, e.g. train.learning_rate: {type: loguniform, low: 1e-5, high: 1e-3}")
    space = {}
    for key, spec in study.search.space.items():
        where = f"search.space.{key}"
        if key in study.grid:
            raise ConfigError(f"{where}: '{key}' is also a grid axis; sweep it in one place")
        kind = spec.get("type")
        if kind not in SEARCH_TYPES:
            raise ConfigError(f"{where}.type: expected one of {sorted(SEARCH_TYPES)}, got {kind!r}")
        try:
            space[key] = SEARCH_TYPES[kind](spec)
            example = spec["values"][0] if kind == "choice" else spec["low"]
        except KeyError as missing:
            raise ConfigError(f"{where}: type {kind} needs '{missing.args[0]}'") from None
        except (ValueError, TypeError, IndexError) as error:
            raise ConfigError(f"{where}: {error}") from None
        with_overrides(study, {key: example}, origin=where)  # the key must name a field of that type
    return space


def preflight(study: Study, trials: list[Trial]) -> None:
    """Refuse what would fail inside Ray, while nothing has started yet."""
    check_ray_address()
    for trial in trials:
        try:
            check_gpu_share(trial.study)
            check_run(trial.study, trial.study.resources.workers_per_trial)
        except ConfigError as error:
            raise ConfigError(f"trial {trial.key}: {error}") from None
    check_variants(trials)
    check_storage(storage_path(study.tracking.storage_path))
    if not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():  # else `check_cluster` asks the cluster
        check_capacity(trials, local_capacity(), "this machine (no RAY_ADDRESS: a local Ray)")


def check_storage(path: str) -> None:
    """A local storage path (Tune state, checkpoints, metric records) must be writable: Tune would fail deep inside."""
    if "://" in path:
        return  # cloud storage: Ray reports its own errors
    folder = Path(path)
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not os.access(existing, os.W_OK):
        raise ConfigError(
            f"tracking.storage_path: {existing} is read-only for this user (Ray keeps checkpoints and Tune state in {path}); "
            f"make it writable or set tracking.storage_path (or $ITSTUDY_HOME) to a writable folder"
        )


def check_gpu_share(study: Study) -> None:
    """A GPU share is a fraction below one or whole GPUs, and only a single-worker trial may take a fraction.

    Two ranks of one NCCL group on the same GPU fail or deadlock, and Ray would place two
    fractional workers of a trial on one GPU whenever they fit.
    """
    resources = study.resources
    gpus = resources.gpus_per_worker
    if gpus > 1 and not gpus.is_integer():
        raise ConfigError(f"resources.gpus_per_worker={gpus}: expected a fraction below 1 or a whole number of GPUs")
    if resources.workers_per_trial > 1 and 0 < gpus < 1:
        raise ConfigError(
            f"resources.gpus_per_worker={gpus} with workers_per_trial={resources.workers_per_trial}: "
            f"a multi-worker trial needs whole GPUs (two of its ranks could share one GPU); use 1, or workers_per_trial=1"
        )


def check_variants(trials: list[Trial]) -> None:
    """Load each distinct data selection and apply its variants, so that a misfit fails before Ray
    starts; each trial's global batch must fit in its training set."""
    train_examples: dict[tuple[str, str], tuple[int, int]] = {}
    for trial in trials:
        study = trial.study
        identity = (study.data.model_dump_json(), study.variant.model_dump_json())
        if identity not in train_examples:
            train_examples[identity] = _training_set_size(study)
        try:
            check_batch_fits(study, *train_examples[identity])
        except ConfigError as error:
            raise ConfigError(f"trial {trial.key}: {error}") from None


def _training_set_size(study: Study) -> tuple[int, int]:
    """(training examples, training tasks) of the study's selection, its variants applied."""
    try:
        data = load_study_data(study.data, study.seed)
        train = [apply_variant(task, study.variant, study.seed) for task in data.train]
        apply_variant_to_test(data.test, study.variant, study.seed)
    except (SelectionError, SourceError, SyntheticError, TaskFileError) as error:
        raise ConfigError(f"data: {error}") from None
    except VariantError as error:
        raise ConfigError(f"variant: {error}") from None
    return sum(len(task.instances) for task in train), len(train)
