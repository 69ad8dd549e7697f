"""Text tables for the console and text artifacts, through pandas (one formatter for every table)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import pandas as pd

MISSING = "-"
"""What a cell shows when it has no value (a baseline not applicable, a trial that did not finish)."""


def mean_sd(values: Sequence[float], digits: int = 1) -> str:
    """'mean ± sample std' of `values` ('x' alone for one value, MISSING for none)."""
    if not values:
        return MISSING
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def text_table(frame: pd.DataFrame, title: str | None = None) -> str:
    """`frame` as aligned text (left-aligned first column, no index), under an optional title line."""
    cells = frame.astype(object).where(frame.notna(), MISSING).astype(str)
    # Text columns read best left-aligned, numbers right-aligned; pandas right-aligns every value.
    formatters = {}
    for column in cells.columns:
        width = max([len(str(column)), *cells[column].map(len)])
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        formatters[column] = (lambda w: lambda v: f"{v:>{w}}")(width) if numeric else (lambda w: lambda v: f"{v:<{w}}")(width)
    text = cells.to_string(index=False, justify="left", formatters=formatters)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return f"{title}\n{text}" if title else text
