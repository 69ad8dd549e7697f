"""The Tk-Instruct prompt (DataCollatorForNI in Tk-Instruct's src/ni_collator.py), pinned to the character."""

from __future__ import annotations

import json
import random

import pytest

from itstudy.data.task import Example, Instance, Task
from itstudy.prompts import build_source, choose_target, prompt_hash, render_example, render_task_input

LONG_BUDGET = 1024


def make_task(definition="Answer yes or no", positives=None, negatives=(), name="task001_demo") -> Task:
    if positives is None:
        positives = (Example("Is the sky blue", "yes"), Example("Is grass red?", "no"))
    return Task(
        name=name,
        definition=definition,
        positive_examples=tuple(positives),
        negative_examples=tuple(negatives),
        instances=(Instance("i1", "Is snow cold", ("yes",)),),
        categories=("Answerability Classification",),
    )


def test_definition_and_two_positive_examples_golden(t5_tokenizer):
    source = build_source(make_task(), "Is snow cold", t5_tokenizer, LONG_BUDGET)
    assert source == (
        "Definition: Answer yes or no.\n\n"
        " Positive Example 1 -\nInput: Is the sky blue.\n Output: yes.\n\n"
        " Positive Example 2 -\nInput: Is grass red?\n Output: no.\n\n"
        "Now complete the following example -\nInput: Is snow cold.\nOutput: "
    )


def test_no_definition_starts_with_the_examples(t5_tokenizer):
    source = build_source(make_task(definition=""), "Is snow cold", t5_tokenizer, LONG_BUDGET)
    assert source.startswith(" Positive Example 1 -\nInput: Is the sky blue.\n")
    assert "Definition" not in source


def test_no_definition_and_no_examples_is_only_the_task_input(t5_tokenizer):
    source = build_source(make_task(definition="", positives=()), "Is snow cold", t5_tokenizer, LONG_BUDGET)
    assert source == "Now complete the following example -\nInput: Is snow cold.\nOutput: "


def test_task_name_prefix(t5_tokenizer):
    source = build_source(make_task(), "Is snow cold", t5_tokenizer, LONG_BUDGET, add_task_name=True)
    assert source.startswith("task001_demo. Definition: Answer yes or no.\n\n Positive Example 1 -\n")


def test_negative_examples_follow_the_positive_ones(t5_tokenizer):
    task = make_task(positives=(Example("Is the sky blue", "yes"),), negatives=(Example("Is fire hot", "maybe"),))
    source = build_source(task, "Is snow cold", t5_tokenizer, LONG_BUDGET)
    assert source == (
        "Definition: Answer yes or no.\n\n"
        " Positive Example 1 -\nInput: Is the sky blue.\n Output: yes.\n\n"
        " Negative Example 1 -\nInput: Is fire hot.\n Output: maybe.\n\n"
        "Now complete the following example -\nInput: Is snow cold.\nOutput: "
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("  padded  ", "Input: padded.\n"),  # stripped first, then the "." rule
        ("Why?", "Input: Why?\n"),
        ('He said "hi"', 'Input: He said "hi"\n'),  # a closing quote is punctuation
        ("(see above)", "Input: (see above)\n"),
        ("fin。", "Input: fin。.\n"),  # only string.punctuation counts, not CJK marks
        ("", "Input: .\n"),  # Tk-Instruct checks the last char of "Input: ", a space
    ],
)
def test_a_period_is_added_only_when_the_text_does_not_end_in_punctuation(text, expected):
    assert render_task_input(text) == "Now complete the following example -\n" + expected + "Output: "


def test_example_output_punctuation_and_explanations_off():
    block = render_example("Positive", 3, Example(" x ", "Yes!", explanation="because"))
    assert block == " Positive Example 3 -\nInput: x.\n Output: Yes!\n\n"


def test_budget_drops_the_example_that_overflows_and_stops_there(t5_tokenizer):
    short, long_, short_again = (
        Example("Is the sky blue", "yes"),
        Example("Is grass red " + "and very green " * 20, "no"),
        Example("Is it", "no"),
    )
    only_first = build_source(make_task(positives=(short,)), "Is snow cold", t5_tokenizer, LONG_BUDGET)
    with_short_second = build_source(make_task(positives=(short, short_again)), "Is snow cold", t5_tokenizer, LONG_BUDGET)
    budget = len(t5_tokenizer(with_short_second)["input_ids"]) + 2  # room for a short second example, not a long one

    source = build_source(make_task(positives=(short, long_, short_again)), "Is snow cold", t5_tokenizer, budget)

    # The third example would fit, but Tk-Instruct stops at the first example that does not.
    assert source == only_first


