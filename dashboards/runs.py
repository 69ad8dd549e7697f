"""Reads one study's sweep back from MLflow into the tidy tables the report computes from.

Everything comes through `itstudy.tracking`, the only module that talks to MLflow: the runs with
their tags, params and final metrics in one query, and a few small artifacts (one
`task_metrics.csv` per distinct test set, for the classification/generation split; the sweep's
`trials.yaml`, for trials that never started; `error.txt` of failed runs).

A run is placed by the tags the sweep writes: `itstudy.kind` trial or baseline,
`itstudy.variant`, `itstudy.instances_per_task`, `itstudy.seed`, `itstudy.baseline`. A trial's
condition is its variant plus any other grid axis of the sweep (read from the sweep's `grid.*`
params); a baseline's condition is its name (the untuned model per variant, as its prompts are, and
per model over a `model.name` axis). Each run's model (`itstudy.model`) and parameter count
(`run.model_parameters`, logged by training and untuned runs) are kept for the scale views.

Nothing here fails on a failed, missing or duplicated run: each becomes a note that the report
prints. `ReportError` is raised only when there is nothing to report on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from itstudy.config import ConfigError
from itstudy.tracking import (
    PER_TASK_PREFIX,
    download_artifact,
    experiment_id_of,
    list_artifacts,
    load_runs,
    run_dataset_digests,
)

TRIAL, BASELINE = "trial", "baseline"
FINISHED = "FINISHED"
# A standalone `itstudy train` run is a trial without a sweep.
_KIND_OF_TAG = {"trial": TRIAL, "train": TRIAL, "baseline": BASELINE}
# Axes every trial is already placed by (variant, data size, seed); other grid axes name conditions.
_PLACED_AXES = ("variant.", "data.instances_per_task", "seed")
_ERRORS_READ = 10
_AXIS_LABEL = {"model.name": "model"}
"""How a condition names an axis whose last component alone would not say what it is."""
SCORES = ("exact_match", "rougeL")
"""Per-task metrics every scored run has."""
PROBES = (
    "label_space_rate",
    "rank_exact_match",
    "pair_rule_accuracy",
    "pair_rule_chance",
    "negation_follow_rate",
    "negation_habit_rate",
)
"""Metrics only some runs have (newer runs, counterfactual pairs, negated variants), per task or per run; NaN elsewhere."""


class ReportError(ConfigError):
    """There is nothing to report on: no such experiment, or no runs in it."""


@dataclass
class StudyRuns:
    """One sweep of a study as the report sees it."""

    experiment: str
    experiment_id: str
    tracking_uri: str
    sweep: pd.Series | None
    """The sweep's parent run (None when the runs have no sweep, e.g. standalone `itstudy train`)."""
    runs: pd.DataFrame
    """The sweep's trial and baseline runs: run_id, name, status, kind, condition, variant, size, seed, model, parameters, ..."""
    scores: pd.DataFrame
    """One row per (finished run, test task): run columns + task, category, is_classification, SCORES, PROBES."""
    missing: list[str]
    """Trial keys the sweep planned that have no run at all."""
    overall: pd.DataFrame
    """One row per finished run: run columns + its overall PROBES (for probes logged per run only)."""
    other_sweeps: list[str]
    scratch: Path
    """Where artifacts are downloaded to be read (the caller's temporary folder)."""
    files: dict[str, str] = field(default_factory=dict)
    """The experiment file the sweep was launched from: name -> text (empty without one)."""
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != FINISHED]


def read_study(uri: str, experiment: str, scratch: Path, config_digest: str | None = None) -> StudyRuns:
    """The newest sweep of `experiment` (the one with `config_digest`, when given) and its runs.

    Artifacts are downloaded under `scratch`, which the caller removes.
    """
    experiment_id = experiment_id_of(uri, experiment)
    if experiment_id is None:
        raise ReportError(f"no MLflow experiment named {experiment!r} at {uri}; run the study first (itstudy run FILE)")
    every_run = load_runs(uri, experiment)
    if every_run.empty:
        raise ReportError(f"MLflow experiment {experiment!r} at {uri} has no runs; run the study first (itstudy run FILE)")
    study = StudyRuns(experiment, experiment_id, uri, None, pd.DataFrame(), pd.DataFrame(), [], pd.DataFrame(), [], scratch)
    study.sweep, study.other_sweeps = _choose_sweep(every_run, config_digest, study.notes)
    members = _members(every_run, study.sweep)
    if members.empty:
        raise ReportError(f"MLflow experiment {experiment!r} at {uri} has no trial or baseline runs yet")
    study.runs = _deduplicate(_describe(members, _other_axes(study.sweep)), study.notes)
    digests = run_dataset_digests(uri, experiment)
    study.runs["data_digest"] = [digests.get(run_id, "") for run_id in study.runs["run_id"]]
    study.scores = _scores(study, members.set_index("run_id"))
    study.overall = _overall(study.runs, members.set_index("run_id"))
    study.missing = _never_started(study)
    study.files = _experiment_files(study)
    _read_errors(study)
    return study


