"""The report's figures as PNG bytes, drawn with matplotlib's object API on the Agg canvas.

- data-size curve: the headline metric against training instances per task (log scale), one line
  per trial condition with its 95% CI band; baselines that do not depend on the data size as
  horizontal lines, the random baseline as a band;
- diversity curve: EM (and the label-space rate and rank EM where logged) against the number of
  training tasks, one line per trial condition with its 95% CI band, baselines as in the data-size
  curve;
- scale curve: EM (and the label-space rate where logged) against the model's parameter count
  (log scale), one line per condition, the untuned model per variant as its own dotted line;
- per-task differences: a heat map of variant minus reference per test task and size;
- verdicts: each paired difference with its 95% CI against the shaded equivalence margin;
- format metrics: EM, rank EM and the label-space rate per condition with their 95% CIs, one
  panel per metric, the baselines beside the tuned conditions and the random baseline as a band.

`matplotlib.figure.Figure` is used without pyplot, so no global backend or figure state is touched
(safe in tests and servers). Functions take the analysis tables and return PNG bytes.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dashboards.analysis import DIVERSITY_METRICS, HEADLINE, METRIC_LABEL
from dashboards.learned import FORMAT_METRICS, LABEL, RANDOM
from dashboards.runs import BASELINE, TRIAL
from dashboards.scale import SCALE_METRICS

DPI = 110


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def curve_panels(table: pd.DataFrame) -> list[str]:
    """Classification and generation panels where the study has such tasks, else one panel on all tasks."""
    splits = [split for split in ("classification", "generation") if split in set(table["split"])]
    return splits or ["all"]


def data_size_curve(table: pd.DataFrame) -> bytes:
    """Headline metric vs training instances per task, per split, from `analysis.paper_table`."""
    panels = curve_panels(table)
    figure = Figure(figsize=(6.0 * len(panels), 4.2))
    for index, split in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        metric = HEADLINE[split]
        rows = table[(table["split"] == split) & (table["metric"] == metric)]
        _curve(axes, rows, "training instances per task", f"{METRIC_LABEL[metric]} (%)",
               f"{split} tasks: mean and 95% CI over tasks and seeds")
    return _png(figure)


DIVERSITY_LABEL = {"exact_match": "EM", "label_space_rate": "in label space", "rank_exact_match": "rank EM"}


def diversity_curve(table: pd.DataFrame, split: str) -> bytes:
    """Each logged metric of `analysis.diversity_table` against the number of training tasks (log scale)."""
    figure, _ = _metric_panels(table, DIVERSITY_METRICS, DIVERSITY_LABEL, "num_train_tasks", "training tasks", split)
    return _png(figure)


def _metric_panels(table: pd.DataFrame, metrics, labels: dict, size_column: str, x_label: str, split: str):
    """One panel per logged metric, each condition's `_curve` against `size_column`; the figure and its (axes, rows)."""
    metrics = [metric for metric in metrics if metric in set(table["metric"])]
    figure = Figure(figsize=(5.0 * len(metrics), 4.2))
    panels = []
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), index + 1)
        rows = table[table["metric"] == metric].rename(columns={size_column: "size"})
        _curve(axes, rows, x_label, f"{labels[metric]} (%)", f"{split} test tasks: mean and 95% CI")
        panels.append((axes, rows))
    return figure, panels


SCALE_LABEL = {"exact_match": "EM", "label_space_rate": "in label space"}


def scale_curve(table: pd.DataFrame, split: str) -> bytes:
    """Each logged metric of `scale.scale_table` against the parameter count (log scale), untuned as its own line."""
    figure, panels = _metric_panels(table, SCALE_METRICS, SCALE_LABEL, "parameters", "parameters", split)
    for axes, rows in panels:
        counts = sorted(rows["size"].dropna().astype(int).unique())
        axes.set_xticks(counts, [_count(count) for count in counts])  # 77M reads better than 76961152
        axes.minorticks_off()
    return _png(figure)


def _count(parameters: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if parameters >= scale:
            return f"{parameters / scale:.3g}{unit}"
    return str(parameters)


def _curve(axes, rows: pd.DataFrame, xlabel: str, ylabel: str, title: str) -> None:
    """Trial conditions against `size` on a log axis ticked at the measured sizes, baselines beside them."""
    _draw_trials(axes, rows[rows["kind"] == TRIAL])
    _draw_baselines(axes, rows[rows["kind"] == BASELINE])
    axes.set_xscale("log")
    sizes = sorted(rows.loc[rows["kind"] == TRIAL, "size"].dropna().astype(int).unique())
    if sizes:
        axes.set_xticks(sizes, [str(size) for size in sizes])
        axes.minorticks_off()
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)


def _draw_trials(axes, rows: pd.DataFrame) -> None:
    for condition, group in rows.groupby("condition", sort=False):
        group = group.dropna(subset=["size", "mean"]).sort_values("size")
        x = group["size"].astype(float).to_numpy()
        (line,) = axes.plot(x, group["mean"], marker="o", label=condition)
        axes.fill_between(x, group["ci_low"], group["ci_high"], color=line.get_color(), alpha=0.2)


