"""Task and instance selection: the classification rule, seeded sampling, and load_study_data."""

from __future__ import annotations

import csv

import pytest

from itstudy.answers import normalize_answer
from itstudy.config import ClassificationRule, DataConfig, SyntheticConfig
from itstudy.data.selection import (
    SelectionError,
    evaluation_instances,
    label_space,
    load_study_data,
    sample_training_instances,
)
from itstudy.data.sources import LocalFolderSource, UnknownTaskError
from itstudy.data.superni import load_task_file
from itstudy.data.synthetic import GENERATOR_VERSION, write_synthetic_suite
from itstudy.data.task import Instance, Task

DEFAULT_RULE = ClassificationRule()


def _manifest(superni_dir) -> dict[str, dict]:
    with open(superni_dir / "MANIFEST.tsv", newline="") as handle:
        return {row["task"]: row for row in csv.DictReader(handle, delimiter="\t")}


def _task(name: str, count: int) -> Task:
    instances = tuple(Instance(id=f"{name}-{i}", input=f"input {i}", outputs=("yes" if i % 2 else "no",)) for i in range(count))
    return Task(name=name, definition="Answer yes or no.", positive_examples=(), negative_examples=(), instances=instances)


def _sample_ids(task: Task, n: int, seed: int) -> list[str]:
    return [instance.id for instance in sample_training_instances(task, n, seed)]


# --- the classification rule ----------------------------------------------------------------------


def test_default_rule_reproduces_the_manifest_for_every_shipped_task(superni_dir):
    manifest = _manifest(superni_dir)
    assert len(manifest) == 126
    for name, row in manifest.items():
        space = label_space(load_task_file(superni_dir / "tasks" / f"{name}.json"), DEFAULT_RULE)
        assert (space is not None) == (row["is_classification"] == "yes"), name
        if space is not None:
            assert "|".join(normalize_answer(label) for label in space.labels) == row["labels"], name


def test_label_space_keeps_readable_surface_forms_and_names_its_rule(superni_dir):
    space = label_space(load_task_file(superni_dir / "tasks" / "task020_mctaco_span_based_question.json"), DEFAULT_RULE)
    assert space.labels == ("No", "Yes")  # outputs are "No." and "Yes."
    assert space.source == "rule:labels_in_definition(max_labels=10) over the first 100 instances"
    spaced = label_space(load_task_file(superni_dir / "tasks" / "task290_tellmewhy_question_answerability.json"), DEFAULT_RULE)
    assert [normalize_answer(label) for label in spaced.labels] == ["answerable", "not answerable"]


def test_task1624_is_generation_under_the_default_rule_but_not_by_count_alone(superni_dir):
    task = load_task_file(superni_dir / "tasks" / "task1624_disfl_qa_question_yesno_classification.json")
    assert label_space(task, DEFAULT_RULE) is None  # "yes" is not in its definition (see the sample's README)
    few = ClassificationRule(name="few_labels")
    assert [normalize_answer(label) for label in label_space(task, few).labels] == ["no", "yes"]
    assert label_space(task, few).source.startswith("rule:few_labels(max_labels=10)")


def test_max_labels_bounds_the_label_count(superni_dir):
    task = load_task_file(superni_dir / "tasks" / "task1289_trec_classification.json")  # six labels
    assert len(label_space(task, DEFAULT_RULE).labels) == 6
    assert label_space(task, ClassificationRule(max_labels=5)) is None


# --- instance sampling ----------------------------------------------------------------------------


def test_training_sample_is_stable_per_seed_and_differs_across_seeds():
    task = _task("task_a", 300)
    assert _sample_ids(task, 100, seed=1) == _sample_ids(task, 100, seed=1)
    assert _sample_ids(task, 100, seed=1) != _sample_ids(task, 100, seed=2)
    assert len(set(_sample_ids(task, 100, seed=1))) == 100
    assert _sample_ids(task, 100, seed=1)[:10] != [f"task_a-{i}" for i in range(10)]  # really shuffled


def test_larger_samples_extend_smaller_ones():
    task = _task("task_a", 1000)
    sizes = (10, 20, 50, 100, 200, 400, 800)
    samples = [_sample_ids(task, n, seed=7) for n in sizes]
    for smaller, larger in zip(samples, samples[1:]):
        assert larger[: len(smaller)] == smaller


