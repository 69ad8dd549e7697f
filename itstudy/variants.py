"""Instruction variants: named, documented transforms of a task's instruction.

A variant is a definition transform times an example transform, chosen by `VariantConfig`
(`definition` x `examples`), e.g. `def-simplified+ex-delusive`. Each transform is a small
function in a registry below, in the spirit of lm-evaluation-harness's named prompt variants.

    altered = apply_variant(task, study.variant, seed=study.seed)

`apply_variant` returns a new `Task` whose `definition` is the one to show and whose
`positive_examples` / `negative_examples` are exactly the demonstrations to show (the prompt
builder renders all of them). Instances and the label space are untouched.

Every random choice for a task comes from `itstudy.seeding.task_rng(seed, task.name, "variant")`,
so a task's transform depends only on the seed and the task, never on which other tasks are in
the run, and never touches the global `random` state.

Refused with `VariantError` (naming the task and the variant): unknown transform names, and
transforms that need a label space (simplified definition, other_label / random_label delusive
examples) on a task that has none (a generation task).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable

from itstudy.answers import normalize_answer
from itstudy.config import VariantConfig
from itstudy.data.task import Example, Task
from itstudy.errors import UserError
from itstudy.seeding import task_rng


class VariantError(UserError):
    """A variant that cannot be applied to a task; the message names the task and the variant."""


def _labels(task: Task, cfg: VariantConfig, needed_by: str) -> tuple[str, ...]:
    if task.label_space is None:
        raise VariantError(
            f"task {task.name}: variant {cfg.name} needs a label space for {needed_by}, "
            "but the task has none (a generation task); restrict the run to classification tasks"
        )
    return task.label_space.labels


# --- definition transforms: (task, cfg) -> the definition to show ---------------------------


def original_definition(task: Task, cfg: VariantConfig) -> str:
    """The task's own SuperNI Definition."""
    return task.definition


def simplified_definition(task: Task, cfg: VariantConfig) -> str:
    """Only the output space: variant.simplified_template with {labels} = the label list joined by ', '."""
    labels = _labels(task, cfg, "the simplified definition")
    return _fill_template(cfg.simplified_template, labels, where=f"task {task.name}: variant {cfg.name}")


def no_definition(task: Task, cfg: VariantConfig) -> str:
    """No definition at all: the prompt starts with the demonstrations."""
    return ""


def _fill_template(template: str, labels: tuple[str, ...], where: str) -> str:
    try:
        return template.format(labels=", ".join(labels))
    except (KeyError, IndexError, ValueError) as error:
        raise VariantError(
            f"{where}: variant.simplified_template {template!r} is not a format string with only "
            f"a {{labels}} field ({error!r})"
        ) from None


DEFINITIONS: dict[str, Callable[[Task, VariantConfig], str]] = {
    "original": original_definition,
    "simplified": simplified_definition,
    "none": no_definition,
}


# --- delusive strategies: wrong input-to-output mapping, correct input and output spaces -----


def permute_outputs(shown: tuple[Example, ...], task: Task, cfg: VariantConfig, rng: random.Random) -> list[str]:
    """Outputs moved among the shown examples by a random derangement (no example keeps its own slot).

    Only the mapping changes, so input and output spaces are exactly the original ones. An
    example whose output equals the output it receives stays correct: when every shown example
    has the same output, nothing changes: in the SuperNI sample this holds for 14 of the 72
    classification tasks at k=2 (both first demos say 'yes', say).
    Use other_label when every demonstration must be wrong.
    """
    if len(shown) < 2:
        raise VariantError(
            f"task {task.name}: variant {cfg.name} with delusive_strategy=permute needs at least 2 "
            f"shown examples, the task shows {len(shown)}"
        )
    order = _random_derangement(len(shown), rng)
    return [shown[source].output for source in order]


