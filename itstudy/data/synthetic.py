"""The project's own task suite: small classification tasks in the SuperNI task-JSON format.

Why it exists: the default study and most tests must run with no download, and a tiny T5 must be
able to learn the outputs (one short word each). The suite is written into the SuperNI layout
(`tasks/*.json`, `splits/default/{train,test}_tasks.txt`) and read back by the very same
folder source and parser as SuperNI itself, so nothing downstream knows the difference.

What is in it: 30 tasks in 6 families. A family shares one kind of input (numbers, review
sentences, noun phrases, made-up words, number pairs, premise/hypothesis pairs); its tasks apply
different rules to it. Training and test families are disjoint, so test tasks are unseen in kind,
not only in instances. Every definition states its rule and names its labels.

Output space stated in the instruction: each yes/no training rule also appears with other label
words (true/false, red/blue, agree/disagree, accept/reject, alpha/beta), so training answers use
10 label sets and the same rule asks for different words in different tasks. Which word to answer
can then only be read from the definition and demonstrations, the effect Kung & Peng measure.
Three test tasks answer with words no training task outputs (first/second,
entailment/contradiction): only a model that reads its prompt's labels can produce them.

Counterfactual pairs: the two tasks of a pair see the same inputs (and the same demonstration
inputs) under two definitions that label them differently, e.g. "is the number even?" vs "is the
number greater than 5000?", or sentiment vs. sentiment with swapped labels. Inputs on which the
pair disagrees are drawn twice as often as inputs on which it agrees, so a model that ignores the
definition cannot beat chance on both tasks of a pair.

Label balance: instances are dealt round-robin over the label combinations of their group (one
task, or a pair), so the first 100 instances of a test task are label-balanced the way SuperNI
orders its evaluation instances. Demonstrations are dealt first and never reappear as instances.

Deterministic: the same `SyntheticConfig` (seed, instances_per_task) and `GENERATOR_VERSION`
write byte-identical files. Refused: asking for more instances than a family has distinct inputs
(the limit is about 1,200 per task, set by the review sentences).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, NamedTuple

from itstudy.config import SyntheticConfig
from itstudy.errors import UserError

# Bump whenever the generated content changes: the cache folder name includes it.
GENERATOR_VERSION = 2
SPLIT = "default"


class SyntheticError(UserError):
    """The suite cannot be generated as configured; the message names the setting to change."""


@dataclass(frozen=True)
class Rule:
    """One task of a family: its definition, its labels, how it labels an input and why."""

    name: str
    definition: str
    labels: tuple[str, ...]
    label: Callable[[Any], str]
    fact: Callable[[Any], str]
    """A short true statement about the input that justifies its label (used in explanations)."""


@dataclass(frozen=True)
class Family:
    """Tasks that share one kind of input; rules in one group share their exact inputs."""

    name: str
    split: Literal["train", "test"]
    category: str
    inputs: Callable[[], list[Any]]
    """Every input of the family, in a fixed order (the seed only shuffles it)."""
    render: Callable[[Any], str]
    groups: tuple[tuple[Rule, ...], ...]
    """A group of two rules is a counterfactual pair; a group of one is a plain task."""

    def task_name(self, rule: Rule) -> str:
        return f"synth_{self.name}_{rule.name}"


def _yes_no(condition: bool) -> str:
    return "yes" if condition else "no"


def _in_words(group: tuple[Rule, ...], *vocabularies: tuple[str, str]) -> tuple[tuple[Rule, ...], ...]:
    """The yes/no group as written, then once per vocabulary with 'yes' and 'no' replaced by its words.

    Why: if most training tasks answered yes or no, a model would learn that format and never
    need to read the labels its instruction names. The same rule under several label words makes
    the prompt the only place the right word can come from.
    """
    return (group, *(tuple(_reworded(rule, words) for rule in group) for words in vocabularies))


def _reworded(rule: Rule, words: tuple[str, str]) -> Rule:
    assert rule.labels == ("yes", "no"), f"only yes/no rules are reworded, not {rule.name}"
    word = dict(zip(rule.labels, words))
    definition = rule.definition.replace("'yes'", f"'{words[0]}'").replace("'no'", f"'{words[1]}'")
    return Rule(f"{rule.name}_{words[0]}_{words[1]}", definition, words, lambda x: word[rule.label(x)], rule.fact)


# --- numbers (training) ---------------------------------------------------------------------------

_NUMBER_TASK = "You are given a whole number."
NUMBERS = Family(
    name="numbers",
    split="train",
    category="Number Properties",
    inputs=lambda: list(range(1, 10000)),
    render=str,
    groups=(
        *_in_words((
            Rule("is_even", f"{_NUMBER_TASK} Answer 'yes' if the number is even, and 'no' if it is odd.",
                 ("yes", "no"), lambda n: _yes_no(n % 2 == 0),
                 lambda n: f"{n} is {'even' if n % 2 == 0 else 'odd'}"),
            Rule("is_greater_than_5000", f"{_NUMBER_TASK} Answer 'yes' if the number is greater than 5000, and 'no' otherwise.",
                 ("yes", "no"), lambda n: _yes_no(n > 5000),
                 lambda n: f"{n} is {'greater than' if n > 5000 else 'not greater than'} 5000"),
        ), ("true", "false")),
        (
            Rule("parity", f"{_NUMBER_TASK} Classify it as 'even' if it is divisible by 2 and as 'odd' otherwise.",
                 ("even", "odd"), lambda n: "even" if n % 2 == 0 else "odd",
                 lambda n: f"{n} leaves remainder {n % 2} when divided by 2"),
        ),
        *_in_words((
            Rule("is_divisible_by_three", f"{_NUMBER_TASK} Answer 'yes' if the number is divisible by 3, and 'no' otherwise.",
                 ("yes", "no"), lambda n: _yes_no(n % 3 == 0),
                 lambda n: f"{n} leaves remainder {n % 3} when divided by 3"),
        ), ("red", "blue")),
    ),
)

# --- review sentences (training) ------------------------------------------------------------------


class Review(NamedTuple):
    text: str
    adjective: str
    polarity: str


_SUBJECTS = ("food", "movie", "hotel", "concert", "book", "service", "game", "trip",
             "teacher", "phone", "coffee", "room", "show", "car", "party", "museum")
_POSITIVE = ("wonderful", "great", "delightful", "excellent", "lovely",
             "superb", "pleasant", "fantastic", "brilliant", "charming")
_NEGATIVE = ("terrible", "awful", "dreadful", "boring", "horrible",
             "disappointing", "poor", "unpleasant", "miserable", "dull")
_REVIEW_TEMPLATES = ("The {s} was {a}.", "I thought the {s} was {a}.",
                     "Honestly, the {s} was {a}.", "Everyone said the {s} was {a}.")


def _reviews() -> list[Review]:
    return [
        Review(template.format(s=subject, a=adjective), adjective, polarity)
        for template in _REVIEW_TEMPLATES
        for subject in _SUBJECTS
        for polarity, adjectives in (("positive", _POSITIVE), ("negative", _NEGATIVE))
        for adjective in adjectives
    ]


def _opinion(r: Review) -> str:
    return f"'{r.adjective}' expresses a {r.polarity} opinion"


_REVIEW_TASK = "You are given a sentence from a review."
SENTIMENT = Family(
    name="sentiment",
    split="train",
    category="Sentiment Analysis",
    inputs=_reviews,
    render=lambda r: r.text,
    groups=(
        (
            Rule("polarity", f"{_REVIEW_TASK} Answer 'positive' if it expresses a positive opinion and 'negative' if it expresses a negative opinion.",
                 ("positive", "negative"), lambda r: r.polarity, _opinion),
            Rule("polarity_swapped", f"{_REVIEW_TASK} The labels are deliberately swapped: answer 'negative' if it expresses a positive opinion and 'positive' if it expresses a negative opinion.",
                 ("positive", "negative"), lambda r: "negative" if r.polarity == "positive" else "positive",
                 lambda r: f"{_opinion(r)} and the labels are swapped"),
        ),
        *_in_words((
            Rule("is_positive", f"{_REVIEW_TASK} Answer 'yes' if the opinion is positive, and 'no' if it is negative.",
                 ("yes", "no"), lambda r: _yes_no(r.polarity == "positive"), _opinion),
            Rule("is_negative", f"{_REVIEW_TASK} Answer 'yes' if the opinion is negative, and 'no' if it is positive.",
                 ("yes", "no"), lambda r: _yes_no(r.polarity == "negative"), _opinion),
        ), ("agree", "disagree")),
    ),
)

# --- noun phrases (training) ----------------------------------------------------------------------


class Phrase(NamedTuple):
    text: str
    noun: str
    kind: str


_NOUNS = {
    "animal": ("tiger", "horse", "rabbit", "eagle", "dolphin", "sheep", "wolf", "camel", "frog", "owl", "goat", "bear"),
    "fruit": ("apple", "banana", "cherry", "mango", "peach", "grape", "lemon", "plum", "pear", "melon", "kiwi", "apricot"),
    "tool": ("hammer", "wrench", "saw", "drill", "shovel", "chisel", "screwdriver", "rake", "axe", "trowel", "crowbar", "mallet"),
    "vehicle": ("truck", "bicycle", "bus", "tractor", "scooter", "train", "van", "taxi", "motorcycle", "tram", "jeep", "wagon"),
}
_DETERMINERS = ("the", "my", "your", "this", "that")
_MODIFIERS = ("small", "big", "old", "new", "heavy", "dirty", "clean", "cheap", "rare", "famous")


def _phrases() -> list[Phrase]:
    return [
        Phrase(f"{determiner} {modifier} {noun}", noun, kind)
        for kind, nouns in _NOUNS.items()
        for noun in nouns
        for determiner in _DETERMINERS
        for modifier in _MODIFIERS
    ]


def _names(p: Phrase) -> str:
    return f"'{p.noun}' names {'an' if p.kind[0] in 'aeiou' else 'a'} {p.kind}"


_PHRASE_TASK = "You are given a short noun phrase."
WORDS = Family(
    name="words",
    split="train",
    category="Word Semantics",
    inputs=_phrases,
    render=lambda p: p.text,
    groups=(
        (
            Rule("category", f"{_PHRASE_TASK} Say what its noun names: answer 'animal', 'fruit', 'tool' or 'vehicle'.",
                 ("animal", "fruit", "tool", "vehicle"), lambda p: p.kind, _names),
        ),
        *_in_words((
            Rule("is_animal", f"{_PHRASE_TASK} Answer 'yes' if its noun names an animal, and 'no' otherwise.",
                 ("yes", "no"), lambda p: _yes_no(p.kind == "animal"), _names),
            Rule("is_tool", f"{_PHRASE_TASK} Answer 'yes' if its noun names a tool, and 'no' otherwise.",
                 ("yes", "no"), lambda p: _yes_no(p.kind == "tool"), _names),
        ), ("accept", "reject")),
    ),
)

# --- made-up words (training) ---------------------------------------------------------------------

_VOWELS = "aeiou"
_SYLLABLES = tuple(c + v for c in "bdgklmnprst" for v in _VOWELS)


def _made_up_words() -> list[str]:
    return [
        lead + first + second + tail
        for lead in ("", *_VOWELS)
        for first in _SYLLABLES
        for second in _SYLLABLES
        for tail in ("", "n", "s")
    ]


def _vowel_or_consonant(letter: str) -> str:
    return "a vowel" if letter in _VOWELS else "a consonant"


_WORD_TASK = "You are given a made-up word."
STRINGS = Family(
    name="strings",
    split="train",
    category="String Properties",
    inputs=_made_up_words,
    render=str,
    groups=(
        *_in_words((
            Rule("starts_with_vowel", f"{_WORD_TASK} Answer 'yes' if its first letter is a vowel (a, e, i, o, u), and 'no' otherwise.",
                 ("yes", "no"), lambda w: _yes_no(w[0] in _VOWELS),
                 lambda w: f"'{w}' starts with '{w[0]}', {_vowel_or_consonant(w[0])}"),
            Rule("ends_with_vowel", f"{_WORD_TASK} Answer 'yes' if its last letter is a vowel (a, e, i, o, u), and 'no' otherwise.",
                 ("yes", "no"), lambda w: _yes_no(w[-1] in _VOWELS),
                 lambda w: f"'{w}' ends with '{w[-1]}', {_vowel_or_consonant(w[-1])}"),
        ), ("alpha", "beta")),
        (
            Rule("length", f"{_WORD_TASK} Answer 'long' if it has more than 5 letters, and 'short' otherwise.",
                 ("long", "short"), lambda w: "long" if len(w) > 5 else "short",
                 lambda w: f"'{w}' has {len(w)} letters"),
        ),
    ),
)

# --- number pairs (test) --------------------------------------------------------------------------

_PAIR_TASK = "You are given two different numbers, First and Second."
COMPARISON = Family(
    name="comparison",
    split="test",
    category="Number Comparison",
    inputs=lambda: [(a, b) for a in range(10, 100) for b in range(10, 100) if a != b],
    render=lambda pair: f"First: {pair[0]}, Second: {pair[1]}",
    groups=(
        (
            Rule("larger", f"{_PAIR_TASK} Answer 'first' if First is the larger number, and 'second' if Second is larger.",
                 ("first", "second"), lambda p: "first" if p[0] > p[1] else "second",
                 lambda p: f"{max(p)} is larger than {min(p)}"),
            Rule("smaller", f"{_PAIR_TASK} Answer 'first' if First is the smaller number, and 'second' if Second is smaller.",
                 ("first", "second"), lambda p: "first" if p[0] < p[1] else "second",
                 lambda p: f"{min(p)} is smaller than {max(p)}"),
        ),
        (
            Rule("sum_is_even", f"{_PAIR_TASK} Answer 'yes' if their sum is even, and 'no' if it is odd.",
                 ("yes", "no"), lambda p: _yes_no(sum(p) % 2 == 0),
                 lambda p: f"{p[0]} + {p[1]} = {sum(p)}"),
        ),
        (
            Rule("are_close", f"{_PAIR_TASK} Answer 'yes' if they differ by less than 10, and 'no' otherwise.",
                 ("yes", "no"), lambda p: _yes_no(abs(p[0] - p[1]) < 10),
                 lambda p: f"{p[0]} and {p[1]} differ by {abs(p[0] - p[1])}"),
        ),
    ),
)

# --- premise and hypothesis (test) ----------------------------------------------------------------


class Claim(NamedTuple):
    text: str
    entailed: bool


_PEOPLE = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam")
_RELATIONS = (("taller", "shorter"), ("older", "younger"), ("faster", "slower"),
              ("richer", "poorer"), ("stronger", "weaker"), ("heavier", "lighter"))


def _claims() -> list[Claim]:
    claims = []
    for a, b in itertools.permutations(_PEOPLE, 2):
        for more, less in _RELATIONS:
            premise = f"Premise: {a} is {more} than {b}. Hypothesis: "
            claims += [
                Claim(premise + f"{b} is {less} than {a}.", True),
                Claim(premise + f"{a} is {more} than {b}.", True),
                Claim(premise + f"{b} is {more} than {a}.", False),
                Claim(premise + f"{a} is {less} than {b}.", False),
            ]
    return claims


def _follows(c: Claim) -> str:
    return f"the premise {'implies' if c.entailed else 'rules out'} the hypothesis"


_CLAIM_TASK = "You are given a premise and a hypothesis about two people."
ENTAILMENT = Family(
    name="entailment",
    split="test",
    category="Textual Entailment",
    inputs=_claims,
    render=lambda c: c.text,
    groups=(
        (
            Rule("relation", f"{_CLAIM_TASK} Answer 'entailment' if the premise implies the hypothesis, and 'contradiction' if it rules it out.",
                 ("entailment", "contradiction"), lambda c: "entailment" if c.entailed else "contradiction", _follows),
        ),
        (
            Rule("follows", f"{_CLAIM_TASK} Answer 'yes' if the hypothesis follows from the premise, and 'no' if it contradicts it.",
                 ("yes", "no"), lambda c: _yes_no(c.entailed), _follows),
            Rule("contradicts", f"{_CLAIM_TASK} Answer 'yes' if the hypothesis contradicts the premise, and 'no' if it follows from it.",
                 ("yes", "no"), lambda c: _yes_no(not c.entailed), _follows),
        ),
    ),
)

FAMILIES: tuple[Family, ...] = (NUMBERS, SENTIMENT, WORDS, STRINGS, COMPARISON, ENTAILMENT)


def counterfactual_pairs() -> list[tuple[str, str]]:
    """Task-name pairs that share their inputs under definitions with different labels."""
    return [
        (family.task_name(group[0]), family.task_name(group[1]))
        for family in FAMILIES
        for group in family.groups
        if len(group) == 2
    ]


# --- writing the suite ----------------------------------------------------------------------------


def cached_synthetic_suite(cache_root: Path, cfg: SyntheticConfig) -> Path:
    """The suite for `cfg` under `<cache_root>/synthetic/`, written once and reused afterwards."""
    folder = Path(cache_root) / "synthetic" / f"v{GENERATOR_VERSION}-seed{cfg.seed}-n{cfg.instances_per_task}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    write_synthetic_suite(scratch, cfg)
    try:
        # A rename is atomic: readers see a complete suite or none, and a parallel writer that
        # got there first wins (its suite is byte-identical).
        os.rename(scratch, folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def write_synthetic_suite(folder: str | Path, cfg: SyntheticConfig) -> Path:
    """Write every task and the default split lists into `folder` (SuperNI layout); returns it."""
    folder = Path(folder)
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    (folder / "splits" / SPLIT).mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {"train": [], "test": []}
    for family in FAMILIES:
        for group_index, group in enumerate(family.groups):
            for name, task in _group_tasks(family, group_index, group, cfg).items():
                text = json.dumps(task, indent=1, ensure_ascii=False) + "\n"
                (folder / "tasks" / f"{name}.json").write_text(text, encoding="utf-8")
                names[family.split].append(name)
    for split, split_names in names.items():
        (folder / "splits" / SPLIT / f"{split}_tasks.txt").write_text("".join(f"{n}\n" for n in sorted(split_names)))
    return folder


def _group_tasks(family: Family, group_index: int, group: tuple[Rule, ...], cfg: SyntheticConfig) -> dict[str, dict]:
    """The task JSON of every rule in the group, all built on one dealt sequence of inputs."""
    dealer = _Dealer(family, group_index, group, cfg.seed)
    shown = dealer.deal(max(len(rule.labels) for rule in group))  # one demonstration per label
    wrong = dealer.deal(1)
    instances = dealer.deal(cfg.instances_per_task)
    tasks = {}
    for rule in group:
        name = family.task_name(rule)
        partner = [family.task_name(other) for other in group if other is not rule]
        tasks[name] = {
            "Contributors": ["itstudy synthetic suite"],
            "Source": ["itstudy-synthetic"],
            "URL": [],
            "Categories": [family.category],
            "Reasoning": [],
            "Definition": [rule.definition],
            "Input_language": ["English"],
            "Output_language": ["English"],
            "Instruction_language": ["English"],
            "Domains": ["Synthetic"],
            "Positive Examples": [_positive(family, rule, item) for item in shown],
            "Negative Examples": [_negative(family, rule, item) for item in wrong],
            "Instances": [
                {"id": f"{name}-{i}", "input": family.render(item), "output": [rule.label(item)]}
                for i, item in enumerate(instances)
            ],
            "_synthetic": {
                "generator_version": GENERATOR_VERSION,
                "seed": cfg.seed,
                "family": family.name,
                "split": family.split,
                "counterfactual_of": partner[0] if partner else None,
            },
        }
    return tasks


def _positive(family: Family, rule: Rule, item: Any) -> dict:
    label = rule.label(item)
    return {"input": family.render(item), "output": label, "explanation": f"{rule.fact(item)}, so the answer is '{label}'."}


def _negative(family: Family, rule: Rule, item: Any) -> dict:
    right = rule.label(item)
    wrong = rule.labels[(rule.labels.index(right) + 1) % len(rule.labels)]
    return {
        "input": family.render(item),
        "output": wrong,
        "explanation": f"{rule.fact(item)}, so the answer should be '{right}', not '{wrong}'.",
    }


class _Dealer:
    """Hands out a group's inputs round-robin over its label combinations, each input once.

    A combination is the tuple of labels the group's rules give an input. For a counterfactual
    pair, combinations on which the two rules disagree come twice per round and those on which
    they agree once: most shared inputs then separate the two definitions, while each task's own
    labels stay balanced within every round.
    """

    def __init__(self, family: Family, group_index: int, group: tuple[Rule, ...], seed: int):
        pool = family.inputs()
        # Seeding with a string hashes it with SHA-512: stable across runs, processes and platforms.
        random.Random(f"itstudy-synthetic:{GENERATOR_VERSION}:{seed}:{family.name}:{group_index}").shuffle(pool)
        self.where = f"synthetic family '{family.name}' ({', '.join(rule.name for rule in group)})"
        self.buckets: dict[tuple[str, ...], list[Any]] = {}
        for item in pool:
            self.buckets.setdefault(tuple(rule.label(item) for rule in group), []).append(item)
        combos = [c for c in itertools.product(*(rule.labels for rule in group)) if c in self.buckets]
        disagree = [c for c in combos if len(set(c)) > 1]
        agree = [c for c in combos if len(set(c)) == 1]
        self.round = disagree + agree + disagree if len(group) > 1 else combos

    def deal(self, count: int) -> list[Any]:
        items = []
        for combo in itertools.islice(itertools.cycle(self.round), count):
            bucket = self.buckets[combo]
            if not bucket:
                raise SyntheticError(
                    f"{self.where} has no input labelled {combo} left after {len(items)} of {count}; "
                    f"lower data.synthetic.instances_per_task"
                )
            items.append(bucket.pop())
        return items
