"""The typed objects every stage passes around: a SuperNI task and its parts.

They are frozen so that a variant transform (`itstudy.variants`) can never change a task in
place: it returns a new `Task` with `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    """A demonstration shown in the prompt (SuperNI `Positive Examples` / `Negative Examples`)."""

    input: str
    output: str
    explanation: str = ""


@dataclass(frozen=True)
class Instance:
    """One input with every acceptable reference output (SuperNI keeps a list)."""

    id: str
    input: str
    outputs: tuple[str, ...]
    unaltered_outputs: tuple[str, ...] = ()
    """The references before a variant changed them (the negated variant swaps labels); () when unchanged."""


@dataclass(frozen=True)
class LabelSpace:
    """The closed set of outputs of a classification task, and where that set came from.

    `labels` are surface forms as they appear in the task's outputs (stripped, most frequent
    spelling of each normalised label), in a stable order. `source` names the rule that
    produced them, e.g. "rule:labels_in_definition(max_labels=10) over 100 instances", so
    that every number computed from a label set can say where the set came from.
    """

    labels: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Task:
    """A SuperNI task: instruction (definition + demonstrations) and its instances."""

    name: str
    definition: str
    positive_examples: tuple[Example, ...]
    negative_examples: tuple[Example, ...]
    instances: tuple[Instance, ...]
    categories: tuple[str, ...] = ()
    input_language: tuple[str, ...] = ("English",)
    output_language: tuple[str, ...] = ("English",)
    instruction_language: tuple[str, ...] = ("English",)
    source_file: str = ""
    label_space: LabelSpace | None = field(default=None, compare=False)
    counterfactual_of: str = ""
    """The task sharing this task's inputs under a definition that labels them differently ('' if none)."""

    @property
    def category(self) -> str:
        """The first category, lowercased with spaces as underscores (the SuperNI grouping key)."""
        return self.categories[0].lower().replace(" ", "_") if self.categories else "uncategorized"

    @property
    def is_classification(self) -> bool:
        return self.label_space is not None
