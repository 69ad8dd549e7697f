"""Which tasks and instances a run uses: `load_study_data` is the one call training and baselines make.

Tasks come from the split lists (`splits/<split>/{train,test}_tasks.txt`) or from explicit lists,
then pass the filters (category, language, classification or generation). Split-listed tasks
that the source lacks are dropped with a note (the SuperNI sample lists 119 test tasks and holds
101); explicitly named tasks that it lacks are refused. Training and test tasks must be disjoint.

The kept training tasks are then put in a seeded, category-stratified order (`stratified_order`:
categories in a seeded order, round-robin, each category's tasks in a seeded order), twice:
- dev tasks: the first `data.dev_tasks` of the pool, held out from training (as Tk-Instruct's
  users build dev_tasks.txt from training tasks): every choice a study makes (checkpoint, Optuna
  pick) reads them and never the test tasks;
- training tasks: the first `data.num_train_tasks` of the rest. A task's place depends only on
  (seed, its name, its category), so a larger draw contains a smaller one (nested diversity
  curves), and the first draws span different categories (with 2, never a rule and its
  relabelled copy).
With `data.train_budget` the training instances are a fixed total, dealt evenly over the drawn
tasks, so a diversity curve varies the tasks and not the amount of data.

Instances are chosen the way SuperNI does it:
- a test task takes its first N instances (SuperNI put its label-balanced evaluation set first);
- a training task's instances are shuffled with an RNG derived from (seed, task name), then cut
  to N. So the same seed gives the same instances, adding or removing other tasks changes nothing,
  and a larger N extends a smaller N's sample (prefix property): a data-size sweep over
  10, 20, ..., 800 instances per task trains each size on a superset of the smaller sizes.
- a dev task's instances are sampled like a training task's (`data.dev_instances_per_task`).
A task with fewer instances than asked is used whole with a note (`on_short_task: cap`) or
refused (`refuse`).

Classification rules (registry `CLASSIFICATION_RULES`, keyed by `ClassificationRule.name`):
- `labels_in_definition` (default): over the first `over_instances` instances the outputs take at
  most `max_labels` distinct normalised values, and every such value occurs in the normalised
  definition (as a substring). This reproduces `is_classification` of the SuperNI sample's
  MANIFEST.tsv. A task whose sample shows one label only also counts, as it does there, unless
  `min_labels` asks for more (a delusive example needs a second label to be wrong with).
- `few_labels`: the count alone (between `min_labels` and `max_labels`).
The label space keeps, for each normalised label, the most frequent spelling among the outputs,
stripped of whitespace and of trailing sentence punctuation ("Yes." -> "Yes"): exact match
normalises punctuation away anyway, and the labels then read naturally in a simplified
definition ("Output one of the following: Yes, No."). Labels are ordered by normalised form.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Literal

from itstudy.answers import normalize_answer
from itstudy.config import ClassificationRule, DataConfig
from itstudy.data.sources import TaskSource, UnknownTaskError, make_source
from itstudy.data.task import Instance, LabelSpace, Task
from itstudy.errors import UserError
from itstudy.seeding import task_rng

_TRAILING_PUNCTUATION = ".!?;:,"


class SelectionError(UserError):
    """The configured selection cannot be made; the message names the setting and the tasks."""


@dataclass(frozen=True)
class StudyData:
    """The tasks of one run: training tasks hold their sampled instances, test tasks their first N."""

    train: tuple[Task, ...]
    test: tuple[Task, ...]
    dev: tuple[Task, ...]
    """Held-out training tasks that every choice is made on (never trained on, disjoint from test)."""
    digest: str
    """sha256 over task names, instruction texts, instance ids and contents: same selection, same digest."""
    notes: tuple[str, ...]
    """What the selection dropped or capped, to log with the run."""
    source: str
    """Where the task files came from (`TaskSource.description`)."""


# --- classification rules -------------------------------------------------------------------------


def _normalised_outputs(task: Task, rule: ClassificationRule) -> list[str]:
    return [normalize_answer(output) for instance in task.instances[: rule.over_instances] for output in instance.outputs]


def _few_labels(task: Task, rule: ClassificationRule) -> bool:
    return rule.min_labels <= len(set(_normalised_outputs(task, rule))) <= rule.max_labels


def _labels_in_definition(task: Task, rule: ClassificationRule) -> bool:
    definition = normalize_answer(task.definition)
    return _few_labels(task, rule) and all(label in definition for label in set(_normalised_outputs(task, rule)))


CLASSIFICATION_RULES: dict[str, Callable[[Task, ClassificationRule], bool]] = {
    "labels_in_definition": _labels_in_definition,
    "few_labels": _few_labels,
}
"""Rule name -> whether a task is a classification task under that rule (see the module docstring)."""


def label_space(task: Task, rule: ClassificationRule) -> LabelSpace | None:
    """The task's labels under `rule`, or None if the rule does not count it as classification."""
    if not CLASSIFICATION_RULES[rule.name](task, rule):
        return None
    spellings: dict[str, Counter] = {}
    for instance in task.instances[: rule.over_instances]:
        for output in instance.outputs:
            spellings.setdefault(normalize_answer(output), Counter())[_surface(output)] += 1
    # most_common keeps first-seen order among ties, so the choice is stable.
    labels = tuple(spellings[label].most_common(1)[0][0] for label in sorted(spellings))
    looked_at = min(rule.over_instances, len(task.instances))
    return LabelSpace(labels, source=f"rule:{rule.name}(max_labels={rule.max_labels}) over the first {looked_at} instances")


