"""The label words of the drawn training tasks: each training group of `families` is written as it is
and POOL_DRAWS more times with words dealt from LABEL_POOL, so that no fixed label set can be
memorised (see `families`); and the counterfactual pairs among the written groups.

Changing anything here changes the generated files: bump `generator.GENERATOR_VERSION`.
"""

from __future__ import annotations

import functools
import random

from itstudy.data.synthetic.families import FAMILIES, Family, Rule, relabelled

LABEL_POOL: tuple[str, ...] = (
    "yes", "no", "true", "false", "first", "second", "entailment", "contradiction",
    "correct", "incorrect", "right", "wrong", "accept", "reject", "agree", "disagree",
    "alpha", "beta", "red", "blue", "green", "gold", "silver", "stone", "river", "ocean",
    "tiger", "piano", "candle", "forest", "apple", "lemon", "cloud", "rocket",
    "valid", "invalid", "match", "mismatch", "pass", "fail",
)
"""Label words of the drawn training tasks; it holds every test label word, as SuperNI's training outputs do."""

POOL_DRAWS = 15
"""How many times each training group is written again with label words drawn from LABEL_POOL."""


@functools.lru_cache(maxsize=8)
def _dealt_words(seed: int) -> dict[tuple[str, int], tuple[tuple[str, ...], ...]]:
    """Label words of every drawn training group: (family, group index) -> one tuple per draw.

    Dealt from shuffled decks of LABEL_POOL, a fresh deck when one runs out, so every pool word
    labels as many draws as any other (within one): the test tasks' words are neither rarer nor
    commoner in training than the rest. An independent sample per draw (generator version 3) left
    'entailment' in 4 drawn tasks and 'first' in 20, and tuned models answered the
    entailment/contradiction and first/second test tasks with other pool words.
    """
    # Seeding with a string hashes it with SHA-512: stable across runs, processes and platforms.
    rng = random.Random(f"itstudy-labels:{seed}")
    deck: list[str] = []
    dealt = {}
    for family in FAMILIES:
        if family.split != "train":
            continue
        for index, group in enumerate(family.groups):
            draws = []
            for _ in range(POOL_DRAWS):
                words: list[str] = []
                while len(words) < len(group[0].labels):
                    fresh = [word for word in deck if word not in words]
                    if not fresh:
                        deck += rng.sample(LABEL_POOL, len(LABEL_POOL))
                        continue
                    deck.remove(fresh[0])
                    words.append(fresh[0])
                draws.append(tuple(words))
            dealt[family.name, index] = tuple(draws)
    return dealt


def written_groups(family: Family, seed: int) -> list[tuple[Rule, ...]]:
    """The groups the generator writes: test groups as they are; each training group as it is and
    POOL_DRAWS times with words dealt from LABEL_POOL (one set per draw: a pair keeps one label set).

    The draws depend on `seed`; the task names (`<rule>_d01` ...) do not.
    """
    if family.split == "test":
        return list(family.groups)
    written = []
    for index, group in enumerate(family.groups):
        written.append(group)
        for draw, words in enumerate(_dealt_words(seed)[family.name, index], start=1):
            written.append(tuple(relabelled(rule, words, f"d{draw:02d}") for rule in group))
    return written


def counterfactual_pairs() -> list[tuple[str, str]]:
    """Task-name pairs that share their inputs under definitions with different labels (any seed)."""
    return [
        (family.task_name(group[0]), family.task_name(group[1]))
        for family in FAMILIES
        for group in written_groups(family, seed=0)
        if len(group) == 2
    ]
