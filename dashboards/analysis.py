"""The study's question answered with numbers: the paper table, the verdicts, the per-task differences.

Input: `StudyRuns.scores`, one row per finished run and test task. Output: plain DataFrames that
the report renders as HTML tables, CSV files and figures. Statistics are `itstudy.stats`.

- Splits: all test tasks, classification tasks, generation tasks (as each run's
  task_metrics.csv classifies them). Headline metric per split: EM on all and on classification
  tasks, ROUGE-L on generation tasks.
- Conditions: trial conditions (a variant, plus any other grid axis) at each training size, and
  baselines. A baseline whose runs carry a single data size does not depend on it (model-free
  baselines, the untuned model with a fixed tokenizer) and stands for every size.
- Reference: per group of other grid axes, the variant with the most "original" parts
  (definition, then examples); every other variant is compared with it at the same size, paired
  by task and seed.
- Per category: SuperNI's headline metric of each test category (EM for the classification-style
  categories in `EM_CATEGORIES`, ROUGE-L otherwise), as SuperNI reports them.
- Diversity: where the number of training tasks is a grid axis (`data.num_train_tasks`), EM and
  the format metrics of each trial condition against it, on the headline split.
- Every number here is from the test tasks; dev metrics are only for choices and are not read.
- The best instruction-tuned condition at each size (highest mean headline EM, on classification
  tasks when there are any) is compared with each baseline. Choosing the best after looking
  favours instruction tuning; a "not better" verdict is the stronger for it.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from dashboards.runs import BASELINE, TRIAL
from itstudy.stats import DEFAULT_MARGIN, Estimate, estimate, paired_difference, verdict

SPLITS = ("all", "classification", "generation")
HEADLINE = {"all": "exact_match", "classification": "exact_match", "generation": "rougeL"}
METRIC_LABEL = {"exact_match": "EM", "rougeL": "ROUGE-L"}
EM_CATEGORIES = frozenset({
    "textual_entailment", "cause_effect_classification", "coreference_resolution",
    "dialogue_act_recognition", "answerability_classification", "word_analogy",
})
"""Test categories whose SuperNI headline metric is EM (study protocol section 5); ROUGE-L for the rest."""
DIVERSITY_METRICS = ("exact_match", "label_space_rate", "rank_exact_match")
"""What the diversity curve shows, each where it was logged."""
_TASKS_AXIS = re.compile(r"num_train_tasks=(\d+)")
# Baselines in the order the paper discusses them; others follow alphabetically.
BASELINE_ORDER = ("random", "majority", "majority_oracle", "copy_demo")


def place_sizes(scores: pd.DataFrame) -> pd.DataFrame:
    """`scores` with the size of size-independent baselines cleared (NA: stands for every size)."""
    scores = scores.copy()
    if scores.empty:
        return scores
    baseline = scores["kind"] == BASELINE
    sizes_per_condition = scores[baseline].groupby("condition")["size"].nunique()
    independent = sizes_per_condition[sizes_per_condition < 2].index
    scores.loc[baseline & scores["condition"].isin(independent), "size"] = pd.NA
    return scores


def split_of(scores: pd.DataFrame, split: str) -> pd.DataFrame:
    if split == "all":
        return scores
    return scores[scores["is_classification"] == (split == "classification")]


def present_splits(scores: pd.DataFrame) -> list[str]:
    """The task kinds the study has; with both kinds, 'all' first (with one kind it is that kind)."""
    kinds = [split for split in SPLITS[1:] if not split_of(scores, split).empty]
    return ["all", *kinds] if len(kinds) == 2 else kinds


def headline_split(scores: pd.DataFrame) -> str:
    """Where the paper's question is asked: classification tasks when there are any."""
    splits = present_splits(scores)
    return "classification" if "classification" in splits else (splits[0] if splits else "all")