def _surface(output: str) -> str:
    stripped = output.strip()
    return stripped.rstrip(_TRAILING_PUNCTUATION).rstrip() or stripped


# --- instance selection ---------------------------------------------------------------------------


def sample_training_instances(task: Task, n: int, seed: int) -> tuple[Instance, ...]:
    """The task's instances shuffled by `task_rng(seed, task.name)`, then the first n (all if fewer)."""
    instances = list(task.instances)
    task_rng(seed, task.name).shuffle(instances)
    return tuple(instances[:n])


def evaluation_instances(task: Task, n: int) -> tuple[Instance, ...]:
    """The task's first n instances (SuperNI's label-balanced evaluation set)."""
    return task.instances[:n]


# --- the study's data -----------------------------------------------------------------------------


def load_study_data(data: DataConfig, seed: int, source: TaskSource | None = None) -> StudyData:
    """Select, load and sample the training and test tasks that `data` describes.

    `source` replaces the source that `data` names (for notebooks and tests). Errors are raised
    here, before a run takes any resources: unknown named tasks, overlap, short tasks under
    `on_short_task: refuse`, filters that leave nothing, and malformed task files.
    """
    source = source or make_source(data)
    notes: list[str] = []
    test_names, train_names = _names(source, data, "test"), _names(source, data, "train")
    overlap = sorted(set(test_names) & set(train_names))
    if overlap:
        raise SelectionError(
            f"data.train_tasks and data.test_tasks overlap in {len(overlap)} tasks ({', '.join(overlap[:5])}); "
            f"a test task must be unseen in training"
        )
    test = _load_kept(source, test_names, data, "test", notes)
    dev, train = _draw_training(_load_kept(source, train_names, data, "train", notes), data, seed, notes)
    n_test, n_dev = data.test_instances_per_task, data.dev_instances_per_task
    test = _take_instances(test, lambda task: evaluation_instances(task, n_test), n_test, data, notes, "test")
    dev = _take_instances(dev, lambda task: sample_training_instances(task, n_dev, seed), n_dev, data, notes, "dev")
    asked = _instances_per_task(train, data, notes)
    per_task = asked if isinstance(asked, dict) else dict.fromkeys((task.name for task in train), asked)
    train = _take_instances(
        train, lambda task: sample_training_instances(task, per_task[task.name], seed), asked, data, notes, "train"
    )
    return StudyData(
        train=train, test=test, dev=dev, digest=selection_digest(train, test, dev), notes=tuple(notes), source=source.description
    )


def stratified_order(tasks: tuple[Task, ...], seed: int, purpose: str) -> list[Task]:
    """`tasks` round-robin over their categories, both in an order seeded by (seed, purpose, name).

    Each task's place among its category's tasks depends only on its own name, so adding a task
    never reorders the others, and the first k tasks cover min(k, categories) categories.
    """
    def key(name: str) -> float:
        return task_rng(seed, name, purpose=f"draw/{purpose}").random()

    by_category: dict[str, list[Task]] = {}
    for task in sorted(tasks, key=lambda task: (key(task.name), task.name)):
        by_category.setdefault(task.category, []).append(task)
    categories = sorted(by_category, key=lambda category: (key(f"category:{category}"), category))
    rounds = max(map(len, by_category.values()), default=0)
    return [by_category[c][r] for r in range(rounds) for c in categories if r < len(by_category[c])]


def _draw_training(pool: tuple[Task, ...], data: DataConfig, seed: int, notes: list[str]) -> tuple[tuple[Task, ...], tuple[Task, ...]]:
    """(dev tasks, training tasks): both drawn from the kept training tasks, disjoint."""
    if data.dev_tasks >= len(pool):
        raise SelectionError(
            f"data.dev_tasks={data.dev_tasks} would leave no training task: only {len(pool)} training tasks pass "
            f"the filters; lower data.dev_tasks (0 turns the dev split off, and with it every choice made on dev)"
        )
    dev = stratified_order(pool, seed, "dev")[: data.dev_tasks]
    held_out = {task.name for task in dev}
    rest = tuple(task for task in pool if task.name not in held_out)
    wanted = data.num_train_tasks or len(rest)
    if wanted > len(rest):
        raise SelectionError(
            f"data.num_train_tasks={wanted} asks for more training tasks than the {len(rest)} left after "
            f"data.dev_tasks={data.dev_tasks} dev tasks ({len(pool)} pass the filters); lower one of them"
        )
    train = stratified_order(rest, seed, "train")[:wanted]
    if dev:
        notes.append(f"dev: {len(dev)} training tasks held out for choices: {_listing([task.name for task in dev])}")
    if data.num_train_tasks is not None:
        notes.append(f"train: {wanted} of {len(rest)} tasks drawn (seed {seed}, stratified by category): {_listing([t.name for t in train])}")
    return tuple(dev), tuple(sorted(train, key=lambda task: task.name))


