"""Model-free baselines: what they predict, that they are seeded, and what they skip."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from itstudy.baselines import BASELINES, run_baseline, skipped_tasks
from itstudy.data.task import Example, Instance, LabelSpace, Task
from itstudy.metrics import aggregate, score_predictions


def labelled_task(name, labels, instance_outputs, demo_outputs=("yes", "no")) -> Task:
    return Task(
        name=name,
        definition=f"Answer with one of {', '.join(labels)}.",
        positive_examples=tuple(Example(f"demo {i}", out) for i, out in enumerate(demo_outputs)),
        negative_examples=(),
        instances=tuple(Instance(f"{name}-{i}", f"input {i}", (out,)) for i, out in enumerate(instance_outputs)),
        categories=("Textual Entailment",),
        label_space=LabelSpace(tuple(labels), source="hand-written for the test"),
    )


def balanced_task(name, num_labels, num_instances) -> Task:
    labels = [f"label{j}" for j in range(num_labels)]
    # Round-robin references, as SuperNI orders its evaluation instances.
    return labelled_task(name, labels, [labels[i % num_labels] for i in range(num_instances)], demo_outputs=labels[:1])


def generation_task() -> Task:
    return Task(
        name="task300_title_generation",
        definition="Write a title.",
        positive_examples=(Example("text a", " Title A "),),
        negative_examples=(),
        instances=(Instance("g1", "text c", ("Title C",)), Instance("g2", "text d", ("Title D",))),
        categories=("Title Generation",),
    )


def test_random_guess_scores_about_one_over_the_label_count():
    sizes, per_task = (2, 3, 5), 2000
    tasks = [balanced_task(f"task{k}_random", k, per_task) for k in sizes]
    figures = aggregate(score_predictions(BASELINES["random"](tasks, 0)))

    expected = 100 * sum(1 / k for k in sizes) / len(sizes)  # 34.4
    # Each instance is a Bernoulli(1/k) hit; the mean of the three task means has standard error
    # sqrt(sum p(1-p)/n) / 3 = 0.59 points at n = 2000. Four standard errors: a false alarm
    # rate below 1e-4 for any seed, while a biased guesser (say always the first label, 100%
    # on a third of the instances here) lands far outside.
    standard_error = 100 * math.sqrt(sum((1 / k) * (1 - 1 / k) / per_task for k in sizes)) / len(sizes)
    assert figures["exact_match"] == pytest.approx(expected, abs=4 * standard_error)
    for k in sizes:
        assert figures[f"exact_match_for_task{k}_random"] == pytest.approx(100 / k, abs=4 * 100 * math.sqrt(1 / k / per_task))


def test_random_guess_is_seeded_per_task():
    task_a, task_b = balanced_task("task1_a", 3, 50), balanced_task("task2_b", 3, 50)
    first = BASELINES["random"]([task_a, task_b], 7)
    assert first == BASELINES["random"]([task_a, task_b], 7)
    assert first != BASELINES["random"]([task_a, task_b], 8)
    only_a = [p for p in first if p.task == "task1_a"]
    assert BASELINES["random"]([task_a], 7) == only_a  # independent of the other tasks in the run
    assert {p.prediction for p in first} <= {"label0", "label1", "label2"}


def test_majority_uses_the_positive_examples_not_the_evaluation_instances():
    task = labelled_task("task1_m", ["yes", "no"], ["no"] * 9 + ["yes"], demo_outputs=("no", "Yes.", "yes"))
    predictions = BASELINES["majority"]([task], 0)
    assert {p.prediction for p in predictions} == {"yes"}  # "Yes." and "yes" are one label
    assert len(predictions) == 10
    assert aggregate(score_predictions(predictions))["exact_match"] == 10.0


def test_majority_ties_go_to_the_first_label():
    task = labelled_task("task1_t", ["no", "yes"], ["yes"], demo_outputs=("yes", "no"))
    assert BASELINES["majority"]([task], 0)[0].prediction == "no"
    unlabelled_demos = labelled_task("task1_u", ["no", "yes"], ["yes"], demo_outputs=("maybe",))
    assert BASELINES["majority"]([unlabelled_demos], 0)[0].prediction == "no"


def test_majority_oracle_is_the_best_constant_on_the_evaluation_references():
    task = labelled_task("task1_o", ["yes", "no"], ["no", "No.", "no", "yes"], demo_outputs=("yes",))
    predictions = BASELINES["majority_oracle"]([task], 0)
    assert {p.prediction for p in predictions} == {"no"}
    oracle = aggregate(score_predictions(predictions))["exact_match"]
    assert oracle == 75.0
    for label in ("yes", "no"):  # no constant label does better
        constant = [replace(p, prediction=label) for p in predictions]
        assert aggregate(score_predictions(constant))["exact_match"] <= oracle


def test_copy_demo_repeats_the_first_positive_output_on_every_task():
    tasks = [generation_task(), labelled_task("task1_c", ["yes", "no"], ["yes", "no"], demo_outputs=("no", "yes"))]
    predictions = BASELINES["copy_demo"](tasks, 0)
    assert [(p.task, p.prediction) for p in predictions] == [
        ("task300_title_generation", "Title A"),
        ("task300_title_generation", "Title A"),
        ("task1_c", "no"),
        ("task1_c", "no"),
    ]


def test_predictions_carry_what_metrics_and_reports_need():
    task = labelled_task("task1_p", ["yes", "no"], ["yes", "no"])
    prediction = BASELINES["random"]([task], 0)[1]
    assert (prediction.task, prediction.category, prediction.instance_id) == ("task1_p", "textual_entailment", "task1_p-1")
    assert prediction.references == ("no",) and prediction.is_classification and prediction.prompt_hash == ""


@pytest.mark.parametrize("name", ["random", "majority", "majority_oracle"])
def test_label_baselines_skip_generation_tasks_with_a_reason(name):
    tasks = [generation_task(), labelled_task("task1_s", ["yes", "no"], ["yes"])]
    run = run_baseline(name, tasks, seed=0)
    assert {p.task for p in run.predictions} == {"task1_s"}
    assert run.skipped == {"task300_title_generation": "no label space (a generation task)"}


def test_copy_demo_skips_a_task_without_positive_examples():
    bare = Task("task400_bare", "Do it.", (), (), (Instance("b1", "x", ("y",)),))
    assert skipped_tasks("copy_demo", [bare, generation_task()]) == {"task400_bare": "no positive example to copy"}
    assert run_baseline("copy_demo", [bare], seed=0).predictions == []


@pytest.mark.parametrize("name, hint", [("oracle", "expected one of"), ("untuned", "needs a model")])
def test_unknown_baselines_are_refused(name, hint):
    with pytest.raises(ValueError, match=hint):
        run_baseline(name, [], seed=0)
