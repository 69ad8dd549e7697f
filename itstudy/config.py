"""The typed study spec: every knob, its one default and a one-line doc.

An experiment file (`experiments/*.yaml`) is a `Study`. It is validated in full before any
cluster resource is taken: unknown keys and wrong types are refused with the file and the
dotted field named. Derived values (gradient accumulation, trial lists) are computed here,
never configured twice.

    study = load_study("experiments/demo.yaml", overrides=["train.learning_rate=1e-4"])
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from itstudy.errors import UserError

# The SuperNI commit that on-demand downloads read; every run logs it.
SUPERNI_COMMIT = "ae457ac40dafe0cd3dcd1370f0a29da54f33df4a"

# Where runs, checkpoints and the embedded MLflow store live unless configured otherwise.
DEFAULT_HOME_ENV = "ITSTUDY_HOME"


class ConfigError(UserError):
    """A study spec that cannot be run; the message names the file and the field."""


class Spec(BaseModel):
    """Base of every config section: unknown keys and silent type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, frozen=True)


def _lenient_path(value: Any) -> Any:
    # YAML has no path type; accept strings for Path fields even in strict mode.
    return Path(value).expanduser() if isinstance(value, str) else value


class ClassificationRule(Spec):
    """Which tasks count as classification tasks, and hence have a label space."""

    name: Literal["labels_in_definition", "few_labels"] = "labels_in_definition"
    """labels_in_definition: at most max_labels distinct normalised outputs, each named in the definition; few_labels: the count alone."""
    max_labels: int = Field(10, ge=2)
    """Most distinct normalised outputs a classification task may have."""
    over_instances: int = Field(100, ge=1)
    """How many leading instances the rule looks at (SuperNI's evaluation instances are the first 100)."""


class SyntheticConfig(Spec):
    """The project's own task suite, generated deterministically (no download)."""

    seed: int = 0
    """Seed of the generator; the same seed writes the same suite."""
    instances_per_task: int = Field(200, ge=10)
    """Instances generated per task (training tasks sample from these; test tasks use the first test_instances_per_task)."""


class DataConfig(Spec):
    """Which tasks and instances a run trains and evaluates on."""

    source: Literal["synthetic", "superni"] = "synthetic"
    """synthetic: the generated suite; superni: SuperNI tasks from superni_dir or downloaded on demand."""
    superni_dir: Path | None = None
    """A local SuperNI checkout (tasks/, splits/); default: $ITSTUDY_SUPERNI_DIR, else download into cache_dir."""
    superni_commit: str = SUPERNI_COMMIT
    """The SuperNI GitHub commit that downloads read."""
    superni_url: str = "https://raw.githubusercontent.com/allenai/natural-instructions"
    """Where downloads read raw files, as <url>/<commit>/tasks/<task>.json (a mirror may replace GitHub)."""
    cache_dir: Path | None = None
    """Download cache; default: $ITSTUDY_CACHE or ~/.cache/itstudy."""
    split: str = "default"
    """The official split folder under splits/."""
    train_tasks: list[str] | None = None
    """Explicit training task names (replaces the split's list)."""
    test_tasks: list[str] | None = None
    """Explicit test task names (replaces the split's list)."""
    test_task_kind: Literal["all", "classification", "generation"] = "all"
    """Keep only test tasks of this kind."""
    train_task_kind: Literal["all", "classification", "generation"] = "all"
    """Keep only training tasks of this kind."""
    categories: list[str] | None = None
    """Keep only tasks whose first category is listed (SuperNI spelling)."""
    languages: list[str] | None = None
    """Keep only tasks whose input, output and instruction languages are all listed (e.g. [English])."""
    max_train_tasks: int | None = Field(None, ge=1)
    """Use only the first N training tasks in sorted order (the 'task diversity' factor)."""
    instances_per_task: int = Field(100, ge=1)
    """Training instances sampled per task with the run's seed (Tk-Instruct default 100)."""
    test_instances_per_task: int = Field(100, ge=1)
    """Evaluation instances per test task: the first N, as SuperNI does."""
    on_short_task: Literal["cap", "refuse"] = "cap"
    """When a task has fewer instances than asked: cap (use all and report) or refuse."""
    classification: ClassificationRule = ClassificationRule()
    """The rule that decides which tasks have a label space."""
    synthetic: SyntheticConfig = SyntheticConfig()
    """Settings of the synthetic suite (used when source is synthetic)."""

    _paths = field_validator("superni_dir", "cache_dir", mode="before")(_lenient_path)


