"""Tk-Instruct prompts: a task instance rendered as source text, exact to the character.

Mirrors `DataCollatorForNI` in Tk-Instruct's src/ni_collator.py (github.com/yizhongw/Tk-Instruct),
so a model trained here sees the strings the paper's models saw:

    Definition: <definition>.\\n\\n
     Positive Example 1 -\\nInput: <x1>.\\n Output: <y1>.\\n\\n
    ...
    Now complete the following example -\\nInput: <x>.\\nOutput: 

The task passed in is already transformed by `itstudy.variants.apply_variant`: every positive
and negative example it holds is a candidate for the prompt, its definition is the one to show
(empty means none). Explanations are never rendered (Tk-Instruct's default; the study does not
use them). This module only builds text; tokenising batches for the model is the training
loop's job.
"""

from __future__ import annotations

import hashlib
import random
import string

from itstudy.data.task import Example, Instance, Task


def _end_sentence(text: str) -> str:
    # Tk-Instruct tests the last character of the accumulated string, so an empty input
    # ("Input: ") gets a "." after the space; mirrored on purpose.
    return text if text[-1] in string.punctuation else text + "."


def render_definition(definition: str) -> str:
    """`Definition: ...` with a closing '.' if needed, then a blank line; '' when there is none."""
    if not definition.strip():
        return ""
    return _end_sentence("Definition: " + definition.strip()) + "\n\n"


def render_example(kind: str, number: int, example: Example) -> str:
    """One demonstration block; `kind` is 'Positive' or 'Negative', `number` is 1-based."""
    block = f" {kind} Example {number} -\n"
    block = _end_sentence(block + f"Input: {example.input.strip()}") + "\n"
    block = _end_sentence(block + f" Output: {example.output.strip()}") + "\n"
    return block + "\n"


def render_task_input(instance_input: str) -> str:
    """The instance to complete, ending with 'Output: ' for the model to continue."""
    text = _end_sentence(f"Now complete the following example -\nInput: {instance_input.strip()}") + "\n"
    return text + "Output: "


def _token_count(tokenizer, text: str) -> int:
    # Called exactly as Tk-Instruct does, so the count includes T5's appended </s>.
    return len(tokenizer(text)["input_ids"])


def _fitting_examples(kind: str, examples: tuple[Example, ...], fits) -> list[str]:
    kept: list[str] = []
    for number, example in enumerate(examples, start=1):
        candidate = render_example(kind, number, example)
        if not fits(kept, candidate):
            break  # Tk-Instruct stops at the first example that does not fit, it does not skip it
        kept.append(candidate)
    return kept


def build_source(task: Task, instance_input: str, tokenizer, max_source_length: int, add_task_name: bool = False) -> str:
    """The prompt text for one instance of `task`, within `max_source_length` tokens.

    Demonstrations are added in order while the prompt still fits. Like Tk-Instruct, the check
    measures the kept blocks joined with " " (the final text joins them with ""), and it leaves
    out the task-name prefix. A prompt still too long is cut to `max_source_length` tokens and
    decoded back to text with special tokens skipped.
    """
    definition = render_definition(task.definition)
    task_input = render_task_input(instance_input)

    def positive_fits(kept: list[str], candidate: str) -> bool:
        text = definition + " ".join(kept) + candidate + task_input
        return _token_count(tokenizer, text) <= max_source_length

    positives = _fitting_examples("Positive", task.positive_examples, positive_fits)

    def negative_fits(kept: list[str], candidate: str) -> bool:
        text = definition + " ".join(positives) + " ".join(kept) + candidate + task_input
        return _token_count(tokenizer, text) <= max_source_length

    negatives = _fitting_examples("Negative", task.negative_examples, negative_fits)

    task_name = task.name + ". " if add_task_name else ""
    source = task_name + definition + "".join(positives) + "".join(negatives) + task_input
    token_ids = tokenizer(source)["input_ids"]
    if len(token_ids) <= max_source_length:
        return source
    return tokenizer.decode(token_ids[:max_source_length], skip_special_tokens=True)


def choose_target(instance: Instance, rng: random.Random) -> str:
    """The training target: one of the instance's references, chosen with `rng`, stripped."""
    if not instance.outputs:
        raise ValueError(f"instance {instance.id}: has no reference output to train on")
    return rng.choice(instance.outputs).strip()


def prompt_hash(source: str) -> str:
    """A short stable fingerprint of a prompt (12 hex chars of sha256), logged with each prediction."""
    return hashlib.sha256(source.encode()).hexdigest()[:12]
