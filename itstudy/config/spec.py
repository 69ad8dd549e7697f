"""The typed study spec: every knob, its one default and a one-line doc.

An experiment file (`experiments/*.yaml`) is a `Study`. Every section refuses unknown keys,
silent type coercion and non-finite numbers; `itstudy.config.loading` reads the file and names
the file and the dotted field when one is refused. Derived values (gradient accumulation) are
computed here from the knobs, never configured twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from itstudy.config.base import ConfigError, SafeName, Spec, _int_is_a_float, _lenient_path
from itstudy.config.running import ResourcesConfig, SearchConfig, TrackingConfig
from itstudy.training.shapes import CAUSAL_SHAPES

# The SuperNI commit that on-demand downloads read; every run logs it.
SUPERNI_COMMIT = "ae457ac40dafe0cd3dcd1370f0a29da54f33df4a"

ModelFreeBaselineName = Literal["random", "majority", "majority_oracle", "copy_demo"]
"""Baselines that need no model (`itstudy.baselines` registers one function per name)."""
BaselineName = Literal[ModelFreeBaselineName, "untuned"]
"""Every baseline a study can run: the model-free ones and the untuned model beside each trial."""


class ClassificationRule(Spec):
    """Which tasks count as classification tasks, and hence have a label space."""

    name: Literal["labels_in_definition", "few_labels"] = "labels_in_definition"
    """labels_in_definition: at most max_labels distinct normalised outputs, each named in the definition; few_labels: the count alone."""
    max_labels: int = Field(10, ge=2)
    """Most distinct normalised outputs a classification task may have."""
    min_labels: int = Field(1, ge=1)
    """Fewest distinct normalised outputs it must show (1 counts a sample that shows one label, as SuperNI's MANIFEST does)."""
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
    num_train_tasks: int | None = Field(None, ge=1)
    """Training tasks drawn (seeded, category-stratified; a larger draw contains a smaller): the instruction-diversity axis; null: all."""
    instances_per_task: int = Field(100, ge=1)
    """Training instances sampled per task with the run's seed (Tk-Instruct default 100); replaced by train_budget when that is set."""
    train_budget: int | None = Field(None, ge=1)
    """Fixed-budget mode: this many training instances in all, dealt evenly over the drawn tasks (tasks x instances per task constant)."""
    dev_tasks: int = Field(4, ge=0)
    """Training tasks held out as dev tasks (seeded, category-stratified), on which every choice is made; 0: no dev split."""
    dev_instances_per_task: int = Field(20, ge=1)
    """Instances evaluated per dev task, sampled with the run's seed."""
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

    definition: Literal["original", "simplified", "none", "negated"] = "original"
    """original: the task's Definition; simplified: only the output space (template below); none: no definition; negated: test tasks' two labels swapped in definition and answers."""
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
    apply_to_test: bool = True
    """Test prompts show the altered instruction too (train and test alike); false: test prompts keep the original instruction."""

    @field_validator("simplified_template")
    @classmethod
    def _template_names_labels(cls, value: str) -> str:
        if value.count("{labels}") != 1 or value.replace("{labels}", "").count("{"):
            raise ValueError("simplified_template must contain '{labels}' exactly once and no other {field}")
        return value

    @model_validator(mode="after")
    def _negation_reaches_test(self) -> "VariantConfig":
        if self.definition == "negated" and not self.apply_to_test:
            raise ValueError("definition 'negated' alters only test prompts; it needs apply_to_test: true")
        return self

    @property
    def name(self) -> str:
        """A short stable name used in run names, tags and reports."""
        return f"def-{self.definition}+ex-{self.examples}"


class LoraConfig(Spec):
    """Low-rank adapters (LoRA, through peft): the model's own weights are frozen, only the adapters train."""

    r: int = Field(8, ge=1)
    """Rank of each adapter."""
    alpha: float = Field(16.0, gt=0)
    """Scale numerator: an adapter's output is multiplied by alpha / r."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapters' input."""
    target_modules: list[str] | None = None
    """Module names that get adapters (e.g. [q_proj, v_proj]); null: peft's default for the architecture (T5 q, v; LLaMA q_proj, v_proj)."""

    _floats = field_validator("alpha", "dropout", mode="before")(_int_is_a_float)


class ModelConfig(Spec):
    """Which model to fine-tune and how to tokenise."""

    name: str = "scratch/t5-tiny"
    """A shape initialised from scratch (scratch/t5-tiny, -small, -base, -large, -xl, scratch/llama-tiny), a Hugging Face id (seq2seq or causal LM), or a local folder."""
    tokenizer: str = "t5"
    """t5: the T5 SentencePiece vocabulary from $ITSTUDY_T5_TOKENIZER or the hub; a hub id or folder; or 'bpe' to train one on the run's data."""
    precision: Literal["auto", "bf16", "fp32", "fp16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU. fp16 is refused for T5 (it overflows to NaN)."""
    bpe_vocab_size: int = Field(2000, ge=100)
    """Vocabulary size when tokenizer is 'bpe'."""
    lora: LoraConfig | None = None
    """Train LoRA adapters instead of every weight; null (default): full fine-tuning."""
    implementation: Literal["hf", "fast"] = "hf"
    """hf: transformers' T5 (the reference); fast: itstudy's compact T5 with the same weights and KV-cached greedy decoding (T5 only)."""

    @model_validator(mode="after")
    def _refuse_fp16(self) -> "ModelConfig":
        if self.precision == "fp16":
            raise ValueError(
                "precision 'fp16' is refused for T5: T5 was trained in bf16 and overflows to NaN in fp16 "
                "(transformers#4938); use 'bf16' on GPU or 'fp32'"
            )
        return self

    @model_validator(mode="after")
    def _fast_is_t5(self) -> "ModelConfig":
        if self.implementation == "fast" and (self.name in CAUSAL_SHAPES or self.lora is not None):
            what = "LoRA adapters" if self.lora is not None else f"the decoder-only {self.name!r}"
            raise ValueError(f"implementation 'fast' is a full-weight T5 and cannot run {what}; use implementation 'hf'")
        return self


class TrainConfig(Spec):
    """The optimisation of one training run."""

    global_batch_size: int = Field(16, ge=1)
    """Sequences per optimiser step over all workers; accumulation is derived from it."""
    per_device_batch_size: int = Field(8, ge=1)
    """Sequences per forward pass on one worker (unused with max_tokens_per_micro_batch)."""
    max_tokens_per_micro_batch: int | None = Field(None, ge=1)
    """Padded source + target tokens per forward pass on one worker, lengths padded to fixed buckets; the global batch stays in sequences and accumulation varies per step; null: per_device_batch_size sequences."""
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
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp: every worker holds all weights; fsdp: FSDP2 shards weights, gradients and optimiser state (bf16 on GPU, activation checkpointing)."""
    max_failures: int = Field(1, ge=0)
    """Restarts of the workers from the last checkpoint after a failure (Ray Train FailureConfig)."""
    log_every_steps: int = Field(10, ge=1)
    """Steps between training-metric logs."""
    fail_at_step: int | None = Field(None, ge=1)
    """Fault injection for tests: rank 0 raises once at this step (only when no checkpoint has been restored)."""

    _floats = field_validator("learning_rate", "weight_decay", "epochs", mode="before")(_int_is_a_float)

    @model_validator(mode="after")
    def _budget_holds_one_row(self) -> "TrainConfig":
        longest = self.max_source_length + self.max_target_length
        if self.max_tokens_per_micro_batch is not None and self.max_tokens_per_micro_batch < longest:
            raise ValueError(
                f"max_tokens_per_micro_batch={self.max_tokens_per_micro_batch} cannot hold one row of "
                f"max_source_length + max_target_length = {longest} tokens; use at least {longest}"
            )
        return self


def gradient_accumulation(train: TrainConfig, world_size: int) -> int | None:
    """Micro-batches per optimiser step on each worker, derived from the global batch; None with a
    token budget, where it is derived per step from the lengths (`itstudy.training.batching`).

    global = per_device x world_size x accumulation; a global batch that does not divide is
    refused rather than silently changed (Tk-Instruct#10: the effective batch moved with the
    GPU count and results did not reproduce).
    """
    if train.max_tokens_per_micro_batch is not None:
        if train.global_batch_size % world_size:
            raise ConfigError(
                f"train.global_batch_size={train.global_batch_size} does not divide over {world_size} workers; "
                f"choose a multiple of {world_size}"
            )
        return None
    per_step = train.per_device_batch_size * world_size
    if train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={train.global_batch_size} is not divisible by "
            f"per_device_batch_size ({train.per_device_batch_size}) x workers ({world_size}) = {per_step}; "
            f"choose a multiple of {per_step}"
        )
    return train.global_batch_size // per_step


class EvalConfig(Spec):
    """Zero-shot evaluation on the test tasks."""

    batch_size: int = Field(32, ge=1)
    """Prompts per generation batch."""
    max_new_tokens: int = Field(32, ge=1)
    """Tokens generated per prediction (classification labels are short)."""
    add_task_name: bool = False
    """Prefix the task name to the prompt (Tk-Instruct option, off by default)."""
    rank_classification: bool = True
    """Also score each classification label by log-likelihood and log rank_exact_match (one teacher-forced pass per label)."""
    select_on: Literal["dev", "last"] = "dev"
    """Which checkpoint a trial keeps as its result: dev: the best dev_exact_match (dev tasks only, never test); last: the final one."""


UNSWEPT_KEYS = ("grid", "search", "name")
"""Study fields that cannot be grid axes: they define the sweep itself."""


class Study(Spec):
    """One experiment file: what to train, on what, how, over which grid, with which baselines."""

    name: SafeName = "study"
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
    baselines: list[BaselineName] = ["random", "majority"]
    """Baselines run next to the trials, once per test-task set and seed."""
    grid: dict[str, list[Any]] = {}
    """Dotted key -> values; the sweep runs the product, e.g. {'variant.definition': [original, simplified], 'seed': [1, 2]}."""
    search: SearchConfig | None = None
    """Optional Optuna search over hyperparameters within each grid point."""
    debug: bool = False
    """Smoke mode for CI: the loader caps steps, tasks, instances and lengths (grid axes keep their values)."""

    @model_validator(mode="after")
    def _choices_need_dev(self) -> "Study":
        if self.data.dev_tasks == 0 and (self.search is not None or self.eval.select_on == "dev"):
            raise ValueError(
                "data.dev_tasks=0 leaves no dev split, but eval.select_on=dev or a search chooses on it; "
                "set data.dev_tasks >= 1 (or eval.select_on=last and no search)"
            )
        return self

    @model_validator(mode="after")
    def _lora_is_not_sharded(self) -> "Study":
        if self.model.lora is not None and self.train.strategy == "fsdp":
            raise ValueError("model.lora with train.strategy 'fsdp' is not supported; LoRA trains few weights: use 'ddp'")
        if self.model.implementation == "fast" and self.train.strategy == "fsdp":
            raise ValueError("model.implementation 'fast' with train.strategy 'fsdp' is not supported; use 'ddp'")
        return self

    @model_validator(mode="after")
    def _per_model_names_the_grid(self) -> "Study":
        # A trial's study has it folded in (at_grid_point): only a study with a model axis has any left.
        models = self.grid.get("model.name")
        for name in self.resources.per_model:
            if models is None:
                raise ValueError(f"resources.per_model.{name}: needs model.name as a grid axis; set resources directly")
            if name not in models:
                raise ValueError(f"resources.per_model.{name}: not a value of grid.model.name ({', '.join(map(str, models))})")
        return self

    @field_validator("grid")
    @classmethod
    def _check_grid_axes(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        # Each axis value is validated as a whole study when the file is loaded (loading.study_from_dict).
        for key, values in grid.items():
            if key in UNSWEPT_KEYS:
                raise ValueError(f"grid.{key}: this key cannot be swept")
            if not values:
                raise ValueError(f"grid.{key}: an axis needs at least one value")
            repeated = [value for index, value in enumerate(values) if value in values[:index]]
            if repeated:
                raise ValueError(f"grid.{key}: {repeated[0]!r} is listed twice; each value makes one trial")
        return grid