class VariantConfig(Spec):
    """How a task's instruction is altered: a definition transform times an example transform."""

    definition: Literal["original", "simplified", "none"] = "original"
    """original: the task's Definition; simplified: only the output space (template below); none: no definition."""
    examples: Literal["original", "delusive", "none"] = "original"
    """original: the first num_examples positive examples; delusive: same inputs, wrong outputs; none."""
    num_examples: int = Field(2, ge=0)
    """Positive examples shown (Tk-Instruct: 2)."""
    delusive_strategy: Literal["permute", "other_label", "random_label"] = "other_label"
    """permute: a random derangement of outputs among shown examples; other_label: a different label of the task; random_label: uniform label (Min et al. 2022)."""
    simplified_template: str = "Output one of the following: {labels}."
    """The simplified definition; {labels} is the task's label list joined by ', '."""
    num_negative_examples: int = Field(0, ge=0)
    """Negative examples shown (Tk-Instruct: 0)."""

    @field_validator("simplified_template")
    @classmethod
    def _template_names_labels(cls, value: str) -> str:
        if value.count("{labels}") != 1 or value.replace("{labels}", "").count("{"):
            raise ValueError("simplified_template must contain '{labels}' exactly once and no other {field}")
        return value
    apply_to_test: bool = True
    """Test prompts show the altered instruction too (train and test alike); false: test prompts keep the original instruction."""

    @property
    def name(self) -> str:
        """A short stable name used in run names, tags and reports."""
        return f"def-{self.definition}+ex-{self.examples}"


MODEL_SHAPES = ("t5-tiny", "t5-small", "t5-base", "t5-large", "t5-xl")