def _tag(frame: pd.DataFrame, name: str) -> pd.Series:
    column = f"tags.{name}"
    return frame[column] if column in frame else pd.Series(None, index=frame.index, dtype=object)


def _choose_sweep(runs: pd.DataFrame, digest: str | None, notes: list[str]) -> tuple[pd.Series | None, list[str]]:
    sweeps = runs[_tag(runs, "itstudy.kind") == "sweep"].sort_values("start_time", ascending=False)
    if sweeps.empty:
        notes.append("No sweep run in this experiment: every trial and baseline run is reported together.")
        return None, []
    chosen = sweeps.iloc[0]
    if digest is not None:
        matching = sweeps[_tag(sweeps, "itstudy.config_digest") == digest]
        if matching.empty:
            notes.append(f"No sweep of this exact experiment file (config digest {digest}); the newest sweep is reported.")
        else:
            chosen = matching.iloc[0]
    others = [name for name in sweeps["name"] if name != chosen["name"]]
    if others:
        notes.append(f"This experiment holds other sweeps, not reported here: {', '.join(others)}.")
    return chosen, others


def _members(runs: pd.DataFrame, sweep: pd.Series | None) -> pd.DataFrame:
    kinds = _tag(runs, "itstudy.kind").map(_KIND_OF_TAG)
    members = runs[kinds.notna()].assign(kind=kinds)
    if sweep is not None:
        members = members[members["parent_run_id"] == sweep["run_id"]]
    return members.reset_index(drop=True)


def _other_axes(sweep: pd.Series | None) -> list[str]:
    """Grid axes beyond variant, data size and seed: trials that differ in them are different conditions."""
    if sweep is None:
        return []
    axes = [key.removeprefix("params.grid.") for key in sweep.index if key.startswith("params.grid.") and pd.notna(sweep[key])]
    return [axis for axis in axes if not axis.startswith(_PLACED_AXES)]


def _describe(members: pd.DataFrame, other_axes: list[str]) -> pd.DataFrame:
    runs = members[["run_id", "name", "status", "kind", "start_time"]].copy()
    runs["variant"] = _tag(members, "itstudy.variant").fillna("")
    runs["definition"] = _tag(members, "itstudy.definition").fillna("")
    runs["examples"] = _tag(members, "itstudy.examples").fillna("")
    runs["baseline"] = _tag(members, "itstudy.baseline").fillna("")
    runs["size"] = pd.to_numeric(_tag(members, "itstudy.instances_per_task"), errors="coerce").astype("Int64")
    runs["seed"] = pd.to_numeric(_tag(members, "itstudy.seed"), errors="coerce").astype("Int64")
    runs["model"] = _tag(members, "itstudy.model").fillna("")
    runs["parameters"] = pd.to_numeric(members.get("params.run.model_parameters", pd.Series(pd.NA, index=members.index)), errors="coerce")
    runs["other"] = [_other_values(row, other_axes) for _, row in members.iterrows()]
    runs["condition"] = [_condition(row, "model.name" in other_axes) for _, row in runs.iterrows()]
    return runs


def _other_values(run: pd.Series, axes: list[str]) -> str:
    values = [f"{_AXIS_LABEL.get(axis, axis.rsplit('.', 1)[-1])}={run.get(f'params.{axis}')}" for axis in axes]
    return ", ".join(values)


def _condition(run: pd.Series, model_axis: bool) -> str:
    if run["kind"] == TRIAL:
        return f"{run['variant']} ({run['other']})" if run["other"] else run["variant"]
    if run["baseline"] == "untuned":  # over a model axis, each model's untuned run is its own condition
        return f"untuned ({run['variant']}, model={run['model']})" if model_axis else f"untuned ({run['variant']})"
    return run["baseline"] or run["name"]


