"""Instruction variants: named, documented transforms of a task's instruction.

A variant is a definition transform times an example transform, chosen by `VariantConfig`
(`definition` x `examples`), e.g. `def-simplified+ex-delusive`. Each transform is a small
function in a registry below, in the spirit of lm-evaluation-harness's named prompt variants.

    altered = apply_variant(task, study.variant, seed=study.seed)

`apply_variant` returns a new `Task` whose `definition` is the one to show and whose
`positive_examples` / `negative_examples` are exactly the demonstrations to show (the prompt
builder renders all of them). Instances and the label space are untouched, except by the
negation probe.

The negation probe (`definition: negated`) alters test tasks only (`apply_variant_to_test`;
training tasks keep their definition): for a task with exactly two labels, both named in its
definition, the two label words are swapped in the definition, in the demonstrations (outputs and
explanations) and in the references, so the instruction asks for the opposite answer while the
inputs stay; the original references are kept as `Instance.unaltered_outputs` (the "habit").
Where a text quotes every label it mentions, only quoted mentions are swapped ("Answer 'yes' ...
No other words" keeps its "No"); otherwise every whole-word mention, case kept (one-character
labels only in their exact case). A test task that cannot be negated (`negation_refusal`: not two
labels, a label missing from the definition, one label inside the other, or a definition that
only lists the labels side by side) is skipped with a note naming it and why; a test set with
none left is refused.

Every random choice for a task comes from `itstudy.seeding.task_rng(seed, task.name, "variant")`,
so a task's transform depends only on the seed and the task, never on which other tasks are in
the run, and never touches the global `random` state.

Refused with `VariantError` (naming the task and the variant): unknown transform names, and
transforms that need a label space (simplified definition, other_label / random_label delusive
examples) on a task that has none (a generation task).
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Callable

from itstudy.answers import normalize_answer
from itstudy.config import VariantConfig
from itstudy.data.task import Example, Instance, Task
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


def negated_definition(task: Task, cfg: VariantConfig) -> str:
    """The definition as given: `negate_task` has already swapped a test task's labels; training tasks keep theirs."""
    return task.definition


DEFINITIONS: dict[str, Callable[[Task, VariantConfig], str]] = {
    "original": original_definition,
    "simplified": simplified_definition,
    "none": no_definition,
    "negated": negated_definition,
}


# --- the negation probe: swap the two labels' meaning -----------------------------------------

_QUOTES = "'\"`\u2018\u2019\u201c\u201d"
# Mentions of the two labels this many words apart or closer form a list ("'yes' or 'no'").
_LIST_DISTANCE = 3


def _label_pattern(labels: tuple[str, ...], quoted: bool) -> re.Pattern:
    # One-character labels (option letters, digits) match their exact case only: "a" is also an article.
    words = "|".join(re.escape(label) if len(label) > 1 else f"(?-i:{re.escape(label)})" for label in labels)
    edges = (f"(?<=[{_QUOTES}])", f"(?=[{_QUOTES}])") if quoted else (r"(?<!\w)", r"(?!\w)")
    return re.compile(f"{edges[0]}(?:{words}){edges[1]}", re.IGNORECASE)


def _quoted(text: str, labels: tuple[str, ...]) -> bool:
    """True when every label the text mentions is mentioned in quotes: then only quoted mentions count."""
    mentioned = [label for label in labels if _label_pattern((label,), quoted=False).search(text)]
    return bool(mentioned) and all(_label_pattern((label,), quoted=True).search(text) for label in mentioned)


def _mention_positions(text: str, label: str, labels: tuple[str, ...]) -> list[int]:
    """Word positions of the mentions of `label` (quoted ones only where the text quotes its labels)."""
    pattern = _label_pattern((label,), _quoted(text, labels))
    return [len(text[: match.start()].split()) for match in pattern.finditer(text)]


def _same_case(model: str, word: str) -> str:
    if model.islower():
        return word.lower()
    if model.isupper() and len(model) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if model[:1].isupper() else word


def swap_label_words(text: str, labels: tuple[str, str]) -> str:
    """`text` with every mention of either label replaced by the other (quoted mentions only, if the text quotes them)."""
    first, second = labels

    def other(match: re.Match) -> str:
        word = match.group(0)
        return _same_case(word, second if word.lower() == first.lower() else first)

    return _label_pattern(labels, _quoted(text, labels)).sub(other, text)