class ModelConfig(Spec):
    """Which model to fine-tune and how to tokenise."""

    name: str = "t5-tiny"
    """A named shape initialised from scratch (t5-tiny, t5-small, t5-base, t5-large, t5-xl), a Hugging Face id, or a local folder."""
    tokenizer: str = "t5"
    """t5: the T5 SentencePiece vocabulary from $ITSTUDY_T5_TOKENIZER or the hub; a hub id or folder; or 'bpe' to train one on the run's data."""
    precision: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU. fp16 is refused for T5 (it overflows to NaN)."""
    bpe_vocab_size: int = Field(2000, ge=100)
    """Vocabulary size when tokenizer is 'bpe'."""

    @model_validator(mode="after")
    def _refuse_fp16(self) -> "ModelConfig":
        if self.precision == "fp16":
            raise ValueError(
                "precision 'fp16' is refused for T5: T5 was trained in bf16 and overflows to NaN in fp16 "
                "(transformers#4938); use 'bf16' on GPU or 'fp32'"
            )
        return self


class TrainConfig(Spec):
    """The optimisation of one training run."""

    global_batch_size: int = Field(16, ge=1)
    """Sequences per optimiser step over all workers; accumulation is derived from it."""
    per_device_batch_size: int = Field(8, ge=1)
    """Sequences per forward pass on one worker."""
    learning_rate: float = Field(5e-5, gt=0)
    """Peak AdamW learning rate (Tk-Instruct: 5e-5)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    schedule: Literal["constant", "linear"] = "constant"
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps."""
    epochs: float = Field(2.0, gt=0)
    """Passes over the training set (Tk-Instruct: 2)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimiser steps (overrides epochs)."""
    max_source_length: int = Field(1024, ge=16)
    """Prompt tokens kept (Tk-Instruct: 1024)."""
    max_target_length: int = Field(128, ge=1)
    """Target tokens kept (Tk-Instruct: 128)."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Gradient norm clipping; null turns it off."""
    eval_every_steps: int | None = Field(None, ge=1)
    """Evaluate and checkpoint every N steps; null: only at the end."""
    checkpoints_to_keep: int = Field(2, ge=1)
    """Checkpoints Ray keeps per run."""
    max_failures: int = Field(1, ge=0)
    """Restarts of the workers from the last checkpoint after a failure (Ray Train FailureConfig)."""
    log_every_steps: int = Field(10, ge=1)
    """Steps between training-metric logs."""
    fail_at_step: int | None = Field(None, ge=1)
    """Fault injection for tests: rank 0 raises once at this step (only when no checkpoint has been restored)."""

    @field_validator("learning_rate", "weight_decay", "epochs", mode="before")
    @classmethod
    def _int_is_a_float(cls, value: Any) -> Any:
        # YAML writes 1 and 1e-4 as int and float; an int is a valid float here.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class EvalConfig(Spec):
    """Zero-shot evaluation on the test tasks."""

    batch_size: int = Field(32, ge=1)
    """Prompts per generation batch."""
    max_new_tokens: int = Field(32, ge=1)
    """Tokens generated per prediction (classification labels are short)."""
    add_task_name: bool = False
    """Prefix the task name to the prompt (Tk-Instruct option, off by default)."""


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

    @field_validator("cpus_per_worker", "gpus_per_worker", mode="before")
    @classmethod
    def _int_is_a_float(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class SearchConfig(Spec):
    """An optional Optuna search nested under the grid."""

    space: dict[str, dict[str, Any]] = {}
    """Dotted key -> {type: loguniform|uniform|choice, low, high | values}."""
    num_samples: int = Field(4, ge=1)
    """Trials Optuna proposes per grid point."""
    metric: str = "exact_match"
    """The metric Optuna optimises."""
    mode: Literal["max", "min"] = "max"
    """Whether the metric is maximised or minimised."""


BASELINES = ("random", "majority", "majority_oracle", "copy_demo", "untuned")


class TrackingConfig(Spec):
    """Where results go."""

    tracking_uri: str | None = None
    """MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///$ITSTUDY_HOME/mlflow.db."""
    experiment: str | None = None
    """MLflow experiment name; default: the study name."""
    storage_path: Path | None = None
    """Absolute folder (or URI) for Ray checkpoints; default: $ITSTUDY_HOME/ray_results."""

    _paths = field_validator("storage_path", mode="before")(_lenient_path)


class Study(Spec):
    """One experiment file: what to train, on what, how, over which grid, with which baselines."""

    name: str = Field("study", pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the MLflow experiment and every run folder."""
    description: str = ""
    """What the study reproduces (shown in reports)."""
    seed: int = 42
    """Seed of sampling, variants, initialisation and data order."""
    data: DataConfig = DataConfig()
    variant: VariantConfig = VariantConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()
    baselines: list[Literal["random", "majority", "majority_oracle", "copy_demo", "untuned"]] = ["random", "majority"]
    """Baselines run next to the trials, once per test-task set and seed."""
    grid: dict[str, list[Any]] = {}
    """Dotted key -> values; the sweep runs the product, e.g. {'variant.definition': [original, simplified], 'seed': [1, 2]}."""
    search: SearchConfig | None = None
    """Optional Optuna search over hyperparameters within each grid point."""
    debug: bool = False
    """Smoke mode: a few steps and instances, for CI."""

    @model_validator(mode="after")
    def _check_grid_keys(self) -> "Study":
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid.{key}: an axis needs at least one value")
            if key in ("grid", "search", "name"):
                raise ValueError(f"grid.{key}: this key cannot be swept")
            for value in values:
                # Each point must itself be a valid study; checked here so a bad axis fails up front.
                _apply_override(self.model_dump(), key, value, origin="grid")
        return self


# --- loading, overrides, derived values --------------------------------------------------------


def _apply_override(tree: dict, dotted: str, value: Any, origin: str) -> dict:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"{origin}: '{dotted}' does not name a config field ('{part}' is not a section)")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"{origin}: '{dotted}' does not name a config field")
    node[parts[-1]] = value
    return tree


class _YamlLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string; read it as a float."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def parse_override(text: str) -> tuple[str, Any]:
    """`train.learning_rate=1e-4` -> ('train.learning_rate', 0.0001); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}': expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    return key.strip(), read_yaml(raw) if raw.strip() else None


def _format_errors(error: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid study spec"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        got = item.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {where}: {item['msg']}{got_text}")
    return "\n".join(lines)


def study_from_dict(raw: dict, origin: str = "<dict>") -> Study:
    """Validate a plain dict as a Study; errors name `origin` and the dotted field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of config sections at the top level, got {type(raw).__name__}")
    try:
        return Study.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, origin)) from None


def load_study(path: str | Path | None, overrides: list[str] = ()) -> Study:
    """Read an experiment YAML file (None: the built-in defaults), apply `KEY=VALUE` overrides, validate."""
    raw = _read_experiment_file(Path(path)) if path is not None else {}
    full = Study.model_construct().model_dump()  # defaults, so overrides can name any field
    merged = _deep_merge(full, raw)
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(merged, key, value, origin=f"override '{text}'")
    return study_from_dict(merged, origin=str(path) if path is not None else "defaults")


def _read_experiment_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        raw = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return raw


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("grid",):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def with_overrides(study: Study, overrides: dict[str, Any], origin: str = "override") -> Study:
    """A copy of `study` with dotted-key values replaced, re-validated."""
    tree = study.model_dump()
    for key, value in overrides.items():
        _apply_override(tree, key, value, origin=origin)
    tree["grid"] = {}
    return study_from_dict(tree, origin=origin)


def apply_debug(study: Study, keep: Iterable[str] = ()) -> Study:
    """`debug: true` made concrete: a few optimiser steps on a few tasks and instances, short prompts.

    The global batch becomes one micro-batch per worker, so that a handful of training instances
    still fill it. Keys in `keep` (a sweep's grid values) stay as they are, so every grid point
    stays a trial. A study without `debug` is returned unchanged.
    """
    if not study.debug:
        return study
    data, train, evaluation = study.data, study.train, study.eval
    caps = {
        "data.max_train_tasks": min(data.max_train_tasks or 8, 8),
        "data.test_instances_per_task": min(data.test_instances_per_task, 8),
        "train.max_steps": min(train.max_steps or 5, 5),
        "train.global_batch_size": train.per_device_batch_size * study.resources.workers_per_trial,
        "train.max_source_length": min(train.max_source_length, 256),
        "train.eval_every_steps": None,
        "eval.max_new_tokens": min(evaluation.max_new_tokens, 16),
    }
    return with_overrides(study, {k: v for k, v in caps.items() if k not in set(keep)}, origin="debug")


def to_plain(study: Study) -> dict:
    """The study as JSON-safe plain data (paths as strings), for YAML artifacts and hashing."""
    return json.loads(study.model_dump_json())


def config_digest(study: Study) -> str:
    """A short stable hash of the full config: same config, same digest, same run names."""
    return hashlib.sha256(json.dumps(to_plain(study), sort_keys=True).encode()).hexdigest()[:10]


def itstudy_home() -> Path:
    """The folder for the embedded MLflow store and Ray results: $ITSTUDY_HOME or ./itstudy-runs (absolute)."""
    return Path(os.environ.get(DEFAULT_HOME_ENV, "itstudy-runs")).expanduser().resolve()


def gradient_accumulation(train: TrainConfig, world_size: int) -> int:
    """Micro-batches per optimiser step on each worker, derived from the global batch.

    global = per_device x world_size x accumulation; a global batch that does not divide is
    refused rather than silently changed (Tk-Instruct#10: the effective batch moved with the
    GPU count and results did not reproduce).
    """
    per_step = train.per_device_batch_size * world_size
    if train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={train.global_batch_size} is not divisible by "
            f"per_device_batch_size ({train.per_device_batch_size}) x workers ({world_size}) = {per_step}; "
            f"choose a multiple of {per_step}"
        )
    return train.global_batch_size // per_step