def _draw_baselines(axes, rows: pd.DataFrame) -> None:
    for condition, group in rows.groupby("condition", sort=False):
        group = group.dropna(subset=["mean"])
        if group.empty:
            continue
        if group["size"].notna().any():  # a baseline that depends on the data size is a dotted line
            group = group.sort_values("size")
            axes.plot(group["size"].astype(float), group["mean"], ls=":", marker="x", color="0.4", label=condition)
            continue
        row = group.iloc[0]
        if condition == "random":
            axes.axhspan(row["ci_low"], row["ci_high"], color="0.5", alpha=0.25, label="random (95% CI)")
            axes.axhline(row["mean"], color="0.3", lw=1)
        else:
            axes.axhline(row["mean"], color="0.4", ls="--", lw=1, label=condition)
            axes.annotate(condition, (1, row["mean"]), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                          fontsize=7, color="0.3")


def task_heatmap(differences: pd.DataFrame) -> bytes:
    """Per-task variant minus reference (rows sorted by mean difference), from `analysis.task_differences`."""
    values = differences.drop(columns="metric")
    data = values.to_numpy(dtype=float)
    limit = max(float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0, 1.0)
    figure = Figure(figsize=(2.0 + 1.3 * values.shape[1], 1.6 + 0.28 * values.shape[0]))
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(data, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    axes.set_xticks(range(values.shape[1]), values.columns, rotation=30, ha="right", fontsize=8)
    labels = [f"{task} ({metric})" for task, metric in zip(values.index, differences["metric"])]
    axes.set_yticks(range(values.shape[0]), labels, fontsize=7)
    if data.size <= 400:
        for (row, column), value in np.ndenumerate(data):
            if np.isfinite(value):
                color = "white" if abs(value) > 0.6 * limit else "black"
                axes.text(column, row, f"{value:+.0f}", ha="center", va="center", fontsize=6, color=color)
    figure.colorbar(image, ax=axes, label="difference from the reference (points)")
    axes.set_title("Per-task difference from the reference variant (mean over seeds)", fontsize=10)
    return _png(figure)


def verdict_plot(verdicts: pd.DataFrame, split: str, margin: float) -> bytes:
    """Each paired difference on `split` (the headline one) with its 95% CI, the ±margin band shaded."""
    rows = verdicts[verdicts["split"] == split].dropna(subset=["difference"]).iloc[::-1]
    figure = Figure(figsize=(7.5, 1.2 + 0.32 * max(len(rows), 1)))
    axes = figure.add_subplot(1, 1, 1)
    y = np.arange(len(rows))
    errors = [rows["difference"] - rows["ci_low"], rows["ci_high"] - rows["difference"]]
    axes.errorbar(rows["difference"], y, xerr=errors, fmt="o", color="black", capsize=3)
    axes.axvspan(-margin, margin, color="tab:green", alpha=0.15, label=f"equivalence margin ±{margin:g}")
    axes.axvline(0, color="0.4", lw=1)
    labels = [f"{r.candidate} − {r.reference} @ n={r.size} ({METRIC_LABEL[r.metric]})" for r in rows.itertuples()]
    axes.set_yticks(y, labels, fontsize=7)
    axes.set_xlabel("paired difference (points), 95% CI over tasks and seeds")
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def format_plot(table: pd.DataFrame) -> bytes:
    """Overall EM, rank EM and label-space rate per condition and size, from `learned.format_table`.

    One panel per logged metric, one row per condition (tuned in black, baselines in grey), the
    random baseline's 95% CI as a band (its EM band also on rank EM, whose expectation is the same), so a
    model that learned the format (label space near 100%) but not the rule (EM at random) shows
    at a glance; a condition that does not log a metric (model-free baselines: rank EM) has no
    point in that panel.
    """
    rows = table[table["level"] == "overall"]
    metrics = [metric for metric in FORMAT_METRICS if metric in set(rows["metric"])]
    keys = list(rows[["kind", "condition", "size"]].drop_duplicates().itertuples(index=False, name=None))
    names = [condition if pd.isna(size) else f"{condition} @ n={int(size)}" for _, condition, size in keys]
    figure = Figure(figsize=(3.4 * len(metrics) + 1.5, 1.2 + 0.32 * len(keys)))
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), index + 1)
        cells = rows[rows["metric"] == metric]
        # Random guessing expects the same score from generation and from rank classification.
        band = rows[(rows["kind"] == BASELINE) & (rows["condition"] == RANDOM)
                    & (rows["metric"] == ("exact_match" if metric == "rank_exact_match" else metric))]  # fmt: skip
        for _, row in band.iterrows():
            axes.axvspan(row["ci_low"], row["ci_high"], color="0.5", alpha=0.2)
        for y, (kind, condition, size) in enumerate(keys):
            found = cells[(cells["kind"] == kind) & (cells["condition"] == condition) & _same_size(cells["size"], size)]
            if found.empty:
                continue
            row = found.iloc[0]
            color = "black" if kind == TRIAL else "0.5"
            errors = [[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]]
            axes.errorbar(row["mean"], y, xerr=errors, fmt="o" if kind == TRIAL else "s", color=color, capsize=3)
        axes.set_xlim(-3, 103)
        axes.set_ylim(len(keys) - 0.5, -0.5)
        axes.set_yticks(range(len(keys)), names if index == 0 else [], fontsize=7)
        axes.set_xlabel(f"{LABEL[metric]}{'' if metric == 'label_space_rate' else ' (%)'}")
        axes.grid(axis="x", alpha=0.3)
    figure.suptitle("Format or content: mean and 95% CI over tasks and seeds (band: random guessing)", fontsize=10)
    return _png(figure)


def _same_size(sizes: pd.Series, size) -> pd.Series:
    return sizes.isna() if pd.isna(size) else sizes.eq(size).fillna(False)