def test_a_tasks_sample_does_not_depend_on_the_other_tasks(tmp_path):
    source = LocalFolderSource(write_synthetic_suite(tmp_path / "suite", SyntheticConfig(instances_per_task=50)), "test suite")
    few = DataConfig(train_tasks=["synth_numbers_parity"], test_tasks=["synth_comparison_larger"], instances_per_task=10, dev_tasks=0)
    # The added tasks sort before it: a shared RNG would be advanced by their shuffles.
    many = few.model_copy(update={"train_tasks": ["synth_numbers_is_even", "synth_numbers_is_divisible_by_three", "synth_numbers_parity"]})
    alone = load_study_data(few, seed=3, source=source).train[0]
    together = {t.name: t for t in load_study_data(many, seed=3, source=source).train}["synth_numbers_parity"]
    assert [i.id for i in alone.instances] == [i.id for i in together.instances]


def test_evaluation_takes_the_first_instances():
    task = _task("task_b", 150)
    assert [i.id for i in evaluation_instances(task, 100)] == [f"task_b-{i}" for i in range(100)]
    assert len(evaluation_instances(task, 500)) == 150


# --- load_study_data on the real SuperNI sample ---------------------------------------------------


def _superni(superni_dir, **changes) -> DataConfig:
    return DataConfig(source="superni", superni_dir=str(superni_dir), **changes)


def test_split_lists_proceed_without_missing_tasks_and_say_so(superni_dir):
    data = load_study_data(_superni(superni_dir), seed=42)
    assert len(data.test) == 101 and len(data.train) == 21 and len(data.dev) == 4
    assert {task.name for task in data.train}.isdisjoint(task.name for task in data.dev)
    assert data.source == f"SuperNI folder {superni_dir}"
    missing_note = next(note for note in data.notes if note.startswith("test: 18 tasks listed in split 'default'"))
    assert "task1728_web_nlg_data_to_text" in missing_note
    assert any(note.startswith("test: 68 tasks have fewer than 100 instances") for note in data.notes)
    by_name = {task.name: task for task in data.test}
    assert by_name["task020_mctaco_span_based_question"].is_classification
    assert not by_name["task033_winogrande_answer_generation"].is_classification
    assert [i.id for i in by_name["task020_mctaco_span_based_question"].instances] == [
        i.id for i in load_task_file(superni_dir / "tasks" / "task020_mctaco_span_based_question.json").instances[:100]
    ]


def test_explicitly_named_missing_tasks_are_refused(superni_dir):
    config = _superni(superni_dir, test_tasks=["task020_mctaco_span_based_question", "task1728_web_nlg_data_to_text"])
    with pytest.raises(UnknownTaskError, match="task 'task1728_web_nlg_data_to_text' is not in SuperNI folder"):
        load_study_data(config, seed=42)


def test_overlapping_training_and_test_tasks_are_refused(superni_dir):
    config = _superni(superni_dir, test_tasks=["task020_mctaco_span_based_question"],
                      train_tasks=["task020_mctaco_span_based_question", "task109_smsspamcollection_spamsmsdetection"], dev_tasks=0)
    with pytest.raises(SelectionError, match="overlap in 1 tasks \\(task020_mctaco_span_based_question\\)"):
        load_study_data(config, seed=42)


def test_short_tasks_are_capped_or_refused(superni_dir):
    names = dict(test_tasks=["task1388_cb_entailment"], train_tasks=["task109_smsspamcollection_spamsmsdetection"], dev_tasks=0)
    capped = load_study_data(_superni(superni_dir, **names), seed=42)
    assert len(capped.test[0].instances) == 53 and len(capped.train[0].instances) == 55
    assert "train: 1 tasks have fewer than 100 instances and are used whole: task109_smsspamcollection_spamsmsdetection (55)" in capped.notes
    with pytest.raises(SelectionError, match="on_short_task=refuse: 1 test tasks have fewer than the 100 instances asked: task1388_cb_entailment \\(53\\)"):
        load_study_data(_superni(superni_dir, on_short_task="refuse", **names), seed=42)


def test_filters_by_kind_category_language_and_task_count(superni_dir):
    data = load_study_data(
        _superni(superni_dir, test_task_kind="classification", train_task_kind="generation", num_train_tasks=2, dev_tasks=1),
        seed=42,
    )
    assert len(data.test) == 51 and all(task.is_classification for task in data.test)
    assert len(data.train) == 2 and all(not task.is_classification for task in data.train + data.dev)
    entailment = load_study_data(_superni(superni_dir, categories=["Textual Entailment", "Sentiment Analysis"]), seed=42)
    assert {task.categories[0] for task in entailment.test} == {"Textual Entailment"}
    assert {task.categories[0] for task in entailment.train} == {"Sentiment Analysis"}
    with pytest.raises(SelectionError, match="no test tasks left in SuperNI folder .*data.test_task_kind, data.categories or data.languages"):
        load_study_data(_superni(superni_dir, languages=["German"]), seed=42)


