"""SuperNI metric semantics: Tk-Instruct's normalisation, best-of-references, percent aggregates."""

from __future__ import annotations

import pytest

from itstudy.answers import normalize_answer
from itstudy.metrics import (
    Prediction,
    aggregate,
    exact_match,
    rouge_l,
    score_predictions,
    task_rows,
)


@pytest.mark.parametrize(
    "prediction, references, expected",
    [
        ("Yes", ["yes.", "No"], 1.0),  # case and punctuation ignored, any reference counts
        ("The  cat!", ["the cat"], 1.0),  # whitespace collapsed
        ("a cat", ["cat"], 0.0),  # articles are kept (unlike SQuAD)
        ("no", ["yes", "Yes."], 0.0),
        ("New-York", ["newyork"], 1.0),  # punctuation is removed, not replaced by a space
        ("", [""], 1.0),
    ],
)
def test_exact_match_golden(prediction, references, expected):
    assert exact_match(prediction, references) == expected


def test_normalize_answer_is_tk_instructs():
    assert normalize_answer("  The Cat, the HAT!\n") == "the cat the hat"


@pytest.mark.parametrize(
    "prediction, references, expected",
    [
        # LCS("the cat sat", "the cat") = 2: P = 2/3, R = 2/2, F = 2PR/(P+R) = 0.8
        ("the cat sat", ["the cat"], 0.8),
        # best reference: LCS with "the cat sat" is 3 of 6 predicted tokens: P = 1/2, R = 1, F = 2/3
        ("the cat sat on the mat", ["a dog barked", "the cat sat"], 2 / 3),
        # rouge-score lowercases and splits on non-alphanumerics, so case and punctuation do not matter
        ("The Cat!", ["the cat"], 1.0),
        # the Porter stemmer is on: cats -> cat, running / runs -> run
        ("cats running", ["cat runs"], 1.0),
        # LCS("a b c d", "a c e") = 2 (a, c): P = 2/4, R = 2/3, F = 2 * (1/2)(2/3) / (7/6) = 4/7
        ("a b c d", ["a c e"], 4 / 7),
        ("yes", ["no"], 0.0),
    ],
)
def test_rouge_l_golden(prediction, references, expected):
    assert rouge_l(prediction, references) == pytest.approx(expected)


def test_a_prediction_without_references_is_refused():
    with pytest.raises(ValueError, match="at least one reference"):
        exact_match("x", [])
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_l("x", [])


def _pred(task, answer, refs, category="textual_entailment", classification=True, n=0) -> Prediction:
    return Prediction(task, category, f"{task}-{n}", answer, tuple(refs), classification, prompt_hash="abc")


def _scored_suite():
    return score_predictions(
        [
            _pred("task1_entail", "yes", ["yes"], n=1),
            _pred("task1_entail", "no", ["yes"], n=2),
            _pred("task1_entail", "Yes.", ["yes", "no"], n=3),
            _pred("task2_title", "the cat sat", ["the cat"], category="title_generation", classification=False),
        ]
    )


def test_score_predictions_scores_each_instance_in_unit_range():
    scored = _scored_suite()
    assert [s.exact_match for s in scored] == [1.0, 0.0, 1.0, 0.0]
    assert [s.rougeL for s in scored] == pytest.approx([1.0, 0.0, 1.0, 0.8])
    record = scored[3].record()
    assert record == {
        "task": "task2_title",
        "category": "title_generation",
        "instance_id": "task2_title-0",
        "prompt_hash": "abc",
        "prediction": "the cat sat",
        "references": ["the cat"],
        "is_classification": False,
        "exact_match": 0.0,
        "rougeL": pytest.approx(0.8),
        "in_label_space": None,  # a generation task has no label space
        "rank_choice": None,
        "rank_exact_match": None,
    }


def test_aggregate_reports_percent_per_task_category_kind_and_both_overall_means():
    figures = aggregate(_scored_suite())
    expected = {
        "exact_match": 50.0,  # 2 of 4 instances
        "rougeL": 100 * (1 + 0 + 1 + 0.8) / 4,
        "exact_match_task_mean": (200 / 3 + 0) / 2,  # tasks weigh equally
        "rougeL_task_mean": (200 / 3 + 80) / 2,
        "exact_match_for_task1_entail": 200 / 3,
        "rougeL_for_task1_entail": 200 / 3,
        "exact_match_for_task2_title": 0.0,
        "rougeL_for_task2_title": 80.0,
        "exact_match_for_textual_entailment": 200 / 3,
        "rougeL_for_textual_entailment": 200 / 3,
        "exact_match_for_title_generation": 0.0,
        "rougeL_for_title_generation": 80.0,
        "exact_match_classification": 200 / 3,
        "rougeL_classification": 200 / 3,
        "exact_match_generation": 0.0,
        "rougeL_generation": 80.0,
    }
    assert figures == pytest.approx(expected)


def test_instance_mean_equals_task_mean_when_tasks_have_equal_counts():
    scored = score_predictions(
        [_pred("task1_a", "yes", ["yes"], n=1), _pred("task1_a", "no", ["yes"], n=2)]
        + [_pred("task2_b", "yes", ["yes"], n=1), _pred("task2_b", "yes", ["yes"], n=2)]
    )
    figures = aggregate(scored)
    assert figures["exact_match"] == pytest.approx(figures["exact_match_task_mean"]) == pytest.approx(75.0)


def test_tk_instruct_data_fixes_task1415_out_of_pooled_figures_and_task121_renamed():
    scored = score_predictions(
        [
            _pred("task1415_youtube_caption_corrections_grammar_correction", "wrong", ["right"], classification=False),
            _pred("task121_atomic_question_rewriting", "same", ["same"], classification=False),
        ]
    )
    figures = aggregate(scored)
    assert figures["exact_match"] == 100.0  # task1415 left out of the overall figure
    assert figures["exact_match_generation"] == 100.0
    assert figures["exact_match_task_mean"] == 100.0
    assert figures["exact_match_for_task1415_youtube_caption_corrections_grammar_correction"] == 0.0
    assert figures["exact_match_for_task121_zest_question_rewriting"] == 100.0
    assert not any("atomic" in key for key in figures)
    rows = {row["task"]: row for row in task_rows(scored)}
    assert rows["task1415_youtube_caption_corrections_grammar_correction"]["in_pooled"] is False
    assert rows["task121_zest_question_rewriting"]["in_pooled"] is True


def test_task_rows_for_the_csv():
    rows = task_rows(_scored_suite())
    assert rows == [
        {
            "task": "task1_entail",
            "category": "textual_entailment",
            "is_classification": True,
            "n": 3,
            "exact_match": pytest.approx(200 / 3),
            "rougeL": pytest.approx(200 / 3),
            "in_pooled": True,
        },
        {
            "task": "task2_title",
            "category": "title_generation",
            "is_classification": False,
            "n": 1,
            "exact_match": 0.0,
            "rougeL": pytest.approx(80.0),
            "in_pooled": True,
        },
    ]


def test_aggregate_of_nothing_is_empty():
    assert aggregate([]) == {}