def _random_derangement(size: int, rng: random.Random) -> list[int]:
    # Rejection sampling is uniform over derangements; about e (2.7) tries are expected.
    while True:
        order = list(range(size))
        rng.shuffle(order)
        if all(position != source for position, source in enumerate(order)):
            return order


def other_label_outputs(shown: tuple[Example, ...], task: Task, cfg: VariantConfig, rng: random.Random) -> list[str]:
    """Each output replaced by a label of the task different from it (after normalisation): always wrong."""
    labels = _labels(task, cfg, "delusive_strategy=other_label")
    outputs = []
    for example in shown:
        others = [label for label in labels if normalize_answer(label) != normalize_answer(example.output)]
        if not others:
            raise VariantError(
                f"task {task.name}: variant {cfg.name} with delusive_strategy=other_label needs a label "
                f"other than {example.output!r}, the label space has only {list(labels)}"
            )
        outputs.append(rng.choice(others))
    return outputs


def random_label_outputs(shown: tuple[Example, ...], task: Task, cfg: VariantConfig, rng: random.Random) -> list[str]:
    """Each output replaced by a uniformly random label of the task (may hit the right one; Min et al. 2022)."""
    labels = _labels(task, cfg, "delusive_strategy=random_label")
    return [rng.choice(labels) for _ in shown]


DELUSIVE_STRATEGIES: dict[str, Callable[[tuple[Example, ...], Task, VariantConfig, random.Random], list[str]]] = {
    "permute": permute_outputs,
    "other_label": other_label_outputs,
    "random_label": random_label_outputs,
}


# --- example transforms: (task, cfg, rng) -> the positive examples to show -------------------


def original_examples(task: Task, cfg: VariantConfig, rng: random.Random) -> tuple[Example, ...]:
    """The first num_examples positive examples, as written."""
    return task.positive_examples[: cfg.num_examples]


def delusive_examples(task: Task, cfg: VariantConfig, rng: random.Random) -> tuple[Example, ...]:
    """The first num_examples positive examples with outputs corrupted by delusive_strategy."""
    shown = task.positive_examples[: cfg.num_examples]
    corrupt = _lookup(DELUSIVE_STRATEGIES, cfg.delusive_strategy, "delusive_strategy", cfg, task)
    outputs = corrupt(shown, task, cfg, rng)
    # The explanation argues for the true output, so it would contradict the corrupted one.
    return tuple(replace(example, output=output, explanation="") for example, output in zip(shown, outputs))


def no_examples(task: Task, cfg: VariantConfig, rng: random.Random) -> tuple[Example, ...]:
    """No positive examples."""
    return ()


EXAMPLES: dict[str, Callable[[Task, VariantConfig, random.Random], tuple[Example, ...]]] = {
    "original": original_examples,
    "delusive": delusive_examples,
    "none": no_examples,
}


# --- composition ----------------------------------------------------------------------------


def _lookup(registry: dict, key: str, field: str, cfg: VariantConfig, task: Task):
    if key not in registry:
        raise VariantError(
            f"task {task.name}: variant {cfg.name}: unknown variant.{field} {key!r}; expected one of {sorted(registry)}"
        )
    return registry[key]


def apply_variant(task: Task, variant_cfg: VariantConfig, seed: int) -> Task:
    """The task as the prompt will show it: definition and demonstrations transformed, deterministically.

    Negative examples are kept up to variant.num_negative_examples whatever the example
    transform (Tk-Instruct shows none by default).
    """
    cfg = variant_cfg
    definition = _lookup(DEFINITIONS, cfg.definition, "definition", cfg, task)(task, cfg)
    rng = task_rng(seed, task.name, purpose="variant")
    positives = _lookup(EXAMPLES, cfg.examples, "examples", cfg, task)(task, cfg, rng)
    return replace(
        task,
        definition=definition,
        positive_examples=tuple(positives),
        negative_examples=task.negative_examples[: cfg.num_negative_examples],
    )