def test_digest_is_stable_and_tracks_the_selection(superni_dir):
    config = _superni(superni_dir, instances_per_task=20)
    first, again = load_study_data(config, seed=1), load_study_data(config, seed=1)
    assert first.digest == again.digest and len(first.digest) == 64
    assert load_study_data(config, seed=2).digest != first.digest
    assert load_study_data(_superni(superni_dir, instances_per_task=21), seed=1).digest != first.digest
    assert [i.id for i in first.train[0].instances] == [i.id for i in again.train[0].instances]


def test_the_default_config_runs_on_the_synthetic_suite_with_no_download():
    data = load_study_data(DataConfig(), seed=42)
    assert len(data.train) == 220 and len(data.dev) == 4 and len(data.test) == 7
    assert all(task.is_classification for task in data.train + data.test)
    assert all(len(task.instances) == 100 for task in data.train + data.test)
    assert all(len(task.instances) == 20 for task in data.dev)
    assert [note.split(":")[0] for note in data.notes] == ["dev"] and data.source.startswith(f"synthetic suite v{GENERATOR_VERSION}-seed0-n200")


# --- the dev split and the instruction-diversity draw ----------------------------------------------


def test_growing_task_draws_are_nested_and_span_categories(superni_dir):
    draws = [
        load_study_data(_superni(superni_dir, train_task_kind="classification", num_train_tasks=n), seed=42)
        for n in (2, 4, 8)
    ]
    names = [{task.name for task in data.train} for data in draws]
    assert [len(n) for n in names] == [2, 4, 8] and names[0] < names[1] < names[2]
    for data in draws:  # the first draws come from as many categories as there are tasks
        assert len({task.category for task in data.train}) == len(data.train)
    # the dev tasks are the same whatever the number of training tasks, and never trained on
    assert len({tuple(task.name for task in data.dev) for data in draws}) == 1
    assert all({task.name for task in data.dev}.isdisjoint(n) for n in names)
    other_seed = load_study_data(_superni(superni_dir, train_task_kind="classification", num_train_tasks=4), seed=7)
    assert {task.name for task in other_seed.train} != names[1]


def test_synthetic_draw_of_two_tasks_spans_two_families():
    # Sorted order picked a rule and its relabelled copy; the stratified draw takes two families.
    data = load_study_data(DataConfig(num_train_tasks=2, dev_tasks=1), seed=42)
    assert len({task.category for task in data.train}) == 2


def test_a_fixed_budget_keeps_tasks_times_instances_constant(superni_dir):
    for n in (2, 5, 8):
        data = load_study_data(_superni(superni_dir, train_task_kind="classification", num_train_tasks=n, train_budget=40), seed=1)
        assert sum(len(task.instances) for task in data.train) == 40
        assert {len(task.instances) for task in data.train} <= {40 // n, 40 // n + 1}
    with pytest.raises(SelectionError, match="data.train_budget=3 is fewer instances than the 8 training tasks"):
        load_study_data(_superni(superni_dir, num_train_tasks=8, train_budget=3), seed=1)


def test_a_dev_split_that_would_starve_training_is_refused(superni_dir):
    with pytest.raises(SelectionError, match="data.dev_tasks=4 would leave no training task: only 4 training tasks pass"):
        load_study_data(_superni(superni_dir, train_task_kind="generation"), seed=42)
    with pytest.raises(SelectionError, match="data.num_train_tasks=20 asks for more training tasks than the 17 left after data.dev_tasks=4"):
        load_study_data(_superni(superni_dir, train_task_kind="classification", num_train_tasks=20), seed=42)


def test_the_dev_split_does_not_depend_on_the_test_tasks(superni_dir):
    few = load_study_data(_superni(superni_dir, test_instances_per_task=2), seed=42)
    many = load_study_data(_superni(superni_dir, test_task_kind="classification"), seed=42)
    assert [(t.name, [i.id for i in t.instances]) for t in few.dev] == [(t.name, [i.id for i in t.instances]) for t in many.dev]