def _instances_per_task(train: tuple[Task, ...], data: DataConfig, notes: list[str]) -> int | dict[str, int]:
    """Instances asked of each training task: instances_per_task, or train_budget dealt evenly (the remainder one by one)."""
    if data.train_budget is None:
        return data.instances_per_task
    share, extra = divmod(data.train_budget, len(train))
    if share == 0:
        raise SelectionError(
            f"data.train_budget={data.train_budget} is fewer instances than the {len(train)} training tasks; "
            f"raise it or lower data.num_train_tasks"
        )
    notes.append(f"train: data.train_budget={data.train_budget} over {len(train)} tasks: {share} instances per task (+1 for {extra})")
    return {task.name: share + (index < extra) for index, task in enumerate(train)}


def _explicit(data: DataConfig, which: str) -> list[str] | None:
    return data.train_tasks if which == "train" else data.test_tasks


def _names(source: TaskSource, data: DataConfig, which: Literal["train", "test"]) -> list[str]:
    names = _explicit(data, which)
    return sorted(set(names if names is not None else source.task_names(which, data.split)))


def _load_kept(source: TaskSource, names: list[str], data: DataConfig, which: str, notes: list[str]) -> tuple[Task, ...]:
    """Load tasks in sorted order and keep those that pass the filters."""
    kept, missing, filtered = [], [], 0
    for name in names:
        try:
            task = source.load_task(name)
        except UnknownTaskError:
            if _explicit(data, which) is not None:
                raise  # a task the user named must exist
            missing.append(name)
            continue
        task = replace(task, label_space=label_space(task, data.classification))
        if _passes_filters(task, data, which):
            kept.append(task)
        else:
            filtered += 1
    if missing:
        notes.append(f"{which}: {len(missing)} tasks listed in split '{data.split}' are not in {source.description}; skipped: {_listing(missing)}")
    if filtered:
        notes.append(f"{which}: {filtered} tasks removed by data.{which}_task_kind, data.categories or data.languages")
    if not kept:
        raise SelectionError(
            f"no {which} tasks left in {source.description}: {len(names)} named, {len(missing)} missing, "
            f"{filtered} removed by data.{which}_task_kind, data.categories or data.languages"
        )
    return tuple(kept)


def _passes_filters(task: Task, data: DataConfig, which: str) -> bool:
    kind = data.train_task_kind if which == "train" else data.test_task_kind
    if kind != "all" and (kind == "classification") != task.is_classification:
        return False
    if data.categories is not None and (not task.categories or task.categories[0] not in data.categories):
        return False
    languages = task.input_language + task.output_language + task.instruction_language
    return data.languages is None or all(language in data.languages for language in languages)


def _take_instances(
    tasks: tuple[Task, ...], choose: Callable[[Task], tuple[Instance, ...]], asked: int | dict[str, int],
    data: DataConfig, notes: list[str], which: str,
) -> tuple[Task, ...]:
    """Each task with its chosen instances; `asked` is one count for all tasks or a count per task (a budget's share)."""
    chosen = {task.name: choose(task) for task in tasks}
    wanted = asked if isinstance(asked, dict) else {task.name: asked for task in tasks}
    short = [f"{task.name} ({len(chosen[task.name])})" for task in tasks if len(chosen[task.name]) < wanted[task.name]]
    what = "their share of data.train_budget" if isinstance(asked, dict) else f"the {asked} instances asked"
    if short and data.on_short_task == "refuse":
        raise SelectionError(
            f"data.on_short_task=refuse: {len(short)} {which} tasks have fewer than {what}: "
            f"{', '.join(short)}; set data.on_short_task=cap to use all they have"
        )
    if short:
        fewer = "fewer than their budget share" if isinstance(asked, dict) else f"fewer than {asked} instances"
        notes.append(f"{which}: {len(short)} tasks have {fewer} and are used whole: {_listing(short)}")
    return tuple(replace(task, instances=chosen[task.name]) for task in tasks)


def _listing(names: list[str], most: int = 30) -> str:
    # Notes go to logs and MLflow: 30 names say what happened; 700 would bury it.
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def selection_digest(train: tuple[Task, ...], test: tuple[Task, ...], dev: tuple[Task, ...] = ()) -> str:
    """sha256 over what a run sees of each task: name, instruction, instance ids, inputs and outputs."""
    def summary(task: Task) -> list:
        return [
            task.name,
            task.definition,
            [[e.input, e.output, e.explanation] for e in task.positive_examples + task.negative_examples],
            [[i.id, i.input, list(i.outputs)] for i in task.instances],
        ]

    payload = {"train": [summary(t) for t in train], "test": [summary(t) for t in test]}
    if dev:  # without a dev split the digest stays what it was
        payload["dev"] = [summary(t) for t in dev]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()
