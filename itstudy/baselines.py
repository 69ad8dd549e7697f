"""Model-free baselines: the trivial predictors every instruction-tuning number is compared with.

Each baseline is `fn(test_tasks, seed) -> list[Prediction]`, registered in `BASELINES`, and its
predictions go through the same `itstudy.metrics` and tracking as a trained model's:

- random: per instance, a label drawn uniformly from the task's label space, seeded per
  (seed, task); the paper's random-guess baseline.
- majority: per task, the label most frequent among the task's positive examples' outputs
  (ties, including no labelled example at all, go to the earliest label in label-space
  order). It reads only the instruction, never the evaluation instances.
- majority_oracle: the label most frequent among the evaluation instances' references. It
  peeks at the answers: an upper bound for any constant predictor, not a fair baseline.
- copy_demo: SuperNI's "copy demo output" heuristic, the first positive example's output.

They read tasks as given: pass the unaltered test tasks (as the sweep does) to copy the
task's own first demonstration.

A task a baseline cannot predict is skipped, not crashed on: random, majority and
majority_oracle need a label space, copy_demo a positive example. `run_baseline` returns the
skipped tasks with the reason so that a report can say what each figure covers. The untuned
model baseline needs a model and lives in the training package.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from itstudy.data.task import Instance, Task
from itstudy.metrics import Prediction, exact_match
from itstudy.variants import task_rng


def _prediction(task: Task, instance: Instance, answer: str) -> Prediction:
    return Prediction(
        task=task.name,
        category=task.category,
        instance_id=instance.id,
        prediction=answer,
        references=instance.outputs,
        is_classification=task.is_classification,
    )


def _needs_label_space(task: Task) -> str | None:
    return None if task.label_space is not None else "no label space (a generation task)"


def _needs_positive_example(task: Task) -> str | None:
    return None if task.positive_examples else "no positive example to copy"


def _best_constant(labels: tuple[str, ...], reference_sets: list[tuple[str, ...]]) -> str:
    """The label that exactly matches the most reference sets; ties go to the earliest label."""
    hits = Counter(label for refs in reference_sets for label in labels if exact_match(label, refs))
    # max() keeps the first of equal counts, and labels are iterated in label-space order.
    return max(labels, key=lambda label: hits[label])


def random_guess(test_tasks: Sequence[Task], seed: int) -> list[Prediction]:
    """A uniformly random label per instance, from a stream owned by (seed, task)."""
    predictions = []
    for task in _applicable(test_tasks, _needs_label_space):
        rng = task_rng(seed, task.name, purpose="baseline:random")
        predictions += [_prediction(task, i, rng.choice(task.label_space.labels)) for i in task.instances]
    return predictions


def majority_label(test_tasks: Sequence[Task], seed: int) -> list[Prediction]:
    """The label most frequent among the task's positive examples' outputs, for every instance."""
    predictions = []
    for task in _applicable(test_tasks, _needs_label_space):
        answer = _best_constant(task.label_space.labels, [(e.output,) for e in task.positive_examples])
        predictions += [_prediction(task, i, answer) for i in task.instances]
    return predictions


def majority_oracle(test_tasks: Sequence[Task], seed: int) -> list[Prediction]:
    """Upper bound for constant predictors: the label most frequent among the evaluation references."""
    predictions = []
    for task in _applicable(test_tasks, _needs_label_space):
        answer = _best_constant(task.label_space.labels, [i.outputs for i in task.instances])
        predictions += [_prediction(task, i, answer) for i in task.instances]
    return predictions


def copy_demo_output(test_tasks: Sequence[Task], seed: int) -> list[Prediction]:
    """The first positive example's output, stripped, for every instance."""
    predictions = []
    for task in _applicable(test_tasks, _needs_positive_example):
        answer = task.positive_examples[0].output.strip()
        predictions += [_prediction(task, i, answer) for i in task.instances]
    return predictions


BaselineFn = Callable[[Sequence[Task], int], list[Prediction]]

BASELINES: dict[str, BaselineFn] = {
    "random": random_guess,
    "majority": majority_label,
    "majority_oracle": majority_oracle,
    "copy_demo": copy_demo_output,
}

_REQUIREMENTS: dict[str, Callable[[Task], str | None]] = {
    "random": _needs_label_space,
    "majority": _needs_label_space,
    "majority_oracle": _needs_label_space,
    "copy_demo": _needs_positive_example,
}


def _applicable(test_tasks: Sequence[Task], requirement: Callable[[Task], str | None]) -> list[Task]:
    return [task for task in test_tasks if requirement(task) is None]


def skipped_tasks(name: str, test_tasks: Sequence[Task]) -> dict[str, str]:
    """Task name -> why baseline `name` makes no prediction for it."""
    requirement = _REQUIREMENTS[_known(name)]
    return {task.name: reason for task in test_tasks if (reason := requirement(task)) is not None}


def _known(name: str) -> str:
    if name not in BASELINES:
        hint = " (the untuned baseline needs a model: it runs through the training package)" if name == "untuned" else ""
        raise ValueError(f"unknown model-free baseline {name!r}; expected one of {sorted(BASELINES)}{hint}")
    return name


@dataclass(frozen=True)
class BaselineRun:
    """A baseline's predictions and the tasks it skipped, with the reason for each."""

    name: str
    predictions: list[Prediction]
    skipped: dict[str, str]


def run_baseline(name: str, test_tasks: Sequence[Task], seed: int) -> BaselineRun:
    """Run baseline `name` on the test tasks; a clear error for an unknown name."""
    return BaselineRun(name, BASELINES[_known(name)](test_tasks, seed), skipped_tasks(name, test_tasks))
