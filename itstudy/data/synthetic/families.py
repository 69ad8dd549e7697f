"""The synthetic suite's content, as data: 231 tasks in 6 families, each a set of rules over one kind of input.

A family shares one kind of input (numbers, review sentences, noun phrases, made-up words, number
pairs, premise/hypothesis pairs); its tasks apply different rules to it. Training and test
families are disjoint, so test tasks are unseen in kind, not only in instances. Every definition
states its rule and names its labels.

Output space stated in the instruction (`label_draws`): each training group is written as it is and POOL_DRAWS
more times with label words dealt from LABEL_POOL (a pair draws one label set for both rules;
every pool word labels as many draws as any other), so the same rule asks for different words in
different tasks and no fixed label set can be memorised: which words to answer can only be read
from the definition and demonstrations. Test tasks keep their natural words (yes/no,
first/second, entailment/contradiction), all in the pool and no rarer there than the others.

Counterfactual pairs: the two rules of a group of two see the same inputs (and the same
demonstration inputs) under two definitions that label them differently, e.g. "is the number
even?" vs "is the number greater than 5000?", or sentiment vs. sentiment with swapped labels.

Changing anything here changes the generated files: bump `generator.GENERATOR_VERSION`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple


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


def relabelled(rule: Rule, words: tuple[str, ...], suffix: str) -> Rule:
    """The rule with its label words replaced, position by position, in its definition and outputs.

    Definitions quote their labels ('yes'), so only quoted occurrences are replaced: "a positive
    opinion" stays, "'positive'" becomes the drawn word.
    """
    assert len(words) == len(rule.labels), f"{rule.name}: {len(rule.labels)} labels, {len(words)} words"
    word = dict(zip(rule.labels, words))
    quoted = re.compile("|".join(re.escape(f"'{label}'") for label in rule.labels))
    definition = quoted.sub(lambda match: f"'{word[match.group()[1:-1]]}'", rule.definition)
    return Rule(f"{rule.name}_{suffix}", definition, words, lambda x: word[rule.label(x)], rule.fact)


# --- numbers (training) ---------------------------------------------------------------------------

_NUMBER_TASK = "You are given a whole number."
NUMBERS = Family(
    name="numbers",
    split="train",
    category="Number Properties",
    inputs=lambda: list(range(1, 10000)),
    render=str,
    groups=(
        (
            Rule("is_even", f"{_NUMBER_TASK} Answer 'yes' if the number is even, and 'no' if it is odd.",
                 ("yes", "no"), lambda n: _yes_no(n % 2 == 0),
                 lambda n: f"{n} is {'even' if n % 2 == 0 else 'odd'}"),
            Rule("is_greater_than_5000", f"{_NUMBER_TASK} Answer 'yes' if the number is greater than 5000, and 'no' otherwise.",
                 ("yes", "no"), lambda n: _yes_no(n > 5000),
                 lambda n: f"{n} is {'greater than' if n > 5000 else 'not greater than'} 5000"),
        ),
        (
            Rule("parity", f"{_NUMBER_TASK} Classify it as 'even' if it is divisible by 2 and as 'odd' otherwise.",
                 ("even", "odd"), lambda n: "even" if n % 2 == 0 else "odd",
                 lambda n: f"{n} leaves remainder {n % 2} when divided by 2"),
        ),
        (
            Rule("is_divisible_by_three", f"{_NUMBER_TASK} Answer 'yes' if the number is divisible by 3, and 'no' otherwise.",
                 ("yes", "no"), lambda n: _yes_no(n % 3 == 0),
                 lambda n: f"{n} leaves remainder {n % 3} when divided by 3"),
        ),
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
        (
            Rule("is_positive", f"{_REVIEW_TASK} Answer 'yes' if the opinion is positive, and 'no' if it is negative.",
                 ("yes", "no"), lambda r: _yes_no(r.polarity == "positive"), _opinion),
            Rule("is_negative", f"{_REVIEW_TASK} Answer 'yes' if the opinion is negative, and 'no' if it is positive.",
                 ("yes", "no"), lambda r: _yes_no(r.polarity == "negative"), _opinion),
        ),
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
        (
            Rule("is_animal", f"{_PHRASE_TASK} Answer 'yes' if its noun names an animal, and 'no' otherwise.",
                 ("yes", "no"), lambda p: _yes_no(p.kind == "animal"), _names),
            Rule("is_tool", f"{_PHRASE_TASK} Answer 'yes' if its noun names a tool, and 'no' otherwise.",
                 ("yes", "no"), lambda p: _yes_no(p.kind == "tool"), _names),
        ),
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
        (
            Rule("starts_with_vowel", f"{_WORD_TASK} Answer 'yes' if its first letter is a vowel (a, e, i, o, u), and 'no' otherwise.",
                 ("yes", "no"), lambda w: _yes_no(w[0] in _VOWELS),
                 lambda w: f"'{w}' starts with '{w[0]}', {_vowel_or_consonant(w[0])}"),
            Rule("ends_with_vowel", f"{_WORD_TASK} Answer 'yes' if its last letter is a vowel (a, e, i, o, u), and 'no' otherwise.",
                 ("yes", "no"), lambda w: _yes_no(w[-1] in _VOWELS),
                 lambda w: f"'{w}' ends with '{w[-1]}', {_vowel_or_consonant(w[-1])}"),
        ),
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
