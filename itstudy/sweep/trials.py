"""A study's grid expanded into trials, each a complete `Study` with a stable, readable key.

The key is what makes resuming flag-free: the same experiment file and overrides always give
the same trial keys, the same sweep name and hence the same Tune experiment folder and the same
MLflow runs. A key reads like `def-simplified+ex-original_n10_s1_3fa2c9d1`: the variant, the
training instances per task (`budget<N>` under data.train_budget), the seed, any other swept value, and the first eight hex digits
of the trial's identity digest: its whole config except the keys that change neither its
result nor the plan (`itstudy.config.NAME_NEUTRAL_KEYS`: tracking, resources, description...),
so two different trials never share a key and moving a study to another store or more workers
resumes it.

This module is plain Python (no Ray, no MLflow). It refuses nothing itself: every grid point
was validated when the study was loaded (`itstudy.config.study_from_dict`).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from itstudy.config import DataConfig, ResourcesConfig, Study, TrainConfig, at_grid_point, config_digest, identity_digest
from itstudy.provenance import inputs_digest

# Axes that every trial key names, whether or not they are swept: what a reader of a run list
# needs in order to tell trials apart at a glance.
_ALWAYS_NAMED = ("variant", "data.instances_per_task", "data.train_budget", "seed")

# Short labels for axes that appear in keys; any other axis is named by its last component.
_LABELS = {
    "data.instances_per_task": "n",
    "seed": "s",
    "data.num_train_tasks": "tasks",
    "train.learning_rate": "lr",
    "train.global_batch_size": "bs",
    "train.epochs": "ep",
    "train.max_steps": "steps",
    "model.name": "",
}

# DataConfig fields that change only what a model trains on; the test tasks, and hence the
# baselines, are the same whatever their values.
_TRAINING_ONLY_DATA_FIELDS = (
    "train_tasks", "train_task_kind", "num_train_tasks", "instances_per_task", "train_budget"
)


@dataclass(frozen=True)
class Trial:
    """One trial of the sweep: a training run, or the untuned-model baseline that stands beside one."""

    key: str
    """Stable name of the trial: the MLflow child run name and the Ray Train run name."""
    point: dict[str, Any]
    """The swept values of this trial (dotted key -> value), grid and search together."""
    study: Study
    """The trial's complete config (grid emptied)."""
    label: str
    """The configuration the trial belongs to: its key without seed and digest (what seeds share)."""

    def tags(self) -> dict[str, str]:
        """The MLflow tags that describe this trial: how the report and the MLflow UI find and group it."""
        return {
            "itstudy.kind": "trial",
            "itstudy.trial_key": self.key,
            "itstudy.variant": self.study.variant.name,
            "itstudy.definition": self.study.variant.definition,
            "itstudy.examples": self.study.variant.examples,
            "itstudy.instances_per_task": str(self.study.data.instances_per_task),
            "itstudy.seed": str(self.study.seed),
            "itstudy.model": self.study.model.name,
            "itstudy.config_digest": config_digest(self.study),
        }


def sweep_name(study: Study) -> str:
    """The sweep's name: the study name and its identity digest (same config and data and tokenizer
    content, same sweep; a change of store, resources or description alone resumes it)."""
    return f"{study.name}-{identity_digest(study, inputs_digest(study))[:8]}"


def grid_points(study: Study) -> list[dict[str, Any]]:
    """The product of the grid's axes, in the order the experiment file lists them."""
    axes = list(study.grid.items())
    return [dict(zip([key for key, _ in axes], values)) for values in itertools.product(*[v for _, v in axes])]


def make_trial(study: Study, point: dict[str, Any]) -> Trial:
    """The trial at `point` (grid values, possibly with sampled search values) of `study`."""
    resolved = at_grid_point(study, point)
    label = "_".join(_named_parts(resolved, point, with_seed=False))
    return Trial(key=trial_key(resolved, point), point=dict(point), study=resolved, label=label)


def expand_grid(study: Study) -> list[Trial]:
    """Every trial of the grid (one trial when the grid is empty)."""
    return [make_trial(study, point) for point in grid_points(study)]


def trial_key(resolved: Study, point: dict[str, Any]) -> str:
    """`<variant>_n<instances>_s<seed>[_<other swept values>]_<digest8>` of a resolved trial."""
    return "_".join([*_named_parts(resolved, point, with_seed=True), identity_digest(resolved)[:8]])


def _named_parts(resolved: Study, point: dict[str, Any], with_seed: bool) -> list[str]:
    data = resolved.data
    # with a fixed budget, instances_per_task is not what the run trains on: name the budget
    size = f"n{data.instances_per_task}" if data.train_budget is None else f"budget{data.train_budget}"
    parts = [resolved.variant.name, size]
    if with_seed:
        parts.append(f"s{resolved.seed}")
    for key, value in point.items():
        if not key.startswith(_ALWAYS_NAMED):
            parts.append(_LABELS.get(key, key.rsplit(".", 1)[-1]) + _short(value))
    return parts


def _short(value: Any) -> str:
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    # Keys become file names (Ray Train run folders) and URL parts (MLflow UI): keep them plain.
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")


def evaluation_set_key(study: Study) -> str:
    """A digest of what decides a study's test tasks and instances (training-only fields reset).

    Trials that share it share their baselines: the baselines run once per test-task set and
    seed, not once per trial.
    """
    defaults = DataConfig()
    data = study.data.model_copy(update={name: getattr(defaults, name) for name in _TRAINING_ONLY_DATA_FIELDS})
    # Only hashed, never run: validation would refuse a study without dev tasks whose eval is
    # left at its default (select_on: dev), though the study itself chose select_on: last.
    probe = Study.model_construct(name=study.name, data=data)
    return identity_digest(probe)[:8]


def untuned_trial(trial: Trial) -> Trial:
    """The untuned-model baseline that stands beside `trial`: same test prompts, model and seed.

    Whatever only shapes training (optimisation, resources, and the training sample unless the
    tokenizer is learnt from it) is reset, so trials that differ only there share one untuned
    baseline, as its predictions are the same.
    """
    study = trial.study
    kept_train = {"max_source_length": study.train.max_source_length}
    data = study.data
    if study.model.tokenizer != "bpe":  # a BPE vocabulary is trained on the training sample
        defaults = DataConfig()
        data = data.model_copy(update={name: getattr(defaults, name) for name in _TRAINING_ONLY_DATA_FIELDS})
    probe = study.model_copy(
        update={"data": data, "train": TrainConfig(**kept_train), "resources": ResourcesConfig(), "search": None}
    )
    # The model is named: over a model axis, each scale's untuned row stands beside its own trials.
    label = f"untuned_{_short(study.model.name)}_{study.variant.name}"
    label += f"_n{study.data.instances_per_task}" if study.model.tokenizer == "bpe" else ""
    key = f"baseline-{label}_s{study.seed}_{identity_digest(probe)[:8]}"
    return Trial(key=key, point=dict(trial.point), study=probe, label=label)
