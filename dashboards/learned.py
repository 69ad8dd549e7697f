"""What the tuned models learned: the output format, the rule in the instruction, or neither.

Kung & Peng ask whether instruction-tuned models read instructions or only learn the output
format. This module answers from `StudyRuns.scores` on the classification tasks (the only ones
with a label space), and from `StudyRuns.overall` for probes that runs log per run only (the
negation rates, the pairs' chance level), with the statistics of `itstudy.stats`:

- format table: per condition and size, generation EM, rank-classification EM and the share of
  predictions inside the task's label space, mean [95% CI], overall and per category; per task
  as mean and seed sd (a CI over one task's two or three seeds says little);
- pair probe: on counterfactual pairs, rule accuracy against its chance level, paired by task
  and seed; only a model that reads the definition is above chance;
- negation probe: runs with a negated definition, how often predictions follow the negated
  instruction against how often they follow the habit;
- the finding, one sentence, by a rule fixed before looking at any number: every tuned trial
  condition except the negation probes, pooled (each task and seed cell averaged over the
  conditions), at the largest training size; against the random baseline, the untuned model
  (pooled over its prompt variants) and the pairs' chance level.

Each part is left out, never shown empty, when its metric was not logged (older runs, SuperNI
without pairs, no negated variant).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dashboards.analysis import cell, compare, conditions, estimate_cell, matrix, trial_sizes
from dashboards.runs import BASELINE, TRIAL
from itstudy.stats import DEFAULT_MARGIN, Estimate, estimate, paired_difference, verdict

FORMAT_METRICS = ("exact_match", "rank_exact_match", "label_space_rate")
LABEL = {"exact_match": "EM", "rank_exact_match": "rank EM", "label_space_rate": "in label space (%)"}
NEGATED = "negated"
"""The definition variant of the negation probe."""
RANDOM = "random"
# Verdict words of `itstudy.stats.verdict` in the probes' terms.
_ABOVE_CHANCE = {"better": "above chance", "worse": "below chance"}
_FOLLOWS = {"better": "follows the instruction", "worse": "follows the habit"}
_THAN_GUESSING = {"better": "above random guessing", "worse": "below random guessing"}


OVERALL = "all test tasks (run overall)"
"""The task name a run's overall figure stands under when the run logged a probe per run only."""


def logged(scores: pd.DataFrame, metric: str) -> bool:
    return metric in scores and scores[metric].notna().any()


def classification(scores: pd.DataFrame) -> pd.DataFrame:
    return scores[scores["is_classification"].astype(bool)]


def _groups(scores: pd.DataFrame, kinds=(TRIAL, BASELINE)):
    """(kind, condition, size, rows) of every condition at each of its sizes (NA: any size)."""
    for kind in kinds:
        for condition in conditions(scores, kind):
            sizes = scores.loc[scores["condition"] == condition, "size"]
            for size in sorted(sizes.dropna().unique()) or [pd.NA]:
                yield kind, condition, size, cell(scores, condition, size)


def _row(estimate_: Estimate, **keys) -> dict:
    return {**keys, "mean": estimate_.mean, "ci_low": estimate_.ci_low, "ci_high": estimate_.ci_high,
            "seed_sd": estimate_.seed_sd, "n_tasks": estimate_.n_tasks, "n_seeds": estimate_.n_seeds}  # fmt: skip


# --- format against content ------------------------------------------------------------------------


def format_table(scores: pd.DataFrame) -> pd.DataFrame:
    """level (overall, category, task) x group x condition x size x metric: mean, CI, seed sd, tasks, seeds."""
    part = classification(scores)
    metrics = [metric for metric in FORMAT_METRICS if logged(part, metric)]
    rows = []
    for kind, condition, size, selected in _groups(part):
        for metric in metrics:
            keys = {"kind": kind, "condition": condition, "size": size, "metric": metric}
            rows += _levels(selected, metric, keys)
    columns = ["level", "group", "kind", "condition", "size", "metric", "mean", "ci_low", "ci_high", "seed_sd",
               "n_tasks", "n_seeds"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).astype({"size": "Int64"})


