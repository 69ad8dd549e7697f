"""What tells format learning from instruction reading: label-space rate, rank classification,
the counterfactual-pair probe and the negation probe."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from itstudy.baselines import run_baseline
from itstudy.config import ClassificationRule, VariantConfig, study_from_dict
from itstudy.data.selection import label_space
from itstudy.data.superni import load_task_file, parse_task
from itstudy.data.task import Example, Instance, LabelSpace, Task
from itstudy.metrics import Prediction, aggregate, counterfactual_pair_inputs, score_predictions
from itstudy.prompts import build_source
from itstudy.training.evaluate import EvalItem, evaluation_predictions, label_log_likelihoods, rank_labels
from itstudy.training.models import build_model
from itstudy.variants import VariantError, apply_variant, apply_variant_to_test, negate_task

NEGATED = VariantConfig(definition="negated")


def _pred(task, answer, refs, labels=("yes", "no"), category="answerability_classification", **fields) -> Prediction:
    return Prediction(task, category, f"{task}-{answer}-{refs}", answer, tuple(refs), bool(labels), labels=labels, **fields)


# --- label_space_rate ----------------------------------------------------------------------------


def test_label_space_rate_counts_normalised_predictions_inside_the_tasks_labels():
    scored = score_predictions(
        [
            _pred("task1_a", "yes", ["yes"]),  # in space, right
            _pred("task1_a", "No.", ["yes"]),  # in space after normalisation, wrong
            _pred("task1_a", "maybe", ["no"]),  # outside
            _pred("task1_a", "yes no", ["no"]),  # outside: two labels are not one
            _pred("task2_b", "Positive!", ["negative"], labels=("positive", "negative"), category="sentiment_analysis"),
            _pred("task3_gen", "a title", ["the title"], labels=(), category="title_generation"),
        ]
    )
    assert [s.in_label_space for s in scored] == [1.0, 1.0, 0.0, 0.0, 1.0, None]
    figures = aggregate(scored)
    assert figures["label_space_rate"] == pytest.approx(60.0)  # 3 of 5 classification predictions
    assert figures["label_space_rate_for_task1_a"] == pytest.approx(50.0)
    assert figures["label_space_rate_for_task2_b"] == pytest.approx(100.0)
    assert figures["label_space_rate_for_sentiment_analysis"] == pytest.approx(100.0)
    assert "label_space_rate_for_task3_gen" not in figures and "label_space_rate_for_title_generation" not in figures
    assert figures["exact_match"] == pytest.approx(100 / 6)  # existing figures unchanged by the new fields


# --- rank classification -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_t5(t5_tokenizer):
    return build_model("scratch/t5-tiny", t5_tokenizer, seed=3).eval()


def _item(tokenizer, text, labels, references, task="task1_a") -> EvalItem:
    ids = tuple(tokenizer(text)["input_ids"])
    label_ids = tuple(tuple(tokenizer(label)["input_ids"]) for label in labels)
    return EvalItem(task, "cat", text, ids, tuple(references), bool(labels), "h", labels=tuple(labels), label_ids=label_ids)


def _hand_log_likelihood(model, tokenizer, source_ids, label) -> float:
    """One plain forward pass: sum over the target tokens (with </s>) of log p(token | prefix)."""
    target = torch.tensor([tokenizer(label)["input_ids"]])
    assert target[0, -1] == tokenizer.eos_token_id
    logits = model(input_ids=torch.tensor([source_ids]), labels=target).logits
    return logits.log_softmax(-1)[0, torch.arange(target.shape[1]), target[0]].sum().item()


def test_rank_classification_picks_the_label_with_the_highest_summed_log_likelihood(tiny_t5, t5_tokenizer):
    items = [
        _item(t5_tokenizer, "Is the number 12 even? Answer yes or no.", ("yes", "no"), ["yes"]),
        _item(t5_tokenizer, "Which is larger?", ("first", "second", "neither of them"), ["second"], task="task2_b"),
        _item(t5_tokenizer, "Write a title for this text.", (), ["A title"], task="task3_gen"),
    ]
    with torch.no_grad():
        hand = [[_hand_log_likelihood(tiny_t5, t5_tokenizer, item.input_ids, label) for label in item.labels] for item in items[:2]]
    # Both items in one padded batch: padding must not change any score.
    batched = label_log_likelihoods(
        tiny_t5,
        [item.input_ids for item in items[:2]],
        [item.label_ids for item in items[:2]],
        t5_tokenizer.pad_token_id,
        torch.float32,
    )
    for hand_scores, batch_scores in zip(hand, batched):
        assert batch_scores == pytest.approx(hand_scores, abs=1e-4)
    choices = rank_labels(tiny_t5, t5_tokenizer, items, batch_size=2)
    assert set(choices) == {0, 1}, "only items with a label space are ranked"
    for index, scores in enumerate(hand):
        assert choices[index] == items[index].labels[max(range(len(scores)), key=scores.__getitem__)]


def test_evaluation_predictions_carry_the_rank_choice_and_score_rank_exact_match(tiny_t5, t5_tokenizer):
    study = study_from_dict({"name": "rank", "eval": {"max_new_tokens": 3}})
    items = [_item(t5_tokenizer, f"Is {n} even? Answer yes or no.", ("yes", "no"), ["yes"]) for n in range(3)]
    predictions = evaluation_predictions(tiny_t5, t5_tokenizer, items, study, dtype=torch.float32)
    choices = rank_labels(tiny_t5, t5_tokenizer, items, batch_size=4)
    assert [p.rank_choice for p in predictions] == [choices[i] for i in range(3)]
    figures = aggregate(score_predictions(predictions))
    assert figures["rank_exact_match"] == pytest.approx(100 * sum(c == "yes" for c in choices.values()) / 3)
    assert "rank_exact_match_for_task1_a" in figures
    off = study_from_dict({"name": "rank", "eval": {"max_new_tokens": 3, "rank_classification": False}})
    unranked = evaluation_predictions(tiny_t5, t5_tokenizer, items, off, dtype=torch.float32)
    assert all(p.rank_choice is None for p in unranked) and "rank_exact_match" not in aggregate(score_predictions(unranked))


# --- counterfactual pairs ------------------------------------------------------------------------


def _pair_task(name, partner, outputs, labels=("yes", "no")) -> Task:
    inputs = ("x1", "x2", "x3")[: len(outputs)]
    return Task(
        name=name,
        definition=f"Rule of {name}.",
        positive_examples=(),
        negative_examples=(),
        instances=tuple(Instance(f"{name}-{i}", text, (out,)) for i, (text, out) in enumerate(zip(inputs, outputs))),
        label_space=LabelSpace(labels, source="hand"),
        counterfactual_of=partner,
    )


def test_the_synthetic_partner_is_parsed_from_the_task_file():
    raw = {
        "Definition": ["Answer 'yes' if even."],
        "Positive Examples": [{"input": "2", "output": "yes"}],
        "Negative Examples": [],
        "Instances": [{"id": "a-0", "input": "4", "output": ["yes"]}],
        "Categories": ["Synthetic"],
        "_synthetic": {"counterfactual_of": "synth_numbers_is_odd"},
    }
    assert parse_task(json.dumps(raw), "synth_numbers_is_even", "t.json").counterfactual_of == "synth_numbers_is_odd"
    raw["_synthetic"]["counterfactual_of"] = None
    assert parse_task(json.dumps(raw), "synth_numbers_is_even", "t.json").counterfactual_of == ""


def test_pair_rule_accuracy_counts_only_inputs_the_two_definitions_label_differently():
    # x1: the rules disagree; x2: they agree; x3: only the first task has it.
    first = _pair_task("pair_a", "pair_b", ["yes", "yes", "no"])
    second = _pair_task("pair_b", "pair_a", ["no", "yes"], labels=("yes", "no", "maybe"))
    marked = counterfactual_pair_inputs([first, second])
    assert marked == {("pair_a", "pair_a-0"): "pair_a", ("pair_b", "pair_b-0"): "pair_a"}
    assert counterfactual_pair_inputs([first]) == {}, "a pair needs both tasks among the test tasks"
    # A definition-ignoring constant guesser is right on exactly one task of each disagreeing input.
    predictions = run_baseline("majority_oracle", [first, second], seed=1).predictions
    constant = [replace(p, prediction="yes") for p in predictions]
    figures = aggregate(score_predictions(constant))
    assert figures["pair_rule_accuracy"] == pytest.approx(50.0)
    assert figures["pair_rule_accuracy_for_pair_a"] == pytest.approx(50.0)
    assert figures["pair_rule_chance"] == pytest.approx(100 * (1 / 2 + 1 / 3) / 2)
    assert "pair_rule_accuracy" not in aggregate(score_predictions([p for p in constant if p.task == "pair_a"][1:]))


# --- the negation probe --------------------------------------------------------------------------


def _synthetic_style_task() -> Task:
    raw = {
        "Definition": ["You are given a number. Answer 'yes' if the number is even, and 'no' if it is odd."],
        "Positive Examples": [
            {"input": "12", "output": "yes", "explanation": "12 is even, so the answer is 'yes'."},
            {"input": "7", "output": "no", "explanation": "7 is odd, so the answer is 'no'."},
        ],
        "Negative Examples": [{"input": "3", "output": "yes", "explanation": "3 is odd, so the answer should be 'no', not 'yes'."}],
        "Instances": [{"id": "e-0", "input": "44", "output": ["yes"]}, {"id": "e-1", "input": "5", "output": ["no"]}],
        "Categories": ["Synthetic"],
        "_synthetic": {"counterfactual_of": None},
    }
    task = parse_task(json.dumps(raw), "synth_numbers_is_even", "synthetic")
    return replace(task, label_space=LabelSpace(("yes", "no"), source="hand"))


def test_negated_synthetic_task_golden_prompt_and_answers(t5_tokenizer):
    task = _synthetic_style_task()
    negated = apply_variant(task, NEGATED, seed=1, test=True)
    assert build_source(negated, "44", t5_tokenizer, 1024) == (
        "Definition: You are given a number. Answer 'no' if the number is even, and 'yes' if it is odd.\n\n"
        " Positive Example 1 -\nInput: 12.\n Output: no.\n\n"
        " Positive Example 2 -\nInput: 7.\n Output: yes.\n\n"
        "Now complete the following example -\nInput: 44.\nOutput: "
    )
    assert [(i.outputs, i.unaltered_outputs) for i in negated.instances] == [(("no",), ("yes",)), (("yes",), ("no",))]
    assert negate_task(task, NEGATED).positive_examples[0].explanation == "12 is even, so the answer is 'no'."
    # Training tasks keep their instruction: only the test prompts are negated.
    assert apply_variant(task, NEGATED, seed=1) == apply_variant(task, VariantConfig(), seed=1)


def test_negated_real_superni_task_golden_prompt(superni_dir, t5_tokenizer):
    task = load_task_file(superni_dir / "tasks" / "task566_circa_classification.json")
    task = replace(task, label_space=label_space(task, ClassificationRule()))
    negated = apply_variant(task, NEGATED, seed=1, test=True)
    instance = negated.instances[0]
    assert build_source(negated, instance.input, t5_tokenizer, 1024) == (
        'Definition: In this task, you are given two sentences. Your task is to classify the given sentences as "No" '
        'if they have same meaning; otherwise, classify them as "Yes".\n\n'
        " Positive Example 1 -\nInput: Sentence-1: I'm looking forward to it.<sep>Sentence-2: I did hear about the "
        "event next week .\n Output: No.\n\n"
        " Positive Example 2 -\nInput: Sentence-1: Visiting historical landmarks is fun.<sep>Sentence-2: It's raining."
        "\n Output: Yes.\n\n"
        "Now complete the following example -\nInput: Sentence-1: That is what I'm looking for.<sep>Sentence-2: I need "
        "a studio .\nOutput: "
    )
    assert (instance.outputs, instance.unaltered_outputs) == (("No",), ("Yes",))


def test_tasks_that_cannot_be_negated_are_refused_alone_and_skipped_from_a_test_set(superni_dir):
    three_labels = replace(_synthetic_style_task(), name="three", label_space=LabelSpace(("yes", "no", "maybe"), "hand"))
    with pytest.raises(VariantError, match="task three: .*needs exactly two labels"):
        apply_variant(three_labels, NEGATED, seed=1, test=True)
    listed = load_task_file(superni_dir / "tasks" / "task833_poem_sentiment_classification.json")
    listed = replace(listed, label_space=label_space(listed, ClassificationRule()))
    with pytest.raises(VariantError, match="only lists the two labels"):
        negate_task(listed, NEGATED)  # "as one of 'positive' or 'negative'" says the same swapped

    kept, notes = apply_variant_to_test([three_labels, _synthetic_style_task()], NEGATED, seed=1)
    assert [t.name for t in kept] == ["synth_numbers_is_even"]
    assert notes == ("variant def-negated+ex-original: test task three skipped: needs exactly two labels to swap, the task has 3",)
    with pytest.raises(VariantError, match="none of the 1 test tasks can be negated"):
        apply_variant_to_test([three_labels], NEGATED, seed=1)
    with pytest.raises(ValueError, match="apply_to_test"):
        VariantConfig(definition="negated", apply_to_test=False)


def test_negation_rates_split_in_space_predictions_into_following_and_habit():
    def negated(answer, reference, habit):
        return _pred("task1_a", answer, [reference], habit_references=(habit,))

    scored = score_predictions(
        [negated("no", "no", "yes"), negated("yes", "no", "yes"), negated("yes", "no", "yes"), negated("what", "no", "yes")]
    )
    figures = aggregate(scored)
    assert figures["negation_follow_rate"] == pytest.approx(100 / 3)  # out-of-space "what" left out
    assert figures["negation_habit_rate"] == pytest.approx(200 / 3)
    assert "negation_follow_rate" not in aggregate(score_predictions([_pred("task1_a", "no", ["no"])]))


def test_prepared_negated_runs_carry_labels_habits_and_pairs_to_evaluation():
    from itstudy.training.prepare import prepare_run

    study = study_from_dict({"name": "negated", "variant": {"definition": "negated"}, "data": {"instances_per_task": 2}})
    tokenizer, data = prepare_run(study)
    assert data.test and all(item.labels for item in data.test)
    for item in data.test:  # labels tokenised as training targets are: the label's tokens, then </s>
        assert [ids[-1] for ids in item.label_ids] == [tokenizer.eos_token_id] * len(item.labels)
        assert [tokenizer.decode(ids, skip_special_tokens=True) for ids in item.label_ids] == list(item.labels)
    assert all(item.habit_references and item.habit_references != item.references for item in data.test)
    assert any(item.pair for item in data.test), "the synthetic test split holds counterfactual pairs"


# --- baselines -----------------------------------------------------------------------------------


def test_baselines_carry_label_space_rate_and_no_rank_figure():
    task = _synthetic_style_task()
    random_figures = aggregate(score_predictions(run_baseline("random", [task], seed=1).predictions))
    assert random_figures["label_space_rate"] == 100.0
    assert "rank_exact_match" not in random_figures
    off_label = replace(task, positive_examples=(Example("12", "even"),))
    copy_figures = aggregate(score_predictions(run_baseline("copy_demo", [off_label], seed=1).predictions))
    assert copy_figures["label_space_rate"] == 0.0


def test_a_negated_study_without_a_negatable_test_task_is_refused_before_ray_starts(superni_dir):
    from itstudy.config import ConfigError
    from itstudy.sweep.preflight import check_variants
    from itstudy.sweep.trials import make_trial

    data = {
        "source": "superni",
        "superni_dir": str(superni_dir),
        "train_tasks": ["task566_circa_classification"],
        "test_tasks": ["task833_poem_sentiment_classification"],
        "dev_tasks": 0,  # one training task: none to spare for a dev split
    }
    study = study_from_dict({"name": "negated", "data": data, "variant": {"definition": "negated"}, "eval": {"select_on": "last"}})
    with pytest.raises(ConfigError, match="variant: .*none of the 1 test tasks can be negated.*task833"):
        check_variants([make_trial(study, {})])
