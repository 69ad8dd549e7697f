"""`itstudy report`: a study's answer, built from its runs in MLflow alone.

    path = build_report("experiments/demo.yaml")      # or a study name; prints nothing, returns report.html

Writes into one folder (default `$ITSTUDY_HOME/reports/<experiment>/`):
- `report.html`, self-contained (figures embedded as base64 PNG): what was learned (the finding
  in one sentence, EM beside rank EM and the label-space rate, the pair and negation probes), the
  answer in sentences, the verdict table, the paper-style (Table 1) layout per task split, the
  per-category table with SuperNI's headline metric, the paper's Table 2 layout (zero-shot,
  original, simplified per model) and EM against parameter count when the study has their shape
  (`dashboards.scale`), the data-size curve, the diversity curve (when the number of training tasks is swept), the per-task differences, provenance (experiment file, code version, data digests,
  model, runs, failures);
- the figures as PNG files and the tables as CSV files (`paper_table.csv`, `verdicts.csv`,
  `task_differences.csv`, `category_table.csv`, `runs.csv`, `diversity_table.csv` when swept, `table2.csv` and `scale_table.csv` when built, and when their metrics were logged `format_table.csv`,
  `pair_probe.csv`, `negation_probe.csv`);
and logs the folder as the `report/` artifacts of the sweep's parent run.

Failed, missing and duplicated runs are reported in the report, never raised; a study without a
single finished run still gets a report that says so. Refuses (ReportError, one line) only an
experiment that does not exist or has no runs.
"""

from __future__ import annotations

import base64
import logging
import math
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import pandas as pd

from dashboards import analysis, figures, learned, scale
from dashboards.runs import BASELINE, FINISHED, TRIAL, StudyRuns, param, read_study
from itstudy.stats import DEFAULT_MARGIN, METHOD
from itstudy.paths import itstudy_home
from itstudy.provenance import VERSIONED_PACKAGES
from itstudy.tracking import RunLogger, study_store

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
ARTIFACT_DIR = "report"
_ALWAYS_WRITTEN = ("paper_table", "verdicts", "task_differences", "category_table")
"""Tables written even when empty; the probes' tables only when their metrics were logged."""


def build_report(
    study_or_experiment: str,
    tracking_uri: str | None = None,
    out_dir: Path | None = None,
    margin: float = DEFAULT_MARGIN,
) -> Path:
    """Build the report of a study (experiment file or MLflow experiment name); returns report.html."""
    started = time.perf_counter()
    store = study_store(study_or_experiment, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="itstudy-report-") as scratch:
        study = read_study(store.tracking_uri, store.experiment, Path(scratch), store.config_digest)
    out_dir = Path(out_dir or itstudy_home() / "reports" / store.experiment)
    out_dir.mkdir(parents=True, exist_ok=True)

    scores, overall = analysis.place_sizes(study.scores), analysis.place_sizes(study.overall)
    tables = _tables(scores, overall, margin)
    images = _figures(tables, analysis.headline_split(scores), margin)
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=name == "task_differences")
    study.runs.drop(columns=["start_time"]).to_csv(out_dir / "runs.csv", index=False)
    for name, png in images.items():
        (out_dir / f"{name}.png").write_bytes(png)

    context = _context(study, scores, overall, tables, images, margin, study_or_experiment)
    context["build_s"] = time.perf_counter() - started
    html = _template().render(**context)
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    if study.sweep is not None:
        RunLogger(store.tracking_uri, study.sweep["run_id"]).log_dir(out_dir, ARTIFACT_DIR)
    log.info("report of %s built in %.1f s: %s", store.experiment, context["build_s"], path)
    return path


def _tables(scores: pd.DataFrame, overall: pd.DataFrame, margin: float) -> dict[str, pd.DataFrame]:
    if scores.empty:
        return {}
    tables = {
        "paper_table": analysis.paper_table(scores),
        "verdicts": analysis.verdict_table(scores, margin),
        "task_differences": analysis.task_differences(scores),
        "category_table": analysis.category_table(scores),
        "diversity_table": analysis.diversity_table(scores),
        "table2": scale.table2(scores),
        "scale_table": scale.scale_table(scores),
        "format_table": learned.format_table(scores),
        "pair_probe": learned.pair_table(scores, overall, margin),
        "negation_probe": learned.negation_table(scores, overall, margin),
    }
    return {name: table for name, table in tables.items() if not table.empty or name in _ALWAYS_WRITTEN}