def _levels(selected: pd.DataFrame, metric: str, keys: dict) -> list[dict]:
    tasks, seeds = sorted(selected["task"].unique()), sorted(selected["seed"].dropna().unique())
    scores = matrix(selected, metric, tasks, seeds)
    if np.isnan(scores).all():
        return []  # this condition does not log the metric (a model-free baseline has no rank EM)
    rows = [_row(estimate(scores), level="overall", group="", **keys)]
    category_of = selected.drop_duplicates("task").set_index("task")["category"].reindex(tasks)
    for category in sorted(category_of.unique()):
        rows.append(_row(estimate(scores[(category_of == category).to_numpy()]), level="category", group=category, **keys))
    with np.errstate(all="ignore"):
        means, spread = np.nanmean(scores, axis=1), np.nanstd(scores, axis=1, ddof=1)
    present = (~np.isnan(scores)).sum(axis=1)
    for task, mean, sd, n_seeds in zip(tasks, means, spread, present):
        if n_seeds:
            rows.append({"level": "task", "group": task, **keys, "mean": mean, "ci_low": np.nan, "ci_high": np.nan,
                         "seed_sd": sd if n_seeds > 1 else np.nan, "n_tasks": 1, "n_seeds": n_seeds})  # fmt: skip
    return rows


# --- probes --------------------------------------------------------------------------------------------


