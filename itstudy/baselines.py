"""Model-free baselines: the trivial predictors every instruction-tuning number is compared with.

Each baseline is a `Baseline` registered by name in `BASELINES` (the one list of model-free
baseline names), called as `BASELINES[name](test_tasks, seed) -> list[Prediction]`; its
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

Their predictions carry the task's labels, so `label_space_rate` is scored for them (random,
majority and majority_oracle: 100% by construction; copy_demo: as often as the first
demonstration's output is a label), and the counterfactual pairs among the test tasks, so
`pair_rule_accuracy` is too. They have no `rank_exact_match`: a baseline has no likelihood to rank
labels by, and for one that answers with labels the expected rank figure would equal its exact
match.

A task a baseline cannot predict is skipped, not crashed on: random, majority and
majority_oracle need a label space, copy_demo a positive example. `run_baseline` returns the
skipped tasks with the reason so that a report can say what each figure covers. The untuned
model baseline needs a model and lives in the training package.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from itstudy.data.task import Task
from itstudy.metrics import Prediction, counterfactual_pair_inputs, exact_match
from itstudy.seeding import task_rng


@dataclass(frozen=True)
class Baseline:
    """A model-free predictor: which tasks it can answer and, for such a task, one answer per instance."""

    cannot_predict: Callable[[Task], str | None]
    """Why the baseline makes no prediction for a task; None when it can."""
    answers: Callable[[Task, int], list[str]]
    """(task, seed) -> one answer per instance of the task, in instance order."""

    def __call__(self, test_tasks: Sequence[Task], seed: int) -> list[Prediction]:
        pairs = counterfactual_pair_inputs(test_tasks)
        return [
            Prediction(
                task=task.name,
                category=task.category,
                instance_id=instance.id,
                prediction=answer,
                references=instance.outputs,
                is_classification=task.is_classification,
                labels=task.label_space.labels if task.label_space else (),
                habit_references=instance.unaltered_outputs,
                pair=pairs.get((task.name, instance.id), ""),
            )
            for task in test_tasks
            if self.cannot_predict(task) is None
            for instance, answer in zip(task.instances, self.answers(task, seed))
        ]


def _needs_label_space(task: Task) -> str | None:
    return None if task.label_space is not None else "no label space (a generation task)"


def _needs_positive_example(task: Task) -> str | None:
    return None if task.positive_examples else "no positive example to copy"


def _best_constant(labels: tuple[str, ...], reference_sets: list[tuple[str, ...]]) -> str:
    """The label that exactly matches the most reference sets; ties go to the earliest label."""
    hits = Counter(label for refs in reference_sets for label in labels if exact_match(label, refs))
    # max() keeps the first of equal counts, and labels are iterated in label-space order.
    return max(labels, key=lambda label: hits[label])


def random_guesses(task: Task, seed: int) -> list[str]:
    """A uniformly random label per instance, from a stream owned by (seed, task)."""
    rng = task_rng(seed, task.name, purpose="baseline:random")
    return [rng.choice(task.label_space.labels) for _ in task.instances]


def majority_label(task: Task, seed: int) -> list[str]:
    """The label most frequent among the task's positive examples' outputs, for every instance."""
    answer = _best_constant(task.label_space.labels, [(e.output,) for e in task.positive_examples])
    return [answer] * len(task.instances)


def majority_oracle(task: Task, seed: int) -> list[str]:
    """Upper bound for constant predictors: the label most frequent among the evaluation references."""
    answer = _best_constant(task.label_space.labels, [i.outputs for i in task.instances])
    return [answer] * len(task.instances)


def copy_demo_output(task: Task, seed: int) -> list[str]:
    """The first positive example's output, stripped, for every instance."""
    return [task.positive_examples[0].output.strip()] * len(task.instances)


BASELINES: dict[str, Baseline] = {
    "random": Baseline(_needs_label_space, random_guesses),
    "majority": Baseline(_needs_label_space, majority_label),
    "majority_oracle": Baseline(_needs_label_space, majority_oracle),
    "copy_demo": Baseline(_needs_positive_example, copy_demo_output),
}


def skipped_tasks(name: str, test_tasks: Sequence[Task]) -> dict[str, str]:
    """Task name -> why baseline `name` makes no prediction for it."""
    cannot_predict = BASELINES[_known(name)].cannot_predict
    return {task.name: reason for task in test_tasks if (reason := cannot_predict(task)) is not None}


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