def _deduplicate(runs: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    # Several runs for one cell come from searches or reruns: the newest finished one counts, and a
    # failure that a finished rerun replaced is no failure of the study.
    runs = runs.assign(finished=runs["status"] == FINISHED).sort_values(["finished", "start_time"], ascending=False)
    duplicated = runs.duplicated(["kind", "condition", "size", "seed"], keep="first")
    if duplicated.any():
        names = ", ".join(runs.loc[duplicated, "name"])
        notes.append(f"{duplicated.sum()} run(s) of a (condition, size, seed) that a newer or finished run covers are ignored: {names}.")
    kept = runs[~duplicated].drop(columns="finished")
    return kept.sort_values(["kind", "condition", "size", "seed"], ascending=[False, True, True, True]).reset_index(drop=True)


def _scores(study: StudyRuns, members: pd.DataFrame) -> pd.DataFrame:
    """Per-task SCORES and PROBES of every finished run, read from its `per_task/<metric>_for_<task>` metrics.

    Categories are logged under the same `_for_` prefix, so the task list comes from the run's
    task_metrics.csv; it is read once per distinct set of metric names (usually once per study).
    A pair's chance level logged once per run (`pair_rule_chance`) stands for each of its pairs.
    """
    frames = []
    tasks_by_metrics: dict[frozenset[str], pd.DataFrame] = {}
    for _, run in study.runs[study.runs["status"] == FINISHED].iterrows():
        metrics = members.loc[run["run_id"]]
        names = frozenset(key for key in metrics.index if key.startswith("metrics.") and pd.notna(metrics[key]))
        if names not in tasks_by_metrics:
            tasks_by_metrics[names] = _task_table(study, run)
        tasks = tasks_by_metrics[names]
        if tasks.empty:
            study.notes.append(f"Run {run['name']} has no readable task_metrics.csv: its per-task results are left out.")
            continue
        frame = tasks.assign(**run.to_dict())
        for metric in (*SCORES, *PROBES):
            names = [f"metrics.{PER_TASK_PREFIX}{metric}_for_{task}" for task in tasks["task"]]
            frame[metric] = pd.to_numeric([metrics.get(name) for name in names])
        if frame["pair_rule_chance"].isna().all():
            chance = float(metrics.get("metrics.pair_rule_chance", float("nan")))
            frame["pair_rule_chance"] = frame["pair_rule_accuracy"].where(frame["pair_rule_accuracy"].isna(), chance)
        frames.append(frame.dropna(subset=list(SCORES), how="all"))
    columns = ["task", "category", "is_classification", *study.runs.columns, *SCORES, *PROBES]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _overall(runs: pd.DataFrame, members: pd.DataFrame) -> pd.DataFrame:
    """Each finished run's overall PROBES (NaN where not logged), beside its run columns."""
    finished = runs[runs["status"] == FINISHED].reset_index(drop=True)
    for metric in PROBES:
        column = f"metrics.{metric}"
        finished[metric] = pd.to_numeric(members[column].reindex(finished["run_id"]).to_numpy()) if column in members else float("nan")
    return finished


def _task_table(study: StudyRuns, run: pd.Series) -> pd.DataFrame:
    """task, category, is_classification of the tasks in a run's pooled figures (Tk-Instruct drops task1415)."""
    path = _artifact(study, run["run_id"], "task_metrics.csv")
    if path is None:
        return pd.DataFrame()
    table = pd.read_csv(path, dtype={"task": str, "category": str})
    if "in_pooled" in table:
        dropped = table.loc[~table["in_pooled"].astype(bool), "task"].tolist()
        note = f"Left out of every figure, as Tk-Instruct does: {', '.join(dropped)}."
        if dropped and note not in study.notes:
            study.notes.append(note)
        table = table[table["in_pooled"].astype(bool)]
    table["is_classification"] = table["is_classification"].astype(str).str.lower() == "true"
    return table[["task", "category", "is_classification"]].reset_index(drop=True)


def _artifact(study: StudyRuns, run_id: str, path: str) -> Path | None:
    """A local copy of one small artifact of a run, or None when the run has none."""
    try:
        return download_artifact(study.tracking_uri, run_id, path, study.scratch / run_id)
    except Exception:  # absent or unreadable artifacts are reported by the caller, whatever the store says
        return None


def _never_started(study: StudyRuns) -> list[str]:
    """Keys in the sweep's trials.yaml without any run: the sweep planned them, nothing ran."""
    if study.sweep is None:
        return []
    if pd.notna(study.sweep.get("params.search.num_samples")):
        study.notes.append("The sweep used a search: runs are not checked against the planned grid.")
        return []
    path = _artifact(study, study.sweep["run_id"], "trials.yaml")
    if path is None:
        study.notes.append("The sweep run has no trials.yaml: runs that never started cannot be listed.")
        return []
    planned = [entry["key"] for entry in yaml.safe_load(path.read_text()) or []]
    started = set(_tag(study.runs, "itstudy.trial_key"))  # run names are for reading; keys identify
    return [key for key in planned if key not in started]


def _read_errors(study: StudyRuns) -> None:
    """The last line of error.txt of the first failed runs, for the report's failure list."""
    study.runs["error"] = ""
    for index in study.failed.index[:_ERRORS_READ]:
        path = _artifact(study, study.runs.at[index, "run_id"], "error.txt")
        lines = path.read_text(errors="replace").strip().splitlines() if path else []
        study.runs.at[index, "error"] = lines[-1] if lines else "(no error.txt)"


def _experiment_files(study: StudyRuns) -> dict[str, str]:
    if study.sweep is None:
        return {}
    files = {}
    for path in list_artifacts(study.tracking_uri, study.sweep["run_id"], "experiment"):
        local = _artifact(study, study.sweep["run_id"], path)
        if local is not None and local.is_file():
            files[Path(path).name] = local.read_text(errors="replace")
    return files


def param(run: pd.Series | None, key: str, default: str = "not recorded") -> str:
    """A run's param or tag (`params.x` / `tags.x`) as text, or `default`."""
    if run is None:
        return default
    value = run.get(key)
    return default if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