def test_an_example_that_fits_exactly_is_kept(t5_tokenizer):
    task = make_task(positives=(Example("Is the sky blue", "yes"),))
    source = build_source(task, "Is snow cold", t5_tokenizer, LONG_BUDGET)
    exact = len(t5_tokenizer(source)["input_ids"])  # counted with T5's </s>, as Tk-Instruct does
    assert build_source(task, "Is snow cold", t5_tokenizer, exact) == source
    assert "Positive Example" not in build_source(task, "Is snow cold", t5_tokenizer, exact - 1)


def _byte_tokenizer():
    # A real tokenizers-backed tokenizer with one token per byte: unlike T5's SentencePiece,
    # which collapses whitespace, it sees the extra space Tk-Instruct's budget check inserts.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_budget_check_joins_kept_examples_with_a_space_like_tk_instruct():
    tokenizer = _byte_tokenizer()
    task = make_task(positives=(Example("a", "yes"), Example("b", "no"), Example("c", "yes")))
    full = build_source(task, "Is snow cold", tokenizer, LONG_BUDGET)
    assert full.count("Positive Example") == 3
    # The final text joins the examples with "" and fits in len(full) bytes, but the check for the
    # third example measured the two kept ones joined with " ", one byte more: it is left out.
    assert build_source(task, "Is snow cold", tokenizer, len(full.encode())).count("Positive Example") == 2
    assert build_source(task, "Is snow cold", tokenizer, len(full.encode()) + 1) == full


def test_final_truncation_cuts_tokens_and_decodes_without_special_tokens(t5_tokenizer):
    # "</s>" in the text tokenizes to T5's end-of-sequence id, which decoding must skip.
    definition = "Read the passage </s> and answer " + "with great care " * 60
    task = make_task(definition=definition)
    budget = 40

    source = build_source(task, "Is snow cold", t5_tokenizer, budget)

    untruncated = build_source(task, "Is snow cold", t5_tokenizer, LONG_BUDGET * 4)
    assert "Positive Example" in untruncated
    no_examples = "Definition: " + definition.strip() + ".\n\n" + render_task_input("Is snow cold")
    expected = t5_tokenizer.decode(t5_tokenizer(no_examples)["input_ids"][:budget], skip_special_tokens=True)
    assert source == expected
    assert source.startswith("Definition: Read the passage and answer with great care")  # "</s>" skipped
    assert "Now complete" not in source and "</s>" not in source


def test_real_superni_task_renders_with_its_own_punctuation(superni_dir, t5_tokenizer):
    raw = json.loads((superni_dir / "tasks" / "task020_mctaco_span_based_question.json").read_text())
    task = Task(
        name="task020_mctaco_span_based_question",
        definition=raw["Definition"][0],
        positive_examples=tuple(Example(e["input"], e["output"]) for e in raw["Positive Examples"][:2]),
        negative_examples=(),
        instances=(),
    )
    instance_input = raw["Instances"][0]["input"]

    source = build_source(task, instance_input, t5_tokenizer, LONG_BUDGET)

    first = raw["Positive Examples"][0]
    assert source.startswith("Definition: " + raw["Definition"][0].strip())
    assert f" Positive Example 1 -\nInput: {first['input'].strip()}" in source
    assert " Output: Yes.\n\n Positive Example 2 -\n" in source  # "Yes." already ends in punctuation
    assert source.endswith(f"Input: {instance_input.strip()}\nOutput: ")  # ends with "?"
    assert len(t5_tokenizer(source)["input_ids"]) <= LONG_BUDGET


def test_choose_target_is_seeded_covers_every_reference_and_strips():
    instance = Instance("i1", "x", (" first ", "second", "third"))
    draws = [choose_target(instance, random.Random(seed)) for seed in range(50)]
    assert set(draws) == {"first", "second", "third"}
    assert draws == [choose_target(instance, random.Random(seed)) for seed in range(50)]


def test_choose_target_refuses_an_instance_without_references():
    with pytest.raises(ValueError, match="instance i9"):
        choose_target(Instance("i9", "x", ()), random.Random(0))


def test_prompt_hash_is_a_short_sha256():
    assert prompt_hash("abc") == "ba7816bf8f01"  # sha256("abc") starts ba7816bf8f01cfea...
    assert prompt_hash("abc ") != prompt_hash("abc")
