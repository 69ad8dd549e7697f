"""Backbones and model scale: the paper's Table 2 layout and EM against parameter count.

Input: `StudyRuns.scores` (each run's `model` tag and logged parameter count beside its per-task
scores). Output: plain DataFrames that the report renders and draws.

- Table 2 (Kung & Peng 2023): per model, the rows zero-shot (the untuned model), original and
  simplified definition; columns EM and ROUGE-L over all test tasks, mean ± sd over seeds (each
  seed's mean over tasks first, as the paper reports seeds). Built when the study has untuned
  baselines and trials under both definitions, and either several models or a single training
  size (a study over sizes reads better in the Table 1 layout). With several training sizes the
  largest is shown.
- Scale: where the study has several models, EM (and the label-space rate where logged) of each
  condition against the model's parameter count, the untuned model as its own line per variant.
"""

from __future__ import annotations

import re

import pandas as pd

from dashboards.analysis import curve_rows, headline_split, split_of
from dashboards.runs import BASELINE, TRIAL
from itstudy.tables import mean_sd

TABLE2_ROWS = ("zero-shot", "original", "simplified")
"""Table 2's rows in the paper's order: the untuned model, then each definition."""
TABLE2_METRICS = {"exact_match": "EM", "rougeL": "ROUGE-L"}
SCALE_METRICS = ("exact_match", "label_space_rate")
"""What the scale curve shows, each where it was logged."""
_MODEL_PART = re.compile(r"(, )?model=[^,)]*(, )?")


def _untuned(scores: pd.DataFrame) -> pd.Series:
    return (scores["kind"] == BASELINE) & (scores["baseline"] == "untuned")


def has_table2(scores: pd.DataFrame) -> bool:
    """Whether the study has Table 2's shape (see the module docstring)."""
    if scores.empty or not _untuned(scores).any():
        return False
    trials = scores[scores["kind"] == TRIAL]
    if not {"original", "simplified"} <= set(trials["definition"]):
        return False
    return trials["model"].nunique() > 1 or trials["size"].nunique() == 1


def table2(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, row, condition): EM and ROUGE-L mean and seed sd, seeds, tasks, parameters."""
    if not has_table2(scores):
        return pd.DataFrame()
    trials = scores[scores["kind"] == TRIAL]
    size = trials["size"].max()
    rows = []
    for model in _models(scores):
        mine = scores[scores["model"] == model]
        for label, part in _table2_cells(mine, size):
            # a row without finished runs stays, showing none, so the table keeps the paper's shape
            for condition, cell in list(part.groupby("condition", sort=True)) or [("", part)]:
                rows.append({"model": model, "row": label, "condition": condition, "size": size, **_seed_summary(cell)})
    return pd.DataFrame(rows)


def _models(scores: pd.DataFrame) -> list[str]:
    """The study's models, smallest first (by logged parameter count, then name)."""
    models = scores[scores["model"] != ""].groupby("model")["parameters"].min()
    return sorted(models.index, key=lambda name: (pd.isna(models[name]), models[name] if pd.notna(models[name]) else 0, name))


def _table2_cells(mine: pd.DataFrame, size) -> list[tuple[str, pd.DataFrame]]:
    """(row label, the rows of that row) for one model: zero-shot under the original definition's prompts
    when there is one (the reference), then the trials at `size` under each definition."""
    untuned = mine[_untuned(mine)]
    if (untuned["definition"] == "original").any():
        untuned = untuned[untuned["definition"] == "original"]
    at_size = mine[(mine["kind"] == TRIAL) & mine["size"].eq(size).fillna(False)]
    cells = [("zero-shot", untuned)]
    cells += [(definition, at_size[at_size["definition"] == definition]) for definition in TABLE2_ROWS[1:]]
    return cells


def _seed_summary(cell: pd.DataFrame) -> dict:
    """Each metric's mean over tasks per seed, then mean and sd over seeds (the paper's ± is over seeds)."""
    per_seed = cell.groupby("seed")[list(TABLE2_METRICS)].mean()
    summary = {"n_seeds": len(per_seed), "n_tasks": cell["task"].nunique(), "parameters": cell["parameters"].min()}
    for metric in TABLE2_METRICS:
        values = per_seed[metric].dropna().tolist()
        summary[metric] = mean_sd(values)
        summary[f"{metric}_mean"] = float(pd.Series(values).mean()) if values else float("nan")
        summary[f"{metric}_sd"] = float(pd.Series(values).std()) if len(values) > 1 else float("nan")
    return summary


def _without_model(condition: str) -> str:
    """A condition's name without its model: `v (model=m, lr=1)` -> `v (lr=1)`, `untuned (v, model=m)` -> `untuned (v)`."""
    name = _MODEL_PART.sub(lambda match: ", " if match.group(1) and match.group(2) else "", condition)
    return name.replace("(, ", "(").replace(" ()", "")


def scale_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per line (trial condition without its model, or untuned per variant) and parameter count: EM and
    the label-space rate on the headline split, mean and 95% CI over tasks and seeds.

    Empty unless the study has several models with logged parameter counts. Model-free baselines
    do not depend on the model: they appear once each, without a parameter count.
    """
    if scores.empty or scores.loc[scores["kind"] == TRIAL, "model"].nunique() < 2 or scores["parameters"].isna().all():
        return pd.DataFrame()
    part = split_of(scores, headline_split(scores))
    modelled = (part["kind"] == TRIAL) | _untuned(part)
    line = part["condition"].map(_without_model)
    # A model's size is its smallest logged count: LoRA runs count their adapters too.
    size_of = scores.groupby("model")["parameters"].min()
    part = part.assign(line=line, parameters=part["model"].map(size_of).where(modelled))
    return curve_rows(part, "parameters", SCALE_METRICS)
