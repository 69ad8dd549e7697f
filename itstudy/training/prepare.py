"""A study turned into what one training run consumes: tasks -> variant -> Tk-Instruct prompts -> token ids.

`prepare_run(study)` runs once per run, in the driver (without Ray, in every torchrun rank: it is
deterministic, and the ranks compare digests): it loads the tasks (`itstudy.data`), applies the
instruction variant (`itstudy.variants`) to the training tasks and, with
`variant.apply_to_test`, to the test tasks, renders every instance as a Tk-Instruct prompt
(`itstudy.prompts`), picks one reference per training instance as its target, and tokenises
everything in batches with the fast tokenizer. Workers receive the result, so every rank and
every restart trains on identical token ids, and every error in the data, the variant or the
tokenizer surfaces here, before a worker starts.

Random choices (the training target among several references) use a stream per (seed, task),
so a task's data never depends on which other tasks are in the run.

For a decoder-only model the prompt is the context and the target follows it: prompts lose the
</s> that T5-style tokenizers append, and targets are tokenised without special tokens (no BOS)
and end with </s> (`CausalExample`). A tokenizer without a pad token pads with </s>.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from itstudy.config import ConfigError, Study
from itstudy.data import SelectionError, SourceError, SyntheticError, TaskFileError, load_study_data
from itstudy.data.task import Task
from itstudy.metrics import counterfactual_pair_inputs
from itstudy.prompts import build_source, choose_target, prompt_hash
from itstudy.seeding import task_rng
from itstudy.training.engine import CausalExample, Seq2SeqExample
from itstudy.training.evaluate import EvalItem
from itstudy.training.models import ModelSpecError, is_causal, load_tokenizer, train_bpe_tokenizer
from itstudy.variants import VariantError, apply_variant, apply_variant_to_test

# Prompt scaffolding that every source contains, added to a BPE tokenizer's training texts.
_PROMPT_WORDS = "Definition: Positive Example Negative Example Now complete the following example - Input: Output:"
PROMPTS_SHOWN_PER_SPLIT = 3


@dataclass(frozen=True)
class RunData:
    """Everything a run trains and evaluates on, tokenised."""

    train: tuple[Seq2SeqExample, ...]
    test: tuple[EvalItem, ...]
    digest: str
    """The data selection's digest (`itstudy.data`): same tasks and instances, same digest."""
    source: str
    """Where the tasks came from."""
    notes: tuple[str, ...]
    """What the selection dropped or capped."""
    train_tasks: tuple[str, ...]
    test_tasks: tuple[str, ...]
    sample_prompts: tuple[str, ...]
    """A few rendered prompts (training ones with their target), logged as prompts.txt."""
    dev: tuple[EvalItem, ...] = ()
    """The dev tasks' items, prompted as the test tasks are: every choice is made on these."""

    @functools.cached_property
    def token_digest(self) -> str:
        """A hash of every token id: equal digests mean identical training and test inputs."""
        hasher = hashlib.sha256()
        for example in self.train:
            hasher.update(repr((example.input_ids, example.labels)).encode())
        for item in self.test + self.dev:
            hasher.update(repr(item.input_ids).encode())
        return hasher.hexdigest()[:16]


def prepare_run(study: Study):
    """(tokenizer, RunData) for `study`; raises ConfigError naming the setting that is wrong."""
    try:
        data = load_study_data(study.data, study.seed)
    except (SelectionError, SourceError, SyntheticError, TaskFileError) as error:
        raise ConfigError(f"data: {error}") from None
    if not data.train or not data.test:
        raise ConfigError(
            f"data: the selection holds {len(data.train)} training and {len(data.test)} test tasks; a run needs both "
            f"(source {data.source})"
        )
    try:
        train_tasks = [apply_variant(task, study.variant, study.seed) for task in data.train]
        test_tasks, skipped = apply_variant_to_test(data.test, study.variant, study.seed)
        dev_tasks, _ = apply_variant_to_test(data.dev, study.variant, study.seed)  # dev stands in for test
    except VariantError as error:
        raise ConfigError(f"variant: {error}") from None
    try:
        causal = is_causal(study.model.name)
    except ModelSpecError as error:
        raise ConfigError(f"model.name: {error}") from None
    tokenizer = make_tokenizer(study, train_tasks)
    train, train_prompts = encode_training(train_tasks, tokenizer, study, causal=causal)
    test, test_prompts = encode_evaluation(test_tasks, tokenizer, study, causal=causal)
    dev, _ = encode_evaluation(dev_tasks, tokenizer, study, causal=causal)
    run_data = RunData(
        train=train,
        test=test,
        digest=data.digest,
        source=data.source,
        notes=data.notes + skipped,
        train_tasks=tuple(task.name for task in train_tasks),
        test_tasks=tuple(task.name for task in test_tasks),
        sample_prompts=train_prompts + test_prompts,
        dev=dev,
    )
    return tokenizer, run_data