def probe_rows(scores: pd.DataFrame, overall: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The cells of a probe: per task where runs logged it per task (or per pair), else one cell per run.

    The chance level of the pairs and the negation rates are logged per run; a run's overall figure
    then stands as a single task, so its interval carries seed noise only.
    """
    if logged(scores, metric):
        return scores[scores[metric].notna()]
    if logged(overall, metric):
        return overall[overall[metric].notna()].assign(task=OVERALL)
    return scores.iloc[:0]


def pair_table(scores: pd.DataFrame, overall: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> pd.DataFrame:
    """Per condition and size with counterfactual pairs: rule accuracy, chance, their paired difference."""
    pairs = probe_rows(scores, overall, "pair_rule_accuracy")
    rows = [
        _probe_row(selected, "pair_rule_accuracy", "pair_rule_chance", margin, _ABOVE_CHANCE,
                   kind=kind, condition=condition, size=size)
        for kind, condition, size, selected in _groups(pairs)
    ]  # fmt: skip
    return pd.DataFrame(rows).astype({"size": "Int64"}) if rows else pd.DataFrame()


def negation_table(scores: pd.DataFrame, overall: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> pd.DataFrame:
    """Per negated condition and size: how often predictions follow the negated instruction vs the habit."""
    negated = probe_rows(scores, overall, "negation_follow_rate")
    rows = [
        _probe_row(selected, "negation_follow_rate", "negation_habit_rate", margin, _FOLLOWS,
                   kind=kind, condition=condition, size=size)
        for kind, condition, size, selected in _groups(negated[negated["definition"] == NEGATED])
    ]  # fmt: skip
    return pd.DataFrame(rows).astype({"size": "Int64"}) if rows else pd.DataFrame()


def _paired(rows: pd.DataFrame, metric: str, reference: str) -> tuple[np.ndarray, np.ndarray]:
    """Two metrics of the same runs as tasks x seeds matrices, cell by cell."""
    tasks, seeds = sorted(rows["task"].unique()), sorted(rows["seed"].dropna().unique())
    return matrix(rows, metric, tasks, seeds), matrix(rows, reference, tasks, seeds)


def _probe_row(rows: pd.DataFrame, metric: str, reference: str, margin: float, words: dict, **keys) -> dict:
    mine, theirs = _paired(rows, metric, reference)
    difference = paired_difference(mine, theirs)
    decided = verdict(difference, margin, "points")
    return {
        **keys,
        metric: estimate(mine).text(),
        reference: estimate(theirs).text(),
        "difference": difference.mean,
        "ci_low": difference.ci_low,
        "ci_high": difference.ci_high,
        "n_tasks": difference.n_tasks,
        "n_seeds": difference.n_seeds,
        "verdict": words.get(decided, decided),
    }


# --- the finding ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """The study's finding in one sentence, and which runs each of its numbers pools."""

    sentence: str
    pools: list[str]


def finding(scores: pd.DataFrame, overall: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> Finding | None:
    """The fixed comparison of the module docstring in words; None without a finished tuned run."""
    part = classification(scores)
    trials = part[(part["kind"] == TRIAL) & (part["definition"] != NEGATED)]
    if trials.empty or not trial_sizes(trials):
        return None
    size = trial_sizes(trials)[-1]
    tuned = trials[trials["size"].eq(size).fillna(False)]
    names = sorted(tuned["condition"].unique())
    pools = [f"Tuned: {len(names)} trial condition(s) ({', '.join(names)}) at n = {size} per task, "
             f"{tuned['task'].nunique()} classification tasks × {tuned['seed'].nunique()} seeds, each (task, seed) "
             "cell averaged over the conditions."]  # fmt: skip
    clauses = [_em_clause(part, tuned, size, margin, pools)]
    if logged(tuned, "label_space_rate"):
        clauses.insert(0, f"answer inside the label space {_percent(estimate_cell(tuned, 'label_space_rate'))} of the time")
    pairs = probe_rows(scores, overall, "pair_rule_accuracy")
    tuned_pairs = pairs[(pairs["kind"] == TRIAL) & (pairs["definition"] != NEGATED) & pairs["size"].eq(size).fillna(False)]
    clauses.append(_pair_clause(tuned_pairs, margin))
    sentence = "Tuned models " + ", ".join(clauses[:-1]) + " and " + clauses[-1] + "."
    untuned = _baseline_rows(part, size, lambda name: name.startswith("untuned"))
    if not untuned.empty:
        sentence += f" The untuned model scores {estimate_cell(untuned, 'exact_match').text()} EM"
        if logged(untuned, "label_space_rate"):
            sentence += f" and answers inside the label space {_percent(estimate_cell(untuned, 'label_space_rate'))} of the time"
        sentence += "."
        pools.append(f"Untuned: {', '.join(sorted(untuned['condition'].unique()))}, pooled the same way.")
    return Finding(sentence, pools)


def _percent(estimate_: Estimate) -> str:
    """`95.4% [94.1, 96.8]`; a level without spread (a chance level shared by every pair) as `50.0%`."""
    if estimate_.ci_low == estimate_.ci_high:
        return f"{estimate_.mean:.1f}%"
    return f"{estimate_.mean:.1f}% [{estimate_.ci_low:.1f}, {estimate_.ci_high:.1f}]"


def _signed(difference: Estimate) -> str:
    return f"{difference.mean:+.1f} [{difference.ci_low:+.1f}, {difference.ci_high:+.1f}]"


def _baseline_rows(part: pd.DataFrame, size: int, chosen) -> pd.DataFrame:
    """Rows of the baselines `chosen` by name, at `size` or, when size-independent, at any size."""
    rows = part[(part["kind"] == BASELINE) & part["condition"].map(chosen)]
    at_size = rows[rows["size"].eq(size).fillna(False)]
    return at_size if not at_size.empty else rows[rows["size"].isna()]


def _em_clause(part: pd.DataFrame, tuned: pd.DataFrame, size: int, margin: float, pools: list[str]) -> str:
    em = estimate_cell(tuned, "exact_match").text()
    random = _baseline_rows(part, size, lambda name: name == RANDOM)
    if random.empty:
        return f"score {em} EM (no random baseline in this study)"
    difference = compare(tuned, random, "exact_match")
    pools.append(f"Random guessing: the random baseline, {random['task'].nunique()} tasks × {random['seed'].nunique()} "
                 "seeds; the difference pairs cells by task and seed.")  # fmt: skip
    decided = verdict(difference, margin)
    return (f"score {em} EM against {estimate_cell(random, 'exact_match').text()} for random guessing "
            f"(difference {_signed(difference)}: {_THAN_GUESSING.get(decided, decided)})")  # fmt: skip


def _pair_clause(pairs: pd.DataFrame, margin: float) -> str:
    if pairs.empty:
        return "the study has no counterfactual pairs to tell rule reading from format learning"
    accuracy, chance = _paired(pairs, "pair_rule_accuracy", "pair_rule_chance")
    difference = paired_difference(accuracy, chance)
    decided = verdict(difference, margin, "points")
    return (f"follow the definition on counterfactual pairs {_percent(estimate(accuracy))} of the time against "
            f"{_percent(estimate(chance))} by chance (difference {_signed(difference)}: "
            f"{_ABOVE_CHANCE.get(decided, decided)})")  # fmt: skip