def _figures(tables: dict[str, pd.DataFrame], headline_split: str, margin: float) -> dict[str, bytes]:
    images = {}
    if "paper_table" in tables:
        images["data_size_curve"] = figures.data_size_curve(tables["paper_table"])
    if not tables.get("diversity_table", pd.DataFrame()).empty:
        images["diversity_curve"] = figures.diversity_curve(tables["diversity_table"], headline_split)
    if not tables.get("scale_table", pd.DataFrame()).empty:
        images["scale_curve"] = figures.scale_curve(tables["scale_table"], headline_split)
    if not tables.get("task_differences", pd.DataFrame()).empty:
        images["task_differences"] = figures.task_heatmap(tables["task_differences"])
    if not tables.get("format_table", pd.DataFrame()).empty:
        images["format_metrics"] = figures.format_plot(tables["format_table"])
    verdicts = tables.get("verdicts", pd.DataFrame())
    if not verdicts.empty and verdicts.loc[verdicts["split"] == headline_split, "difference"].notna().any():
        images["verdicts"] = figures.verdict_plot(verdicts, headline_split, margin)
    return images


def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return environment.get_template("report.html.j2")


# --- what the template shows ------------------------------------------------------------------------


def _context(study: StudyRuns, scores, overall, tables, images, margin: float, target: str) -> dict:
    verdicts = tables.get("verdicts", pd.DataFrame())
    return {
        "experiment": study.experiment,
        "target": target,
        "description": param(study.sweep, "params.description", ""),
        "answer": analysis.answer(verdicts, scores) if not verdicts.empty else [],
        "finding": learned.finding(scores, overall, margin) if not scores.empty else None,
        "format": _format_sections(tables.get("format_table", pd.DataFrame())),
        "pairs": _probe_rows(tables.get("pair_probe", pd.DataFrame())),
        "negation": _probe_rows(tables.get("negation_probe", pd.DataFrame())),
        "headline_split": analysis.headline_split(scores),
        "margin": margin,
        "method": METHOD,
        "verdicts": _verdict_rows(verdicts),
        "sections": _paper_sections(tables.get("paper_table", pd.DataFrame())),
        "table2": _table2_blocks(tables.get("table2", pd.DataFrame())),
        "categories": _category_rows(tables.get("category_table", pd.DataFrame())),
        "images": {name: base64.b64encode(png).decode("ascii") for name, png in images.items()},
        "provenance": _provenance(study),
        "files": study.files,
        "failed": study.failed.to_dict("records"),
        "missing": study.missing,
        "notes": study.notes,
        "runs": study.runs.to_dict("records"),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _number(value: float, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _interval(center: float, low: float, high: float, signed: bool = False) -> str:
    return f"{_number(center, signed)} [{_number(low, signed)}, {_number(high, signed)}]"


def _verdict_rows(verdicts: pd.DataFrame) -> list[dict]:
    return [
        {
            **row,
            "metric_label": analysis.METRIC_LABEL[row["metric"]],
            "interval": _interval(row["difference"], row["ci_low"], row["ci_high"], signed=True),
            "css": row["verdict"].split()[0],
        }
        for row in verdicts.to_dict("records")
    ]


def _paper_sections(table: pd.DataFrame) -> list[dict]:
    """Per split: size columns, then one row per condition with an EM and a ROUGE-L cell per size."""
    sections = []
    for split in [split for split in analysis.SPLITS if split in set(table.get("split", []))]:
        part = table[table["split"] == split]
        sizes = sorted(part.loc[part["kind"] == TRIAL, "size"].dropna().astype(int).unique())
        rows = []
        for (kind, condition), group in part.groupby(["kind", "condition"], sort=False):
            by_size = {("any" if pd.isna(size) else int(size)): cells for size, cells in group.groupby("size", dropna=False)}
            if "any" in by_size:
                cells = [{"colspan": max(len(sizes), 1), **_cell(by_size["any"])}]
            else:
                cells = [{"colspan": 1, **_cell(by_size.get(size))} for size in sizes]
            rows.append({"kind": kind, "condition": condition, "cells": cells})
        sections.append({"split": split, "sizes": sizes, "rows": rows})
    return sections


def _cell(rows: pd.DataFrame | None) -> dict:
    if rows is None or rows.empty:
        return {"em": "no finished runs", "rl": "", "detail": ""}
    metrics = rows.set_index("metric")
    em, rl = metrics.loc["exact_match"], metrics.loc["rougeL"]
    spread = f"seed sd {_number(em['seed_sd'])}" if not math.isnan(em["seed_sd"]) else "one seed"
    return {
        "em": _interval(em["mean"], em["ci_low"], em["ci_high"]),
        "rl": _interval(rl["mean"], rl["ci_low"], rl["ci_high"]),
        "detail": f"{int(em['n_tasks'])} tasks × {int(em['n_seeds'])} seeds, {spread}",
    }


def _table2_blocks(table: pd.DataFrame) -> list[dict]:
    """Per model (smallest first): its parameter count and rows zero-shot, original, simplified."""
    blocks = []
    for model, part in (table.groupby("model", sort=False) if not table.empty else []):
        rows = [{"row": row["row"] if part["row"].eq(row["row"]).sum() == 1 else f"{row['row']}: {row['condition']}",
                 "kind": BASELINE if row["row"] == "zero-shot" else TRIAL, "em": row["exact_match"], "rl": row["rougeL"],
                 "detail": f"{row['n_tasks']} tasks × {row['n_seeds']} seeds"}
                for row in part.to_dict("records")]  # fmt: skip
        count = part["parameters"].min()
        blocks.append({"model": model, "parameters": "" if pd.isna(count) else f"{int(count):,} parameters",
                       "size": int(part["size"].iloc[0]), "rows": rows})
    return blocks


def _category_rows(table: pd.DataFrame) -> list[dict]:
    """One row per (category, condition, size): the category's headline metric as mean [95% CI]."""
    return [
        {"category": row["category"], "metric": analysis.METRIC_LABEL[row["metric"]], "kind": row["kind"],
         "condition": row["condition"], "size": "any" if pd.isna(row["size"]) else int(row["size"]),
         "value": _interval(row["mean"], row["ci_low"], row["ci_high"]),
         "detail": f"{int(row['n_tasks'])} tasks × {int(row['n_seeds'])} seeds"}
        for row in table.to_dict("records")
    ]  # fmt: skip


def _format_sections(table: pd.DataFrame) -> dict:
    """The format table for the template: metric headers, overall rows, and rows per category."""
    if table.empty:
        return {}
    metrics = [metric for metric in learned.FORMAT_METRICS if metric in set(table["metric"])]
    sections = {}
    for level in ("overall", "category"):
        part = table[table["level"] == level].sort_values("group", kind="stable")  # categories one after another
        rows = []
        for (group, kind, condition, size), cells in part.groupby(["group", "kind", "condition", "size"], sort=False, dropna=False):
            by_metric = cells.set_index("metric")
            values = [_interval(*by_metric.loc[m, ["mean", "ci_low", "ci_high"]]) if m in by_metric.index else "not logged"
                      for m in metrics]  # fmt: skip
            first = cells.iloc[0]
            rows.append({"group": group, "kind": kind, "condition": condition, "size": "any" if pd.isna(size) else int(size),
                         "values": values, "detail": f"{int(first['n_tasks'])} tasks × {int(first['n_seeds'])} seeds"})  # fmt: skip
        sections[level] = rows
    missing = [learned.LABEL[metric] for metric in learned.FORMAT_METRICS if metric not in metrics]
    return {"headers": [learned.LABEL[metric] for metric in metrics], "missing": missing, **sections}


def _probe_rows(table: pd.DataFrame) -> list[dict]:
    return [
        {**row, "size": "any" if pd.isna(row["size"]) else int(row["size"]),
         "interval": _interval(row["difference"], row["ci_low"], row["ci_high"], signed=True)}
        for row in table.to_dict("records")
    ]  # fmt: skip


def _provenance(study: StudyRuns) -> list[tuple[str, str]]:
    sweep = study.sweep
    runs = study.runs
    commit = param(sweep, "params.env.git_commit")
    dirty = " (uncommitted changes)" if param(sweep, "params.env.git_dirty", "") == "true" else ""
    digests = sorted(set(runs["data_digest"]) - {""})
    versions = ", ".join(f"{name} {param(sweep, f'params.env.{name}', '?')}" for name in ("python", *VERSIONED_PACKAGES))
    return [
        ("MLflow store", study.tracking_uri),
        ("experiment", f"{study.experiment} (id {study.experiment_id})"),
        ("sweep run", f"{sweep['name']} ({sweep['run_id']}), status {sweep['status']}" if sweep is not None else "none"),
        ("config digest", param(sweep, "tags.itstudy.config_digest")),
        ("code version", f"git {commit}{dirty}"),
        ("versions", versions),
        ("model", param(sweep, "params.model.name")),
        ("data", f"source {param(sweep, 'params.data.source')}, split {param(sweep, 'params.data.split')}, "
                 f"test tasks: {param(sweep, 'params.data.test_task_kind')}"),
        ("data digests", f"{len(digests)} distinct (the training sample depends on size and seed): "
                         + ", ".join(digest[:12] for digest in digests[:12]) + (" ..." if len(digests) > 12 else "")),
        ("runs", f"{len(runs)} ({(runs['kind'] == TRIAL).sum()} trials, {(runs['kind'] == BASELINE).sum()} baselines): "
                 f"{(runs['status'] == FINISHED).sum()} finished, {len(study.failed)} not finished, "
                 f"{len(study.missing)} planned but never started"),
    ]