def negation_refusal(task: Task) -> str | None:
    """Why `task` cannot be negated; None when it can.

    Besides two distinct labels both named in the definition, the definition must tie each label
    to its own condition: a definition that only lists them ("as one of 'positive' or 'negative'")
    reads the same with the two swapped, so swapping would not negate it.
    """
    labels = task.label_space.labels if task.label_space else ()
    if len(labels) != 2:
        return f"needs exactly two labels to swap, the task has {len(labels)}"
    first, second = (normalize_answer(label) for label in labels)
    if first in second or second in first:
        return f"its labels {list(labels)} overlap (one contains the other)"
    positions = [_mention_positions(task.definition, label, labels) for label in labels]
    for label, found in zip(labels, positions):
        if not found:
            return f"its label {label!r} is not named in the definition"
    if all(min(abs(a - b) for b in positions[1]) <= _LIST_DISTANCE for a in positions[0]) and all(
        min(abs(a - b) for a in positions[0]) <= _LIST_DISTANCE for b in positions[1]
    ):
        return "its definition only lists the two labels side by side, so swapping them would not negate it"
    return None


def negate_task(task: Task, cfg: VariantConfig) -> Task:
    """The task with its two labels swapped in definition, demonstrations and references; refused if it cannot be."""
    refusal = negation_refusal(task)
    if refusal:
        raise VariantError(f"task {task.name}: variant {cfg.name} cannot negate it: {refusal}")
    labels = task.label_space.labels
    swap = {normalize_answer(labels[0]): labels[1], normalize_answer(labels[1]): labels[0]}

    def answer(output: str) -> str:
        return swap.get(normalize_answer(output), output)

    def example(e: Example) -> Example:
        return replace(e, output=answer(e.output), explanation=swap_label_words(e.explanation, labels))

    def instance(i: Instance) -> Instance:
        return replace(i, outputs=tuple(answer(o) for o in i.outputs), unaltered_outputs=i.outputs)

    return replace(
        task,
        definition=swap_label_words(task.definition, labels),
        positive_examples=tuple(map(example, task.positive_examples)),
        negative_examples=tuple(map(example, task.negative_examples)),
        instances=tuple(map(instance, task.instances)),
    )


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


def apply_variant(task: Task, variant_cfg: VariantConfig, seed: int, *, test: bool = False) -> Task:
    """The task as the prompt will show it: definition and demonstrations transformed, deterministically.

    Negative examples are kept up to variant.num_negative_examples whatever the example
    transform (Tk-Instruct shows none by default). A test task (`test=True`) under the negated
    definition is negated first (`negate_task`).
    """
    cfg = variant_cfg
    if test and cfg.definition == "negated":
        task = negate_task(task, cfg)
    definition = _lookup(DEFINITIONS, cfg.definition, "definition", cfg, task)(task, cfg)
    rng = task_rng(seed, task.name, purpose="variant")
    positives = _lookup(EXAMPLES, cfg.examples, "examples", cfg, task)(task, cfg, rng)
    return replace(
        task,
        definition=definition,
        positive_examples=tuple(positives),
        negative_examples=task.negative_examples[: cfg.num_negative_examples],
    )


def apply_variant_to_test(tasks, variant_cfg: VariantConfig, seed: int) -> tuple[list[Task], tuple[str, ...]]:
    """The test tasks as their prompts show them, and a note per task skipped because it cannot be negated.

    With variant.apply_to_test false the tasks are returned as given. Refused when no task is left.
    """
    if not variant_cfg.apply_to_test:
        return list(tasks), ()
    notes, kept = [], []
    for task in tasks:
        refusal = negation_refusal(task) if variant_cfg.definition == "negated" else None
        if refusal:
            notes.append(f"variant {variant_cfg.name}: test task {task.name} skipped: {refusal}")
        else:
            kept.append(apply_variant(task, variant_cfg, seed, test=True))
    if tasks and not kept:
        raise VariantError(f"variant {variant_cfg.name}: none of the {len(tasks)} test tasks can be negated ({notes[0]})")
    return kept, tuple(notes)
