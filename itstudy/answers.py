"""SuperNI answer normalisation: the one definition of "the same answer" that data selection,
variants, metrics and baselines all use (plain Python, imports nothing of the project)."""

from __future__ import annotations

import string

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop every `string.punctuation` character, collapse whitespace (articles are kept).

    Exactly Tk-Instruct's `normalize_answer` (src/compute_metrics.py), so that our numbers and
    the paper's are computed on the same strings.
    """
    return " ".join("".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split())
