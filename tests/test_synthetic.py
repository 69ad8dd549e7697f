"""The synthetic suite: deterministic, diverse, balanced, and its output format learnable only from the prompt."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from itstudy.answers import normalize_answer
from itstudy.config import ClassificationRule, SyntheticConfig, load_study
from itstudy.data.selection import label_space
from itstudy.data.sources import LocalFolderSource
from itstudy.data.synthetic import FAMILIES, LABEL_POOL, SyntheticError, counterfactual_pairs, write_synthetic_suite

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return write_synthetic_suite(tmp_path_factory.mktemp("suite"), SyntheticConfig(seed=0, instances_per_task=200))


@pytest.fixture(scope="module")
def tasks(suite):
    source = LocalFolderSource(suite, description="synthetic suite")
    return {name: source.load_task(name) for which in ("train", "test") for name in source.task_names(which, "default")}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _family(folder: Path, name: str) -> str:
    return json.loads((folder / "tasks" / f"{name}.json").read_text())["_synthetic"]["family"]


def test_the_demo_suite_is_byte_identical_when_written_again_and_another_seed_differs(suite, tmp_path):
    demo = load_study(REPO / "experiments" / "demo.yaml").data.synthetic
    assert demo == SyntheticConfig(seed=0, instances_per_task=200), "the `suite` fixture is the demo's suite"
    again = write_synthetic_suite(tmp_path / "again", demo)
    assert _files(again) == _files(suite)
    other = _files(write_synthetic_suite(tmp_path / "other", SyntheticConfig(seed=1, instances_per_task=200)))
    assert other.keys() == _files(suite).keys()
    assert other["tasks/synth_numbers_parity.json"] != _files(suite)["tasks/synth_numbers_parity.json"]
    drawn = [name for name in other if name.endswith("_d01.json")]
    assert any(json.loads(other[name])["Definition"] != json.loads(_files(suite)[name])["Definition"] for name in drawn)


def test_at_least_20_tasks_in_at_least_5_families_with_disjoint_train_and_test_families(suite, tasks):
    train = (suite / "splits" / "default" / "train_tasks.txt").read_text().split()
    test = (suite / "splits" / "default" / "test_tasks.txt").read_text().split()
    assert len(train) + len(test) == len(tasks) >= 20
    train_families = {_family(suite, name) for name in train}
    test_families = {_family(suite, name) for name in test}
    assert len(train_families | test_families) >= 5
    assert not train_families & test_families and test_families
    assert {family.name for family in FAMILIES} == train_families | test_families


def test_every_task_is_classification_with_its_labels_named_in_the_definition(tasks):
    for name, task in tasks.items():
        space = label_space(task, ClassificationRule())
        assert space is not None, name
        assert 2 <= len(space.labels) <= 4
        assert all(f"'{label}'" in task.definition for label in space.labels), "the definition names every label"
        assert all(len(label.split()) == 1 for label in space.labels), "outputs are single words"
        shown = {normalize_answer(example.output) for example in task.positive_examples}
        assert shown == {normalize_answer(label) for label in space.labels}, "one demonstration per label"
        assert task.negative_examples and all(e.explanation for e in task.positive_examples + task.negative_examples)
        assert len({i.input for i in task.instances}) == len(task.instances) == 200
        demos = {e.input for e in task.positive_examples + task.negative_examples}
        assert not demos & {i.input for i in task.instances}, "demonstrations never reappear as instances"


def test_first_100_instances_of_test_tasks_are_label_balanced(suite, tasks):
    for name in (suite / "splits" / "default" / "test_tasks.txt").read_text().split():
        counts = Counter(i.outputs[0] for i in tasks[name].instances[:100])
        assert max(counts.values()) - min(counts.values()) <= 2, (name, counts)


def test_counterfactual_pairs_share_inputs_and_disagree_on_most(tasks):
    pairs = counterfactual_pairs()
    assert len(pairs) >= 5
    assert ("synth_numbers_is_even", "synth_numbers_is_greater_than_5000") in pairs
    for first, second in pairs:
        a, b = tasks[first], tasks[second]
        assert [i.input for i in a.instances] == [i.input for i in b.instances]
        assert [e.input for e in a.positive_examples] == [e.input for e in b.positive_examples]
        assert a.definition != b.definition
        disagree = sum(x.outputs != y.outputs for x, y in zip(a.instances, b.instances)) / len(a.instances)
        assert disagree > 0.6, (first, second, disagree)
        # A model that ignores the definition answers both tasks alike, so it is wrong on one of
        # them for every disagreeing input; and no label is frequent enough to guess constantly.
        for task in (a, b):
            counts = Counter(i.outputs[0] for i in task.instances)
            assert max(counts.values()) / len(task.instances) <= 0.6, (task.name, counts)


def _quoted(definition: str) -> list[str]:
    return definition.split("'")[1::2]


def test_labels_follow_the_stated_rule(tasks):
    for instance in tasks["synth_numbers_is_even"].instances:
        assert instance.outputs == ("yes" if int(instance.input) % 2 == 0 else "no",)
    drawn = tasks["synth_numbers_is_even_d01"]
    when_even, when_odd = _quoted(drawn.definition)
    for instance in drawn.instances:
        assert instance.outputs == (when_even if int(instance.input) % 2 == 0 else when_odd,)
    for instance in tasks["synth_comparison_smaller"].instances:
        first, second = (int(part.split(": ")[1]) for part in instance.input.split(", "))
        assert instance.outputs == ("first" if first < second else "second",)


def _label_vocabulary(task) -> frozenset[str]:
    return frozenset(normalize_answer(label) for label in label_space(task, ClassificationRule()).labels)


def test_label_words_vary_across_training_tasks_so_no_label_set_can_be_memorised(suite, tasks):
    train = (suite / "splits" / "default" / "train_tasks.txt").read_text().split()
    test = (suite / "splits" / "default" / "test_tasks.txt").read_text().split()
    vocabularies = Counter(_label_vocabulary(tasks[name]) for name in train)
    assert len(vocabularies) >= len(train) / 2, "most training tasks have a label set of their own"
    assert max(vocabularies.values()) / len(train) <= 0.05, vocabularies.most_common(3)
    outputs = Counter(normalize_answer(i.outputs[0]) for name in train for i in tasks[name].instances)
    assert max(outputs.values()) / sum(outputs.values()) <= 0.1, "no answer word dominates training"
    # As in SuperNI, each test label word is also an answer of some training tasks (in other roles).
    assert all(_label_vocabulary(tasks[name]) <= set(outputs) for name in test)


def test_every_pool_word_labels_as_many_drawn_groups_as_any_other(tasks):
    # Test label words are neither rarer nor commoner in training than the other pool words: a
    # pool word's count differs from another's by one at most (counted once per group: a pair's
    # two tasks share one draw).
    drawn = {}
    for name, task in tasks.items():
        if re.search(r"_d\d\d$", name):
            drawn[min(name, task.counterfactual_of or name)] = _label_vocabulary(task)
    counts = Counter(word for words in drawn.values() for word in words)
    assert set(counts) == set(LABEL_POOL)
    assert max(counts.values()) - min(counts.values()) <= 1, counts.most_common()


def test_a_drawn_task_is_its_rule_with_label_words_from_the_pool(tasks):
    for plain, drawn in (("synth_words_is_animal", "synth_words_is_animal_d03"), ("synth_words_category", "synth_words_category_d07")):
        plain, drawn = tasks[plain], tasks[drawn]
        words = dict(zip(_quoted(plain.definition), _quoted(drawn.definition)))
        assert set(words.values()) <= set(LABEL_POOL) and len(set(words.values())) == len(words)
        expected = plain.definition
        for old, new in words.items():
            expected = expected.replace(f"'{old}'", f"'{new}'")
        assert drawn.definition == expected
        assert {e.output for e in drawn.positive_examples} == set(words.values())


def test_asking_for_more_instances_than_a_family_has_is_refused(tmp_path):
    with pytest.raises(SyntheticError, match="synthetic family 'sentiment' .* lower data.synthetic.instances_per_task"):
        write_synthetic_suite(tmp_path / "huge", SyntheticConfig(instances_per_task=5000))