def trial_sizes(scores: pd.DataFrame) -> list[int]:
    return sorted(int(size) for size in scores.loc[scores["kind"] == TRIAL, "size"].dropna().unique())


def conditions(scores: pd.DataFrame, kind: str) -> list[str]:
    """Conditions of a kind in reading order: references first for trials, the paper's order for baselines."""
    names = sorted(scores.loc[scores["kind"] == kind, "condition"].unique())
    if kind == TRIAL:
        refs = set(references(scores).values())
        return sorted(names, key=lambda name: (name not in refs, name))
    rank = {name: index for index, name in enumerate(BASELINE_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def cell(scores: pd.DataFrame, condition: str, size) -> pd.DataFrame:
    """The rows of one condition at one size (NA: a size-independent baseline)."""
    rows = scores[scores["condition"] == condition]
    return rows[rows["size"].isna()] if pd.isna(size) else rows[rows["size"].eq(size).fillna(False)]


def matrix(rows: pd.DataFrame, metric: str, tasks: list[str], seeds: list[int]) -> np.ndarray:
    """tasks x seeds matrix of `metric`, NaN where a run or a task is missing."""
    table = rows.pivot_table(index="task", columns="seed", values=metric, aggfunc="mean")
    return table.reindex(index=tasks, columns=seeds).to_numpy(dtype=float)


def estimate_cell(rows: pd.DataFrame, metric: str) -> Estimate:
    tasks, seeds = sorted(rows["task"].unique()), sorted(rows["seed"].dropna().unique())
    return estimate(matrix(rows, metric, tasks, seeds))


def compare(candidate: pd.DataFrame, reference: pd.DataFrame, metric: str) -> Estimate:
    """candidate - reference, paired by task and seed over the union of both (unpaired cells drop out)."""
    both = pd.concat([candidate, reference])
    tasks, seeds = sorted(both["task"].unique()), sorted(both["seed"].dropna().unique())
    return paired_difference(matrix(candidate, metric, tasks, seeds), matrix(reference, metric, tasks, seeds))


def _estimate_row(estimate_: Estimate) -> dict:
    return {
        "mean": estimate_.mean,
        "ci_low": estimate_.ci_low,
        "ci_high": estimate_.ci_high,
        "seed_sd": estimate_.seed_sd,
        "n_tasks": estimate_.n_tasks,
        "n_seeds": estimate_.n_seeds,
    }


# --- the paper-style table -----------------------------------------------------------------------


def paper_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, condition, size, metric): mean, 95% CI, seed sd, tasks, seeds, runs."""
    rows = []
    for split in present_splits(scores):
        part = split_of(scores, split)
        for kind in (TRIAL, BASELINE):
            for condition in conditions(part, kind):
                sizes = part.loc[part["condition"] == condition, "size"]
                for size in sorted(sizes.dropna().unique()) or [pd.NA]:
                    selected = cell(part, condition, size)
                    for metric in METRIC_LABEL:
                        rows.append(
                            {
                                "split": split,
                                "kind": kind,
                                "condition": condition,
                                "size": size,
                                "metric": metric,
                                **_estimate_row(estimate_cell(selected, metric)),
                                "n_runs": selected["run_id"].nunique(),
                            }
                        )
    return pd.DataFrame(rows).astype({"size": "Int64"})


def category_metric(category: str) -> str:
    """SuperNI's headline metric of a test category (first category, lowercased, spaces to underscores)."""
    return "exact_match" if category in EM_CATEGORIES else "rougeL"


def category_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (test category, condition, size): the category's headline metric, mean and 95% CI."""
    rows = []
    for category, part in scores.groupby("category", sort=True):
        metric = category_metric(category)
        for kind in (TRIAL, BASELINE):
            for condition in conditions(part, kind):
                sizes = part.loc[part["condition"] == condition, "size"]
                for size in sorted(sizes.dropna().unique()) or [pd.NA]:
                    selected = cell(part, condition, size)
                    rows.append({"category": category, "metric": metric, "kind": kind, "condition": condition,
                                 "size": size, **_estimate_row(estimate_cell(selected, metric))})  # fmt: skip
    return pd.DataFrame(rows).astype({"size": "Int64"}) if rows else pd.DataFrame()


def diversity_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per trial variant (and other axes) and number of training tasks: EM and the format metrics, headline split.

    Empty unless `data.num_train_tasks` is a grid axis. Baselines do not depend on the training
    tasks; they appear once each, with num_train_tasks empty.
    """
    counts = scores["other"].str.extract(_TASKS_AXIS)[0] if "other" in scores else pd.Series(dtype=str)
    if counts.dropna().empty:
        return pd.DataFrame()
    rest = scores["other"].str.replace(_TASKS_AXIS, "", regex=True).str.strip(", ")
    part = split_of(scores.assign(num_train_tasks=pd.to_numeric(counts), line=scores["variant"] + rest.map(lambda r: f" ({r})" if r else "")),
                    headline_split(scores))  # fmt: skip
    trial = part["kind"] == TRIAL
    part = part.assign(line=part["line"].where(trial, part["condition"]), num_train_tasks=part["num_train_tasks"].where(trial))
    return curve_rows(part, "num_train_tasks", DIVERSITY_METRICS)


def curve_rows(part: pd.DataFrame, size_column: str, metrics) -> pd.DataFrame:
    """The estimate of every logged metric per (kind, line, size): the rows a size curve draws."""
    rows = []
    for (kind, line, size), group in part.groupby(["kind", "line", size_column], dropna=False, sort=True):
        for metric in metrics:
            if metric in group and group[metric].notna().any():
                rows.append({"kind": kind, "condition": line, size_column: size, "metric": metric,
                             **_estimate_row(estimate_cell(group, metric))})  # fmt: skip
    return pd.DataFrame(rows).astype({size_column: "Int64"})


# --- verdicts --------------------------------------------------------------------------------------


def references(scores: pd.DataFrame) -> dict[str, str]:
    """other-axes group -> its reference trial condition (the variant with the most original parts)."""
    trials = scores[scores["kind"] == TRIAL].drop_duplicates("condition")
    refs = {}
    for other, group in trials.groupby("other"):
        originality = (group["definition"] == "original").astype(int) * 2 + (group["examples"] == "original")
        refs[other] = group.assign(rank=originality).sort_values(["rank", "condition"], ascending=[False, True])[
            "condition"
        ].iloc[0]
    return refs


def verdict_table(scores: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> pd.DataFrame:
    """Every variant against its reference, and the best tuned condition against each baseline."""
    rows = _variant_verdicts(scores, margin) + _baseline_verdicts(scores, margin)
    columns = ["question", "candidate", "reference", "size", "split", "metric", "difference", "ci_low", "ci_high",
               "n_tasks", "n_seeds", "verdict"]
    return pd.DataFrame(rows, columns=columns).astype({"size": "Int64"})


def _verdict_row(question, candidate, reference, size, split, metric, difference: Estimate, margin) -> dict:
    return {
        "question": question,
        "candidate": candidate,
        "reference": reference,
        "size": size,
        "split": split,
        "metric": metric,
        "difference": difference.mean,
        "ci_low": difference.ci_low,
        "ci_high": difference.ci_high,
        "n_tasks": difference.n_tasks,
        "n_seeds": difference.n_seeds,
        "verdict": verdict(difference, margin, METRIC_LABEL[metric]),
    }


def _variant_verdicts(scores: pd.DataFrame, margin: float) -> list[dict]:
    rows = []
    trials = scores[scores["kind"] == TRIAL]
    for other, reference in references(scores).items():
        candidates = [name for name in conditions(trials[trials["other"] == other], TRIAL) if name != reference]
        for candidate in candidates:
            for size in trial_sizes(trials):
                for split in present_splits(trials):
                    part, metric = split_of(trials, split), HEADLINE[split]
                    mine, theirs = cell(part, candidate, size), cell(part, reference, size)
                    if mine.empty and theirs.empty:
                        continue
                    difference = compare(mine, theirs, metric)
                    rows.append(_verdict_row("variant vs reference", candidate, reference, size, split, metric, difference, margin))
    return rows


def best_trial(scores: pd.DataFrame, size: int, split: str) -> str | None:
    """The trial condition with the highest mean headline metric at `size` on `split`."""
    part = split_of(scores, split)
    part = part[(part["kind"] == TRIAL) & part["size"].eq(size).fillna(False)]
    if part.empty:
        return None
    return part.groupby("condition")[HEADLINE[split]].mean().idxmax()


def _baseline_verdicts(scores: pd.DataFrame, margin: float) -> list[dict]:
    rows = []
    split = headline_split(scores)
    part, metric = split_of(scores, split), HEADLINE[split]
    for size in trial_sizes(scores):
        best = best_trial(scores, size, split)
        if best is None:
            continue
        chosen = part.loc[part["condition"] == best].iloc[0]
        for baseline in conditions(part, BASELINE):
            run = part[part["condition"] == baseline].iloc[0]
            if baseline.startswith("untuned") and (run["variant"], run.get("model")) != (chosen["variant"], chosen.get("model")):
                continue  # the untuned model is compared under the best condition's own prompts and model
            theirs = cell(part, baseline, size)
            if theirs.empty:
                theirs = cell(part, baseline, pd.NA)
            difference = compare(cell(part, best, size), theirs, metric)
            rows.append(_verdict_row("best tuned vs baseline", best, baseline, size, split, metric, difference, margin))
    return rows


def answer(verdicts: pd.DataFrame, scores: pd.DataFrame) -> list[str]:
    """One sentence per comparison on the headline split: the paper's question in words."""
    split = headline_split(scores)
    headline = verdicts[verdicts["split"] == split]
    sentences = []
    for (question, candidate, reference), group in headline.groupby(["question", "candidate", "reference"], sort=False):
        parts = [
            f"n={row.size}: {row.difference:+.1f} [{row.ci_low:+.1f}, {row.ci_high:+.1f}] {row.verdict}"
            for row in group.itertuples()
        ]
        label = METRIC_LABEL[group["metric"].iloc[0]]
        sentences.append(f"{candidate} − {reference} ({label}, {split} tasks): " + "; ".join(parts))
    return sentences


# --- which tasks drive the average ----------------------------------------------------------------


def task_differences(scores: pd.DataFrame) -> pd.DataFrame:
    """task x (variant @ size): mean over paired seeds of variant - reference, headline metric per task kind.

    Rows are sorted by their mean difference, so the tasks that pull the average down come first.
    """
    trials = scores[scores["kind"] == TRIAL].copy()
    trials["value"] = np.where(trials["is_classification"], trials["exact_match"], trials["rougeL"])
    columns = {}
    for other, reference in references(scores).items():
        group = trials[trials["other"] == other]
        base = group[group["condition"] == reference].set_index(["task", "size", "seed"])["value"]
        for candidate in conditions(group, TRIAL):
            if candidate == reference:
                continue
            mine = group[group["condition"] == candidate].set_index(["task", "size", "seed"])["value"]
            paired = (mine - base).dropna().groupby(level=["task", "size"]).mean()
            for size, values in paired.groupby(level="size"):
                columns[f"{candidate} @ n={size}"] = values.droplevel("size")
    if not columns:
        return pd.DataFrame()
    table = pd.DataFrame(columns)
    table.index.name = "task"
    kinds = trials.drop_duplicates("task").set_index("task")["is_classification"]
    table.insert(0, "metric", kinds.reindex(table.index).map({True: "EM", False: "ROUGE-L"}))
    order = table.drop(columns="metric").mean(axis=1).sort_values().index
    return table.loc[order]