def make_tokenizer(study: Study, train_tasks: list[Task]):
    """The configured tokenizer; `bpe` is trained on the training tasks' texts only (never on test data)."""
    try:
        if study.model.tokenizer != "bpe":
            tokenizer = load_tokenizer(study.model.tokenizer)
        else:
            tokenizer = train_bpe_tokenizer(_training_texts(train_tasks), study.model.bpe_vocab_size)
    except ModelSpecError as error:
        raise ConfigError(f"model.tokenizer: {error}") from None
    if tokenizer.pad_token_id is None:  # LLaMA's has none; padding is masked, so any id will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _training_texts(tasks: list[Task]):
    yield _PROMPT_WORDS
    for task in tasks:
        yield task.definition
        for example in task.positive_examples + task.negative_examples:
            yield example.input
            yield example.output
        for instance in task.instances:
            yield instance.input
            yield from instance.outputs


def _sources(task: Task, tokenizer, study: Study) -> list[str]:
    return [
        build_source(task, instance.input, tokenizer, study.train.max_source_length, study.eval.add_task_name)
        for instance in task.instances
    ]


def _encode(tokenizer, texts: list[str], max_length: int) -> list[tuple[int, ...]]:
    # Batch call: the fast tokenizer encodes the whole list in Rust.
    return [tuple(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]


def _encode_prompts(tokenizer, texts: list[str], max_length: int, causal: bool) -> list[tuple[int, ...]]:
    ids = _encode(tokenizer, texts, max_length)
    if not causal:
        return ids
    # The answer continues the prompt: drop the </s> that T5-style tokenizers append.
    return [prompt[:-1] if prompt and prompt[-1] == tokenizer.eos_token_id else prompt for prompt in ids]


def _encode_targets(tokenizer, texts: list[str], max_length: int, causal: bool) -> list[tuple[int, ...]]:
    if not causal:
        return _encode(tokenizer, texts, max_length)
    # A causal target has no BOS of its own and ends with </s>, which ends generation.
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length - 1)["input_ids"]
    return [(*target, tokenizer.eos_token_id) for target in ids]


def encode_training(
    tasks: list[Task], tokenizer, study: Study, causal: bool = False
) -> tuple[tuple[Seq2SeqExample, ...], tuple[str, ...]]:
    """Training pairs of every task (source prompt, one reference chosen per (seed, task)) and a few rendered prompts."""
    sources, targets, shown = [], [], []
    for task in tasks:
        rng = task_rng(study.seed, task.name, purpose="target")
        task_sources = _sources(task, tokenizer, study)
        task_targets = [choose_target(instance, rng) for instance in task.instances]
        if len(shown) < PROMPTS_SHOWN_PER_SPLIT and task_sources:
            shown.append(f"### training task {task.name}\n{task_sources[0]}{task_targets[0]}")
        sources += task_sources
        targets += task_targets
    source_ids = _encode_prompts(tokenizer, sources, study.train.max_source_length, causal)
    target_ids = _encode_targets(tokenizer, targets, study.train.max_target_length, causal)
    example = CausalExample if causal else Seq2SeqExample
    examples = tuple(example(source, target) for source, target in zip(source_ids, target_ids))
    return examples, tuple(shown)


def encode_evaluation(
    tasks: list[Task], tokenizer, study: Study, causal: bool = False
) -> tuple[tuple[EvalItem, ...], tuple[str, ...]]:
    """One evaluation item per test instance, with every reference kept for scoring."""
    items, shown = [], []
    pairs = counterfactual_pair_inputs(tasks)
    for task in tasks:
        sources = _sources(task, tokenizer, study)
        labels = task.label_space.labels if task.label_space else ()
        label_ids = tuple(_encode_targets(tokenizer, list(labels), study.train.max_target_length, causal)) if labels else ()
        if len(shown) < PROMPTS_SHOWN_PER_SPLIT and sources:
            shown.append(f"### test task {task.name}\n{sources[0]}")
        prompt_ids = _encode_prompts(tokenizer, sources, study.train.max_source_length, causal)
        for instance, source, ids in zip(task.instances, sources, prompt_ids):
            items.append(
                EvalItem(
                    task=task.name,
                    category=task.category,
                    instance_id=instance.id,
                    input_ids=ids,
                    references=tuple(instance.outputs),
                    is_classification=task.is_classification,
                    prompt_hash=prompt_hash(source),
                    labels=labels,
                    label_ids=label_ids,
                    habit_references=instance.unaltered_outputs,
                    pair=pairs.get((task.name, instance.id), ""),
                )
            )
    return tuple(items), tuple(shown)
