"""SuperNI prompt lengths for the benchmark: a per-task profile of token counts, and examples drawn from it.

The profile holds, per task of the SuperNI sample, the token counts of every instance's real
Tk-Instruct prompt (definition + 2 positive examples, T5 vocabulary) and of its first reference.
It is stored in `superni_lengths.json` next to this file (package data; numbers only, no text)
and written by `itstudy bench profile` (`write_length_profile`, which needs the full install and
a SuperNI folder); the benchmark only reads it.

Benchmark examples take their lengths from the profile, clipped to --max-source / --max-target as
truncation would. Token ids are random: content does not change the cost.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from itstudy.paths import SUPERNI_DIR_ENV
from itstudy.training.engine import Seq2SeqExample

LENGTHS_FILE = Path(__file__).with_name("superni_lengths.json")
EOS_ID = 1  # T5's </s>, which ends every source and target


def load_length_profile(path: Path = LENGTHS_FILE) -> list[list[tuple[int, int]]]:
    """Per task, the (source, target) token counts of its prompts, from the profile file."""
    profile = json.loads(path.read_text())
    return [list(zip(task["source_lengths"], task["target_lengths"])) for task in profile["tasks"]]


def examples_with_prompt_lengths(
    profile: list[list[tuple[int, int]]], count: int, max_source: int, max_target: int, vocab_size: int, seed: int
) -> list[Seq2SeqExample]:
    """`count` examples with random token ids ending in </s> and real prompt lengths (clipped like truncation).

    A length pair is drawn from a uniformly chosen task, as a SuperNI training set holds the same
    number of instances per task (drawing instances uniformly would over-weight the sample's long
    classification tasks).
    """
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        source, target = rng.choice(rng.choice(profile))
        source, target = min(source, max_source), min(target, max_target)
        examples.append(
            Seq2SeqExample(
                input_ids=tuple(rng.randrange(2, vocab_size) for _ in range(source - 1)) + (EOS_ID,),
                labels=tuple(rng.randrange(2, vocab_size) for _ in range(target - 1)) + (EOS_ID,),
            )
        )
    return examples


def write_length_profile(out: Path, max_source: int, max_target: int) -> None:
    """Measure (source, target) token counts of the Tk-Instruct prompts of every SuperNI task in
    $ITSTUDY_SUPERNI_DIR with the T5 vocabulary in $ITSTUDY_T5_TOKENIZER (needs the full install)."""
    from itstudy.config import VariantConfig
    from itstudy.data import load_task_file
    from itstudy.prompts import build_source
    from itstudy.training.models import load_tokenizer
    from itstudy.variants import apply_variant

    tokenizer = load_tokenizer("t5")
    files = sorted(Path(os.environ[SUPERNI_DIR_ENV], "tasks").glob("*.json"))
    tasks = []
    for path in files:
        task = apply_variant(load_task_file(path), VariantConfig(), seed=0)
        sources = [build_source(task, instance.input, tokenizer, max_source) for instance in task.instances]
        targets = [instance.outputs[0].strip() for instance in task.instances]
        tasks.append(
            {
                "source_lengths": [len(ids) for ids in tokenizer(sources, truncation=True, max_length=max_source)["input_ids"]],
                "target_lengths": [len(ids) for ids in tokenizer(targets, truncation=True, max_length=max_target)["input_ids"]],
            }
        )
    profile = {
        "what": "per task: token counts of Tk-Instruct prompts (definition + 2 positive examples) and of first references, T5 vocabulary",
        "data": f"every instance of the {len(files)} task files of the SuperNI sample ($ITSTUDY_SUPERNI_DIR)",
        "command": f"python -m itstudy.training.bench profile --max-source {max_source} --max-target {max_target}",
        "tasks": tasks,
    }
    out.write_text(json.dumps(profile) + "\n")
    print(f"wrote the prompt lengths of {len(tasks)} tasks to {out}")
