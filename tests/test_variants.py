"""Instruction variants: each transform does what its name says, deterministically per (seed, task)."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest
from pydantic import ValidationError

from itstudy.answers import normalize_answer
from itstudy.config import ClassificationRule, VariantConfig
from itstudy.data.selection import label_space
from itstudy.data.superni import load_task_file
from itstudy.data.task import Example, Instance, LabelSpace, Task
from itstudy.variants import VariantError, apply_variant

LABELS = ("yes", "no", "maybe")


def classification_task(name="task100_demo_classification", outputs=("Yes.", "no", "maybe")) -> Task:
    return Task(
        name=name,
        definition="Answer yes, no or maybe.",
        positive_examples=tuple(Example(f"question {i}", out, explanation=f"why {i}") for i, out in enumerate(outputs)),
        negative_examples=(Example("bad 1", "perhaps"), Example("bad 2", "sure")),
        instances=tuple(Instance(f"i{i}", f"input {i}", (LABELS[i % 3],)) for i in range(6)),
        categories=("Textual Entailment",),
        label_space=LabelSpace(LABELS, source="hand-written for the test"),
    )


def generation_task() -> Task:
    return Task(
        name="task200_demo_title_generation",
        definition="Write a title.",
        positive_examples=(Example("text a", "Title A"), Example("text b", "Title B")),
        negative_examples=(),
        instances=(Instance("g1", "text c", ("Title C",)),),
    )


def variant(**fields) -> VariantConfig:
    return VariantConfig(**fields)


def test_original_keeps_the_definition_and_the_first_k_positive_examples():
    task = classification_task()
    altered = apply_variant(task, variant(num_examples=2), seed=1)
    assert altered.definition == task.definition
    assert altered.positive_examples == task.positive_examples[:2]
    assert altered.negative_examples == ()  # Tk-Instruct shows none by default
    assert altered.instances == task.instances and altered.label_space == task.label_space


def test_negative_examples_are_kept_up_to_the_configured_number():
    altered = apply_variant(classification_task(), variant(num_negative_examples=1), seed=1)
    assert altered.negative_examples == (Example("bad 1", "perhaps"),)


def test_simplified_definition_is_the_template_filled_with_the_label_list():
    altered = apply_variant(classification_task(), variant(definition="simplified"), seed=1)
    assert altered.definition == "Output one of the following: yes, no, maybe."
    custom = variant(definition="simplified", simplified_template="Answer with {labels}")
    assert apply_variant(classification_task(), custom, seed=1).definition == "Answer with yes, no, maybe"


def test_no_definition_and_no_examples():
    altered = apply_variant(classification_task(), variant(definition="none", examples="none"), seed=1)
    assert altered.definition == "" and altered.positive_examples == ()


def _delusive(strategy: str, seed: int, task: Task | None = None, k: int = 3) -> Task:
    cfg = variant(examples="delusive", delusive_strategy=strategy, num_examples=k)
    return apply_variant(task or classification_task(), cfg, seed=seed)


@pytest.mark.parametrize("seed", range(20))
def test_other_label_makes_every_shown_output_a_different_label(seed):
    task = classification_task()
    altered = _delusive("other_label", seed)
    for before, after in zip(task.positive_examples, altered.positive_examples):
        assert after.input == before.input  # same input space
        assert after.output in LABELS  # same output space
        assert normalize_answer(after.output) != normalize_answer(before.output)  # wrong mapping
        assert after.explanation == ""  # the original explanation argued for the true output


def test_random_label_draws_labels_uniformly_and_may_keep_the_true_one():
    task = classification_task()
    drawn = [_delusive("random_label", seed).positive_examples for seed in range(60)]
    outputs = [example.output for shown in drawn for example in shown]
    assert set(outputs) == set(LABELS)
    kept_right = sum(
        normalize_answer(a.output) == normalize_answer(b.output) for shown in drawn for a, b in zip(shown, task.positive_examples)
    )
    assert 0 < kept_right < len(outputs)  # about a third, as in Min et al. 2022


@pytest.mark.parametrize("seed", range(20))
def test_permute_is_a_derangement_when_outputs_differ(seed):
    task = classification_task(outputs=("yes", "no", "maybe"))
    altered = _delusive("permute", seed, task=task)
    before = [e.output for e in task.positive_examples]
    after = [e.output for e in altered.positive_examples]
    assert sorted(after) == sorted(before)  # outputs only move among the shown examples
    assert all(a != b for a, b in zip(after, before))
    assert [e.input for e in altered.positive_examples] == [e.input for e in task.positive_examples]


def test_permute_cannot_corrupt_identical_outputs():
    # Documented behaviour: with every shown output equal, a derangement changes nothing.
    task = classification_task(outputs=("yes", "yes"))
    altered = _delusive("permute", seed=3, task=task, k=2)
    assert [e.output for e in altered.positive_examples] == ["yes", "yes"]


def test_permute_needs_two_shown_examples():
    task = classification_task(outputs=("yes",))
    with pytest.raises(VariantError, match="task100_demo_classification.*permute.*at least 2"):
        _delusive("permute", seed=0, task=task, k=2)


def test_permute_works_on_generation_tasks():
    altered = _delusive("permute", seed=0, task=generation_task(), k=2)
    assert [e.output for e in altered.positive_examples] == ["Title B", "Title A"]


@pytest.mark.parametrize("strategy", ["permute", "other_label", "random_label"])
def test_the_same_seed_gives_the_same_transform_and_seeds_differ(strategy):
    assert _delusive(strategy, seed=7) == _delusive(strategy, seed=7)
    outcomes = {tuple(e.output for e in _delusive(strategy, seed).positive_examples) for seed in range(10)}
    assert len(outcomes) > 1


def test_a_tasks_transform_depends_on_its_name_not_on_other_tasks_or_global_random():
    task_a = classification_task(name="task101_a")
    alone = _delusive("random_label", seed=5, task=task_a)
    for other in range(5):  # other tasks transformed first must not shift task_a's draws
        _delusive("random_label", seed=5, task=classification_task(name=f"task9{other}_other"))
    random.seed(123)
    assert _delusive("random_label", seed=5, task=task_a) == alone

    state = random.getstate()
    _delusive("random_label", seed=5, task=task_a)
    assert random.getstate() == state  # the global stream is never touched

    same_content = [_delusive("random_label", seed, task=classification_task(name="task102_b")) for seed in range(10)]
    renamed = [_delusive("random_label", seed, task=task_a) for seed in range(10)]
    assert [t.positive_examples for t in same_content] != [t.positive_examples for t in renamed]


@pytest.mark.parametrize(
    "fields, needs",
    [
        ({"definition": "simplified"}, "simplified definition"),
        ({"examples": "delusive", "delusive_strategy": "other_label"}, "other_label"),
        ({"examples": "delusive", "delusive_strategy": "random_label"}, "random_label"),
    ],
)
def test_a_variant_that_needs_labels_is_refused_on_a_generation_task(fields, needs):
    cfg = variant(**fields)
    expected = f"task200_demo_title_generation: variant {cfg.name} needs a label space"
    with pytest.raises(VariantError, match=re.escape(expected)) as error:
        apply_variant(generation_task(), cfg, seed=0)
    assert needs in str(error.value)


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"definition": "paraphrased"}, "variant.definition 'paraphrased'"),
        ({"examples": "shuffled"}, "variant.examples 'shuffled'"),
        ({"examples": "delusive", "delusive_strategy": "flip"}, "variant.delusive_strategy 'flip'"),
    ],
)
def test_unknown_names_are_refused_naming_the_task_and_the_variant(fields, field):
    # The config's Literal types refuse these at load time; model_construct bypasses that, as a
    # hand-built config in a notebook might.
    cfg = VariantConfig.model_construct(**{**VariantConfig().model_dump(), **fields})
    expected = f"task100_demo_classification: variant {cfg.name}: unknown {field}"
    with pytest.raises(VariantError, match=re.escape(expected)):
        apply_variant(classification_task(), cfg, seed=0)


def test_a_template_that_cannot_be_filled_is_refused_when_the_config_loads():
    # Refused up front, before any task or worker is touched.
    with pytest.raises(ValidationError, match="simplified_template must contain '\\{labels\\}'"):
        variant(definition="simplified", simplified_template="Pick {label}")


def test_on_a_real_superni_task_with_identical_demo_outputs(superni_dir):
    task = load_task_file(superni_dir / "tasks" / "task020_mctaco_span_based_question.json")
    task = replace(task, label_space=label_space(task, ClassificationRule()))
    assert [normalize_answer(e.output) for e in task.positive_examples[:2]] == ["yes", "yes"]

    simplified = apply_variant(task, variant(definition="simplified"), seed=42)
    assert simplified.definition == f"Output one of the following: {', '.join(task.label_space.labels)}."
    other = apply_variant(task, variant(examples="delusive", delusive_strategy="other_label"), seed=42)
    assert [normalize_answer(e.output) for e in other.positive_examples] == ["no", "no"]
    # The documented limit of permute: both demos say "Yes.", so a derangement changes nothing.
    permuted = apply_variant(task, variant(examples="delusive", delusive_strategy="permute"), seed=42)
    assert permuted.positive_examples == tuple(replace(e, explanation="") for e in task.positive_examples[:2])
