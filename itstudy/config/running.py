"""Where and how a study runs: what a trial takes from the cluster, the optional search, and where
results are tracked. Sections of `itstudy.config.spec.Study`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from itstudy.config.base import DEV_PREFIX, SafeName, Spec, _int_is_a_float, _lenient_path

class ModelResources(Spec):
    """One model's resources over a `model.name` axis; a field left out keeps the study's value."""

    workers_per_trial: int | None = Field(None, ge=1)
    """Data-parallel workers per training run of this model."""
    cpus_per_worker: float | None = Field(None, gt=0)
    """CPUs per worker of this model."""
    gpus_per_worker: float | None = Field(None, ge=0)
    """GPUs per worker of this model (its untuned baseline takes one worker's share)."""

    _floats = field_validator("cpus_per_worker", "gpus_per_worker", mode="before")(_int_is_a_float)


class ResourcesConfig(Spec):
    """What one trial takes from the cluster."""

    workers_per_trial: int = Field(1, ge=1)
    """Data-parallel workers per training run (1: a plain Tune trial, >1: a TorchTrainer inside the trial)."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs per worker."""
    gpus_per_worker: float = Field(0.0, ge=0)
    """GPUs per worker; a fraction lets several small trials share one GPU."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """Cap on trials in flight; default: what the cluster's resources allow."""
    per_model: dict[str, ModelResources] = {}
    """Model name (a value of grid.model.name) -> its workers and CPUs/GPUs per worker, e.g. a 7B model on 8 GPUs, t5-small on 1."""

    _floats = field_validator("cpus_per_worker", "gpus_per_worker", mode="before")(_int_is_a_float)

    def of_model(self, name: str) -> "ResourcesConfig":
        """The resources of a trial of model `name`: its per_model entry over these, per_model emptied."""
        chosen = self.per_model[name].model_dump(exclude_none=True) if name in self.per_model else {}
        return self.model_copy(update={**chosen, "per_model": {}})


class SearchConfig(Spec):
    """An optional Optuna search nested under the grid."""

    space: dict[str, dict[str, Any]] = {}
    """Dotted key -> {type: loguniform|uniform|choice, low, high | values}."""
    num_samples: int = Field(4, ge=1)
    """Trials Optuna proposes per grid point."""
    metric: str = "dev_exact_match"
    """The metric Optuna optimises: a dev metric (dev_<metric>), so that no choice looks at the test tasks."""
    mode: Literal["max", "min"] = "max"
    """Whether the metric is maximised or minimised."""

    @field_validator("metric")
    @classmethod
    def _dev_only(cls, value: str) -> str:
        if not value.startswith(DEV_PREFIX):
            raise ValueError(
                f"a search chooses on dev metrics only, so that test numbers stay unseen; use {DEV_PREFIX}{value} "
                f"(data.dev_tasks sets the dev split)"
            )
        return value


class TrackingConfig(Spec):
    """Where results go."""

    tracking_uri: str | None = None
    """MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///$ITSTUDY_HOME/mlflow.db."""
    experiment: SafeName | None = None
    """MLflow experiment name; default: the study name."""
    storage_path: Path | None = None
    """Absolute folder (or URI) for Ray checkpoints; default: $ITSTUDY_HOME/ray_results."""
    system_metrics: bool = True
    """Log MLflow's system metrics (CPU, memory, disk, network, GPU; `system/...`) every 10 s on training runs."""
    log_model: bool = False
    """Log each training run's final model and tokenizer (`model/`), registered as a version of the study's model."""

    _paths = field_validator("storage_path", mode="before")(_lenient_path)
