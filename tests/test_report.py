"""The study report: its statistics on hand-made scores, its tables against the runs they come from.

Three kinds of study are reported on:
- a fixture study written through the tracking layer with known per-task metrics (what a sweep
  logs: parent run, trial and baseline children, task_metrics.csv, a failed run, a planned run
  that never started), so every number in the report can be checked against its source;
- a 100-run fixture study with SuperNI's 119 test tasks, for the 30-second build budget;
- a small real study run by the sweep (`run_sweep`, Ray Tune, tiny T5), shared with the browser
  test through `real_study`.
"""

from __future__ import annotations

import base64
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dashboards.report import build_report
from dashboards.runs import ReportError
from itstudy.stats import DEFAULT_MARGIN, estimate, paired_difference, verdict
from itstudy.config import ConfigError
from itstudy.tracking import RunLogger, create_run, download_artifact, ensure_experiment, list_artifacts, load_runs

# --- statistics on hand-made scores ----------------------------------------------------------------


def _scores(shift: float = 0.0, tasks: int = 30, seeds: int = 3, noise: float = 5.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    task_level = rng.uniform(20, 80, size=(tasks, 1))
    return task_level + rng.normal(0, noise, size=(tasks, seeds)) + shift


def test_estimate_mean_seed_spread_and_interval_on_a_known_matrix():
    # Seed means 40, 50, 60: mean 50, sd 10; every task equal, so only seeds vary.
    scores = np.tile([40.0, 50.0, 60.0], (4, 1))
    result = estimate(scores)
    assert result.mean == pytest.approx(50.0)
    assert result.seed_sd == pytest.approx(10.0)
    assert (result.n_tasks, result.n_seeds) == (4, 3)
    # Resampling three seeds can give any mean between the smallest and the largest seed.
    assert 40.0 <= result.ci_low < 50.0 < result.ci_high <= 60.0
    assert result.text() == f"50.0 [{result.ci_low:.1f}, {result.ci_high:.1f}]"


def test_missing_cells_are_left_out_not_counted_as_zero():
    scores = np.array([[50.0, 70.0], [np.nan, 90.0], [np.nan, np.nan]])
    result = estimate(scores)
    assert result.mean == pytest.approx(70.0)
    assert (result.n_tasks, result.n_seeds) == (2, 2)
    assert math.isnan(estimate(np.full((2, 2), np.nan)).mean)


def test_same_scores_give_the_same_interval():
    assert estimate(_scores()) == estimate(_scores())


def test_identical_variants_are_equivalent_with_a_zero_difference():
    diff = paired_difference(_scores(), _scores())
    assert diff.mean == 0.0 and diff.ci_low <= 0.0 <= diff.ci_high
    assert verdict(diff) == f"equivalent within ±{DEFAULT_MARGIN:g} EM"


def test_a_ten_point_shift_is_detected_in_both_directions():
    base = _scores(seed=1)
    shifted = base + 10 + np.random.default_rng(7).normal(0, 3, size=base.shape)
    up = paired_difference(shifted, base)
    assert up.mean == pytest.approx(10, abs=1.5)
    assert up.ci_low > DEFAULT_MARGIN
    assert verdict(up) == "better"
    assert verdict(paired_difference(base, shifted)) == "worse"


def test_pairing_removes_task_difficulty_from_the_interval():
    # Tasks differ by up to 60 points; a paired 1-point shift must still give a narrow interval.
    base = _scores(noise=0.5)
    diff = paired_difference(base + 1.0, base)
    assert diff.ci_high - diff.ci_low < 0.5
    assert verdict(diff) == "equivalent within ±2 EM"
    assert estimate(base).ci_high - estimate(base).ci_low > 5


def test_a_noisy_small_difference_is_inconclusive():
    base = _scores(tasks=6, seeds=2, seed=3)
    other = base + np.random.default_rng(5).normal(0, 15, size=base.shape)
    assert verdict(paired_difference(other, base)) == "inconclusive"


def test_verdict_needs_paired_cells():
    empty = paired_difference(np.full((2, 2), np.nan), np.zeros((2, 2)))
    assert verdict(empty) == "no paired runs"
    with pytest.raises(ValueError, match="pair by task and seed"):
        paired_difference(np.zeros((2, 2)), np.zeros((3, 2)))


# --- a fixture study written through the tracking layer -----------------------------------------------
# Test fixture, not results: known per-task numbers logged the way a sweep logs them, so that the
# report's tables can be checked against their source.

CATEGORIES = ("textual_entailment", "answerability_classification", "title_generation")


@dataclass(frozen=True)
class FixtureTask:
    name: str
    category: str
    is_classification: bool
    pooled: bool = True


def fixture_tasks(classification: int, generation: int) -> list[FixtureTask]:
    tasks = [FixtureTask(f"task{100 + i:03d}_fixture_cls", CATEGORIES[i % 2], True) for i in range(classification)]
    tasks += [FixtureTask(f"task{300 + i:03d}_fixture_gen", CATEGORIES[2], False) for i in range(generation)]
    # Tk-Instruct leaves task1415 out of every pooled figure; the report must too.
    return tasks + [FixtureTask("task1415_youtube_caption_corrections", "grammar_error_correction", False, pooled=False)]


@dataclass
class FixtureStudy:
    uri: str
    experiment: str
    parent_run_id: str
    values: dict
    """(kind, condition, size or None, seed) -> {task: (exact_match, rougeL)}; what was logged."""
    tasks: list[FixtureTask]
    probes: dict = field(default_factory=dict)
    """(kind, condition, size or None, seed) -> {metric: {task: value}}; the probe metrics logged."""


# Variant -> (definition, examples, shift of its score in points): simplified is as good as the
# original, delusive examples cost 10 points.
VARIANTS = {
    "def-original+ex-original": ("original", "original", 0.0),
    "def-simplified+ex-original": ("simplified", "original", 0.0),
    "def-original+ex-delusive": ("original", "delusive", -10.0),
}


def _trial_values(tasks, variant_shift, size, seed, rng) -> dict:
    values = {}
    for index, task in enumerate(tasks):
        level = 40 + 30 * ((index * 37) % 11) / 10  # task difficulty, fixed per task
        score = level + 4 * math.log2(size / 10) + variant_shift + rng.normal(0, 1.0)
        if task.is_classification:
            values[task.name] = (float(np.clip(score, 0, 100)), float(np.clip(score + 1, 0, 100)))
        else:
            values[task.name] = (float(np.clip(score / 10, 0, 100)), float(np.clip(score - 10, 0, 100)))
    return values


def _baseline_values(tasks, name, seed, rng) -> dict:
    # Model-free baselines guess labels: classification tasks only, as the real ones.
    level = {"random": 50.0, "majority": 45.0}[name]
    return {t.name: (level + rng.normal(0, 4), level + 1.0) for t in tasks if t.is_classification}


def _task_metrics_csv(tasks: list[FixtureTask], values: dict) -> str:
    rows = [
        {"task": t.name, "category": t.category, "is_classification": t.is_classification, "n": 100,
         "exact_match": values[t.name][0], "rougeL": values[t.name][1], "in_pooled": t.pooled}
        for t in tasks if t.name in values
    ]  # fmt: skip
    return pd.DataFrame(rows).to_csv(index=False)


# A study with the probe metrics, logged as `itstudy.metrics` logs them: tuned models answer in the
# label space about 95% of the time, rank EM 3 points above EM, rule accuracy on pairs (per pair,
# under its first task) near the 50% chance level (per run only); a negated variant follows its
# habit (negation rates per run only); model-free baselines always answer a label.
PROBE_VARIANTS = {**{name: VARIANTS[name] for name in list(VARIANTS)[:2]}, "def-negated+ex-original": ("negated", "original", 0.0)}
PAIRED_TASKS = 4
"""The first classification tasks have a counterfactual partner."""


def _probe_values(tasks, values, kind, definition, rng) -> dict[str, dict[str, float]]:
    classification = [t.name for t in tasks if t.is_classification and t.name in values]
    pairs = {"pair_rule_accuracy": {task: float(50 + rng.normal(0, 3)) for task in classification[:PAIRED_TASKS]}}
    if kind == "baseline":
        return {"label_space_rate": {task: 100.0 for task in classification}, **pairs}
    probes = {**pairs, "label_space_rate": {task: float(rng.uniform(90, 100)) for task in classification},
              "rank_exact_match": {task: values[task][0] + 3.0 for task in classification}}
    if definition == "negated":
        probes["negation_follow_rate"] = {task: float(20 + rng.normal(0, 2)) for task in classification}
        probes["negation_habit_rate"] = {task: float(75 + rng.normal(0, 2)) for task in classification}
    return probes  # fmt: skip


def _probe_metrics(probes: dict[str, dict[str, float]]) -> dict[str, float]:
    """Overall and per task `<metric>_for_<task>`, as runs log them; the chance level and negation rates only overall."""
    metrics = {f"{metric}_for_{task}": value for metric, per_task in probes.items() for task, value in per_task.items()
               if not metric.startswith("negation_")}  # fmt: skip
    metrics.update({metric: float(np.mean(list(per_task.values()))) for metric, per_task in probes.items()})
    if "pair_rule_accuracy" in probes:
        metrics["pair_rule_chance"] = 50.0
    return metrics


def _log_child(uri, experiment_id, parent_id, name, tags, tasks, values, status="FINISHED", probes=None, params=None) -> None:
    run_id = create_run(uri, experiment_id, name, {**tags, "itstudy.trial_key": name}, parent_run_id=parent_id)
    logger = RunLogger(uri, run_id)
    logger.log_params(params or {})
    if status == "FINISHED":
        metrics = {f"{metric}_for_{task}": pair[i] for task, pair in values.items() for i, metric in enumerate(("exact_match", "rougeL"))}
        pooled = [pair for task, pair in values.items() if not task.startswith("task1415")]
        metrics["exact_match"] = float(np.mean([pair[0] for pair in pooled]))
        for category in CATEGORIES:  # logged under the same `_for_` prefix as tasks, as metrics.aggregate does
            metrics[f"exact_match_for_{category}"] = 12.345
        metrics.update(_probe_metrics(probes or {}))
        logger.log_metrics(metrics, step=5)
        logger.log_text(_task_metrics_csv(tasks, values), "task_metrics.csv")
        logger.log_dataset(f"digest-{name}", "fixture", name="fixture", n_instances=100)
    else:
        logger.log_error("Traceback (most recent call last):\nRuntimeError: fixture trial ran out of memory\n")
    logger.end(status)


def write_fixture_study(
    uri: str,
    experiment: str,
    variants: dict = VARIANTS,
    sizes=(10, 40),
    seeds=(1, 2, 3),
    classification: int = 8,
    generation: int = 4,
    failed: str | None = None,
    never_started: str | None = None,
    probes: bool = False,
) -> FixtureStudy:
    """A sweep's parent run with trial and baseline children; returns what was logged (`probes`: with the probe metrics)."""
    tasks = fixture_tasks(classification, generation)
    experiment_id = ensure_experiment(uri, experiment)
    parent_id = create_run(uri, experiment_id, f"{experiment}-sweep", {"itstudy.kind": "sweep", "itstudy.study": experiment,
                                                                        "itstudy.config_digest": "fixture000"})
    parent = RunLogger(uri, parent_id)
    parent.log_params({"description": "fixture study", "model": {"name": "scratch/t5-tiny"}, "data": {"source": "fixture"},
                       "env": {"git_commit": "0123abcd", "git_dirty": "false"},
                       "grid": {"variant.definition": ["original", "simplified"], "seed": list(seeds)}})
    parent.log_text("name: fixture\n", "experiment/fixture.yaml")
    planned, values, logged_probes = [], {}, {}
    rng, probe_rng = np.random.default_rng(0), np.random.default_rng(1)
    for variant, (definition, examples, shift) in variants.items():
        for size in sizes:
            for seed in seeds:
                key = f"{variant}_n{size}_s{seed}_fixture"
                planned.append({"key": key, "kind": "trial"})
                tags = {"itstudy.kind": "trial", "itstudy.variant": variant, "itstudy.definition": definition,
                        "itstudy.examples": examples, "itstudy.instances_per_task": size, "itstudy.seed": seed}
                status = "FAILED" if key == failed else "FINISHED"
                logged = _trial_values(tasks, shift, size, seed, rng)
                extra = _probe_values(tasks, logged, "trial", definition, probe_rng) if probes else {}
                _log_child(uri, experiment_id, parent_id, key, tags, tasks, logged, status, extra)
                if status == "FINISHED":
                    values[("trial", variant, size, seed)] = logged
                    logged_probes[("trial", variant, size, seed)] = extra
    for name in ("random", "majority"):
        for seed in seeds:
            logged = _baseline_values(tasks, name, seed, rng)
            tags = {"itstudy.kind": "baseline", "itstudy.baseline": name, "itstudy.seed": seed}
            extra = _probe_values(tasks, logged, "baseline", "", probe_rng) if probes else {}
            _log_child(uri, experiment_id, parent_id, f"baseline-{name}-s{seed}", tags, tasks, logged, probes=extra)
            values[("baseline", name, None, seed)] = logged
            logged_probes[("baseline", name, None, seed)] = extra
    if never_started:
        planned.append({"key": never_started, "kind": "trial"})
    parent.log_dict_yaml(planned, "trials.yaml")
    parent.end("FAILED" if failed else "FINISHED")
    return FixtureStudy(uri, experiment, parent_id, values, tasks, logged_probes)


def expected_mean(study: FixtureStudy, kind, condition, size, split, metric) -> tuple[float, int, int]:
    """(mean, tasks, seeds) recomputed from the logged values: pooled tasks of the split, every seed."""
    index = 0 if metric == "exact_match" else 1
    wanted = {t.name for t in study.tasks if t.pooled and (split == "all" or t.is_classification == (split == "classification"))}
    cells = [
        (task, seed, pair[index])
        for (k, c, s, seed), values in study.values.items()
        if k == kind and c == condition and s == size
        for task, pair in values.items()
        if task in wanted
    ]
    return (
        float(np.mean([value for _, _, value in cells])) if cells else math.nan,
        len({task for task, _, _ in cells}),
        len({seed for _, seed, _ in cells}),
    )


@pytest.fixture(scope="module")
def fixture_study(tmp_path_factory) -> FixtureStudy:
    folder = tmp_path_factory.mktemp("fixture-store")
    return write_fixture_study(
        f"sqlite:///{folder / 'mlflow.db'}",
        "fixture",
        failed="def-original+ex-delusive_n40_s3_fixture",
        never_started="def-original+ex-delusive_n80_s1_fixture",
    )


@pytest.fixture(scope="module")
def fixture_report(fixture_study, tmp_path_factory) -> Path:
    return build_report("fixture", tracking_uri=fixture_study.uri, out_dir=tmp_path_factory.mktemp("report"))


def test_paper_table_equals_the_logged_per_task_metrics(fixture_study, fixture_report):
    table = pd.read_csv(fixture_report.parent / "paper_table.csv")
    assert set(table["split"]) == {"all", "classification", "generation"}
    assert set(table["condition"]) == set(VARIANTS) | {"random", "majority"}
    for row in table.itertuples():
        size = None if pd.isna(row.size) else int(row.size)
        mean, tasks, seeds = expected_mean(fixture_study, row.kind, row.condition, size, row.split, row.metric)
        if math.isnan(mean):  # baselines have no generation tasks: the row says so with NaN, not 0
            assert math.isnan(row.mean) and row.n_tasks == 0, row
            continue
        assert row.mean == pytest.approx(mean, abs=1e-9), row
        assert (row.n_tasks, row.n_seeds) == (tasks, seeds), row
        assert row.ci_low <= row.mean <= row.ci_high, row
    # The failed run is left out: two seeds remain in its cell.
    delusive = table[(table["condition"] == "def-original+ex-delusive") & (table["size"] == 40)]
    assert set(delusive["n_seeds"]) == {2}


def test_verdicts_answer_the_question_of_the_fixture(fixture_report):
    verdicts = pd.read_csv(fixture_report.parent / "verdicts.csv")
    variants = verdicts[verdicts["question"] == "variant vs reference"]
    assert set(variants["reference"]) == {"def-original+ex-original"}
    classification = variants[variants["split"] == "classification"].set_index(["candidate", "size"])
    for size in (10, 40):
        simplified = classification.loc[("def-simplified+ex-original", size)]
        assert simplified["verdict"] == "equivalent within ±2 EM", simplified
        assert simplified["ci_low"] <= 0 <= simplified["ci_high"]
        delusive = classification.loc[("def-original+ex-delusive", size)]
        assert delusive["verdict"] == "worse" and delusive["difference"] == pytest.approx(-10, abs=1.5)
    generation = variants[variants["split"] == "generation"]
    assert set(generation["metric"]) == {"rougeL"}
    versus_random = verdicts[(verdicts["question"] == "best tuned vs baseline") & (verdicts["reference"] == "random")]
    assert list(versus_random["split"].unique()) == ["classification"]
    # About 4 points above random at 10 instances per task is within task and seed noise; 12 at 40 is not.
    assert dict(zip(versus_random["size"], versus_random["verdict"])) == {10: "inconclusive", 40: "better"}


def test_report_is_self_contained_and_logged_on_the_sweep_run(fixture_study, fixture_report):
    html = fixture_report.read_text()
    images = re.findall(r'<img class="figure"[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4
    for encoded in images:
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    assert not re.search(r'src="(?!data:)', html), "every image is embedded"
    folder = fixture_report.parent
    for name in ("data_size_curve.png", "task_differences.png", "verdicts.png", "format_metrics.png", "paper_table.csv", "verdicts.csv",
                 "task_differences.csv", "runs.csv"):  # fmt: skip
        assert (folder / name).stat().st_size > 0, name
    logged = list_artifacts(fixture_study.uri, fixture_study.parent_run_id, "report")
    assert "report/report.html" in logged and "report/data_size_curve.png" in logged


def test_report_says_what_failed_what_never_ran_and_what_was_left_out(fixture_report):
    html = fixture_report.read_text()
    assert "def-original+ex-delusive_n40_s3_fixture</code>: FAILED: RuntimeError: fixture trial ran out of memory" in html
    assert "def-original+ex-delusive_n80_s1_fixture" in html
    assert "Incomplete study" in html
    assert "task1415_youtube_caption_corrections" in html  # named in the notes, not in any table
    differences = pd.read_csv(fixture_report.parent / "task_differences.csv", index_col="task")
    assert "task1415_youtube_caption_corrections" not in differences.index
    assert "git 0123abcd" in html and "scratch/t5-tiny" in html and "fixture.yaml" in html
    runs = pd.read_csv(fixture_report.parent / "runs.csv")
    assert (runs["status"] == "FAILED").sum() == 1
    assert runs.loc[runs["status"] == "FINISHED", "data_digest"].str.startswith("digest-").all()


def test_task_differences_are_sorted_and_match_the_logged_values(fixture_study, fixture_report):
    differences = pd.read_csv(fixture_report.parent / "task_differences.csv", index_col="task")
    column = "def-original+ex-delusive @ n=10"
    means = differences.drop(columns="metric").mean(axis=1)
    assert list(means) == sorted(means)
    task = next(t for t in fixture_study.tasks if t.is_classification)
    expected = np.mean([
        fixture_study.values[("trial", "def-original+ex-delusive", 10, seed)][task.name][0]
        - fixture_study.values[("trial", "def-original+ex-original", 10, seed)][task.name][0]
        for seed in (1, 2, 3)
    ])  # fmt: skip
    assert differences.loc[task.name, column] == pytest.approx(expected)
    assert differences.loc[task.name, "metric"] == "EM"


# --- what was learned: the format metrics, the probes, the finding -------------------------------------


@pytest.fixture(scope="module")
def probe_study(tmp_path_factory) -> FixtureStudy:
    folder = tmp_path_factory.mktemp("probe-store")
    return write_fixture_study(f"sqlite:///{folder / 'mlflow.db'}", "probes", PROBE_VARIANTS, seeds=(1, 2),
                               classification=6, generation=2, probes=True)  # fmt: skip


@pytest.fixture(scope="module")
def probe_report(probe_study, tmp_path_factory) -> Path:
    return build_report("probes", tracking_uri=probe_study.uri, out_dir=tmp_path_factory.mktemp("probe-report"))


def _logged(study: FixtureStudy, key: tuple, metric: str) -> dict[str, float]:
    """task -> value of one metric of one run, as the fixture logged it (classification tasks only)."""
    classification = {t.name for t in study.tasks if t.is_classification}
    values = {task: pair[0] for task, pair in study.values[key].items()} if metric == "exact_match" else study.probes[key].get(metric, {})
    return {task: value for task, value in values.items() if task in classification}


def _finding(html: str) -> str:
    return re.search(r'<p id="finding"><strong>(.*?)</strong></p>', html).group(1)


def test_format_table_equals_the_logged_per_task_metrics(probe_study, probe_report):
    table = pd.read_csv(probe_report.parent / "format_table.csv")
    assert set(table["metric"]) == {"exact_match", "rank_exact_match", "label_space_rate"}
    assert set(table["level"]) == {"overall", "category", "task"}
    category = {t.name: t.category for t in probe_study.tasks}
    for row in table.itertuples():
        size = None if pd.isna(row.size) else int(row.size)
        cells = [(task, key[3], value) for key in probe_study.values if key[:3] == (row.kind, row.condition, size)
                 for task, value in _logged(probe_study, key, row.metric).items()
                 if row.level == "overall" or row.group in (task, category[task])]  # fmt: skip
        assert row.mean == pytest.approx(np.mean([value for *_, value in cells])), row
        assert (row.n_tasks, row.n_seeds) == (len({c[0] for c in cells}), len({c[1] for c in cells})), row
    # Model-free baselines log no rank EM: no row for it, rather than a zero; the HTML says so.
    assert table[(table["kind"] == "baseline") & (table["metric"] == "rank_exact_match")].empty
    html = probe_report.read_text()
    format_html = html[html.index('id="format-table"'):html.index("per category")]
    assert "<th>EM</th><th>rank EM</th><th>in label space (%)</th>" in format_html and "not logged" in format_html


def test_pair_and_negation_probes_equal_the_logged_values(probe_study, probe_report):
    pairs = pd.read_csv(probe_report.parent / "pair_probe.csv")
    assert set(pairs["condition"]) == {*PROBE_VARIANTS, "random", "majority"}
    for row in pairs.itertuples():
        size = None if pd.isna(row.size) else int(row.size)
        keys = [key for key in probe_study.probes if key[:3] == (row.kind, row.condition, size)]
        accuracy = np.mean([v for key in keys for v in _logged(probe_study, key, "pair_rule_accuracy").values()])
        assert row.difference == pytest.approx(accuracy - 50.0)
        assert row.pair_rule_accuracy.startswith(f"{accuracy:.1f} [")
        assert row.pair_rule_chance == "50.0 [50.0, 50.0]"  # logged once per run, it stands for each pair
        assert (row.n_tasks, row.n_seeds) == (PAIRED_TASKS, 2)
    # Negation rates are logged per run: each run's figure is one cell, the interval is over seeds.
    negation = pd.read_csv(probe_report.parent / "negation_probe.csv")
    assert set(negation["condition"]) == {"def-negated+ex-original"} and set(negation["size"]) == {10, 40}
    for row in negation.itertuples():
        key = [key for key in probe_study.probes if key[:3] == ("trial", row.condition, row.size)]
        follow = np.mean([v for k in key for v in _logged(probe_study, k, "negation_follow_rate").values()])
        habit = np.mean([v for k in key for v in _logged(probe_study, k, "negation_habit_rate").values()])
        assert row.difference == pytest.approx(follow - habit)
        assert (row.n_tasks, row.n_seeds) == (1, 2)
    assert set(negation["verdict"]) == {"follows the habit"}
    html = probe_report.read_text()
    assert 'id="pair-table"' in html and 'id="negation-table"' in html


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height in pixels, from the PNG header (IHDR)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_format_figure_has_a_panel_per_logged_metric_and_a_row_per_condition(probe_report):
    from dashboards import figures

    html = probe_report.read_text()
    embedded = re.search(r'id="fig-format"[^>]*src="data:image/png;base64,([^"]+)"', html).group(1)
    table = pd.read_csv(probe_report.parent / "format_table.csv")
    width, height = _png_size(figures.format_plot(table))
    assert _png_size(base64.b64decode(embedded)) == (width, height)
    # Without rank EM one panel fewer (narrower, as tall); without the baselines fewer rows (shorter).
    narrower, as_tall = _png_size(figures.format_plot(table[table["metric"] != "rank_exact_match"]))
    assert narrower < width - 200 and abs(as_tall - height) <= 10
    as_wide, shorter = _png_size(figures.format_plot(table[table["kind"] == "trial"]))
    assert shorter < height - 40 and abs(as_wide - width) <= 40


def test_finding_states_the_logged_numbers_and_changes_with_them(probe_study, probe_report):
    from dashboards import analysis, learned
    from dashboards.runs import read_study

    sentence = _finding(probe_report.read_text())
    # The fixed rule: every condition but the negated one, at the largest size (40), every seed.
    tuned = [key for key in probe_study.values if key[0] == "trial" and key[2] == 40 and "negated" not in key[1]]
    random = [key for key in probe_study.values if key[:2] == ("baseline", "random")]
    pooled = {metric: np.mean([v for key in tuned for v in _logged(probe_study, key, metric).values()])
              for metric in ("label_space_rate", "exact_match", "pair_rule_accuracy")}  # fmt: skip
    random_em = np.mean([v for key in random for v in _logged(probe_study, key, "exact_match").values()])
    assert sentence.startswith(f"Tuned models answer inside the label space {pooled['label_space_rate']:.1f}% [")
    assert f"score {pooled['exact_match']:.1f} [" in sentence and f"against {random_em:.1f} [" in sentence
    assert f"follow the definition on counterfactual pairs {pooled['pair_rule_accuracy']:.1f}% [" in sentence
    assert "of the time against 50.0% by chance (difference " in sentence
    assert "at n = 40 per task" in probe_report.read_text()
    with tempfile.TemporaryDirectory() as scratch:
        study = read_study(probe_study.uri, "probes", Path(scratch))
    scores, overall = analysis.place_sizes(study.scores), analysis.place_sizes(study.overall)
    assert learned.finding(scores, overall).sentence == sentence
    shifted = learned.finding(scores.assign(label_space_rate=scores["label_space_rate"] - 10), overall).sentence
    assert f"label space {pooled['label_space_rate'] - 10:.1f}% [" in shifted and shifted != sentence
    # The untuned model, when the study has it, is stated after the tuned ones, pooled over its prompts.
    untuned = scores[scores["condition"] == "random"].assign(condition="untuned (def-original+ex-original)",
                                                             exact_match=0.0, label_space_rate=20.0)  # fmt: skip
    stated = learned.finding(pd.concat([scores, untuned]), overall)
    assert stated.sentence.endswith("The untuned model scores 0.0 [0.0, 0.0] EM and answers inside the label space 20.0% of the time.")
    assert stated.pools[-1] == "Untuned: untuned (def-original+ex-original), pooled the same way."


def test_without_probe_metrics_the_sections_say_so_and_nothing_is_empty(fixture_report):
    html = fixture_report.read_text()
    sentence = _finding(html)
    assert sentence.startswith("Tuned models score ") and "the study has no counterfactual pairs" in sentence
    assert "No run logged <code>pair_rule_accuracy</code>" in html and "No run with a negated definition" in html
    assert 'id="pair-table"' not in html and 'id="negation-table"' not in html
    assert "Logged by no run of this study (runs older than these metrics): rank EM, in label space (%)." in html
    table = pd.read_csv(fixture_report.parent / "format_table.csv")
    assert set(table["metric"]) == {"exact_match"} and not table.empty
    assert not (fixture_report.parent / "pair_probe.csv").exists()


def test_an_experiment_without_finished_runs_still_gets_a_report(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = ensure_experiment(uri, "all-failed")
    parent = create_run(uri, experiment_id, "sweep", {"itstudy.kind": "sweep"})
    tags = {"itstudy.kind": "trial", "itstudy.variant": "def-original+ex-original", "itstudy.seed": 1}
    _log_child(uri, experiment_id, parent, "only-trial", tags, [], {}, status="FAILED")
    path = build_report("all-failed", tracking_uri=uri, out_dir=tmp_path / "out")
    html = path.read_text()
    assert "No comparison can be made yet" in html and "only-trial" in html


def test_unknown_experiment_and_bad_file_are_refused_in_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ReportError, match=r"no MLflow experiment named 'nope' at sqlite:///") as caught:
        build_report("nope", tracking_uri=uri)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="missing.yaml: no such experiment file"):
        build_report(str(tmp_path / "missing.yaml"))


def test_a_100_run_study_with_superni_sized_test_set_builds_a_full_report(tmp_path, capsys):
    # Also the report benchmark: its printed build time is what docs/performance.md records (the
    # goal, under 30 s for 100 runs, is tracked there rather than asserted, so load cannot flake CI).
    # 4 variants x 4 sizes x 6 seeds = 96 trials + 2 baselines x 6 seeds = 12, with 119 test tasks.
    variants = {f"def-{d}+ex-{e}": (d, e, 0.0) for d in ("original", "simplified") for e in ("original", "delusive")}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = write_fixture_study(uri, "bench", variants, sizes=(10, 50, 200, 800), seeds=(1, 2, 3, 4, 5, 6),
                                classification=80, generation=39)  # fmt: skip
    runs = load_runs(uri, "bench")
    assert (runs["tags.itstudy.kind"] != "sweep").sum() == 108
    started = time.perf_counter()
    path = build_report("bench", tracking_uri=uri, out_dir=tmp_path / "report")
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nreport of {len(runs)} runs x {len(study.tasks)} test tasks built in {elapsed:.1f} s: {path}")
    table = pd.read_csv(path.parent / "paper_table.csv")
    assert len(table) > 0


def test_study_store_reads_the_experiment_file_or_takes_a_study_name(tmp_path, isolated_home):
    from itstudy.config import config_digest, load_study
    from itstudy.tracking import study_store
    from itstudy.ui import server_command

    experiment_file = tmp_path / "mine.yaml"
    experiment_file.write_text(f"name: mine\ntracking: {{experiment: mine-exp, tracking_uri: 'sqlite:///{tmp_path}/x.db'}}\n")
    store = study_store(str(experiment_file))
    assert (store.tracking_uri, store.experiment) == (f"sqlite:///{tmp_path}/x.db", "mine-exp")
    assert store.config_digest == config_digest(load_study(experiment_file))
    by_name = study_store("mine")
    assert by_name.tracking_uri == f"sqlite:///{isolated_home}/mlflow.db" and by_name.config_digest is None
    command = server_command(store.tracking_uri, port=5123)
    assert command[command.index("--workers") + 1] == "1" and command[command.index("--host") + 1] == "127.0.0.1"
    with pytest.raises(ConfigError, match="already has its UI"):
        server_command("http://tracking.example:5000")


# --- a small real study run by the sweep ---------------------------------------------------------------

REAL_STUDY = """\
# A tiny debug study for the report and browser tests: 2 definitions x 2 sizes x 2 seeds on the
# synthetic suite, a tiny T5 trained for 2 steps, random and majority baselines.
name: report-real
description: "Tiny real sweep for the report tests"
seed: 1
data:
  source: synthetic
  test_instances_per_task: 8
  synthetic: {{instances_per_task: 40}}
  cache_dir: {cache}
model: {{name: scratch/t5-tiny, tokenizer: bpe, bpe_vocab_size: 300, precision: fp32}}
train: {{global_batch_size: 8, per_device_batch_size: 8, learning_rate: 1.0e-3, epochs: 1, max_steps: 2,
        max_source_length: 128, max_target_length: 8, log_every_steps: 1, checkpoints_to_keep: 1}}
eval: {{batch_size: 64, max_new_tokens: 4}}
resources: {{workers_per_trial: 1, cpus_per_worker: 1}}
tracking: {{tracking_uri: "sqlite:///{home}/mlflow.db", storage_path: {home}/ray_results}}
baselines: [random, majority]
grid:
  variant.definition: [original, simplified]
  data.instances_per_task: [5, 10]
  seed: [1, 2]
"""


@dataclass(frozen=True)
class RealStudy:
    experiment_file: Path
    tracking_uri: str
    experiment: str


def real_study_once(base: Path) -> RealStudy:
    """Run the tiny study with `run_sweep` once per test session (the browser test reuses it)."""
    from itstudy.config import load_study

    folder = base / "report-real-study"
    experiment_file = folder / "report-real.yaml"
    study = RealStudy(experiment_file, f"sqlite:///{folder / 'home'}/mlflow.db", "report-real")
    if (folder / "done").exists():
        return study
    from itstudy.sweep import run_sweep

    (folder / "home").mkdir(parents=True, exist_ok=True)
    experiment_file.write_text(REAL_STUDY.format(home=folder / "home", cache=folder / "cache"))
    with pytest.MonkeyPatch.context() as patch:  # session-scoped: the per-test isolated_home is not set yet
        patch.setenv("ITSTUDY_HOME", str(folder / "home"))
        patch.setenv("ITSTUDY_CACHE", str(folder / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        result = run_sweep(load_study(experiment_file), experiment_file=experiment_file)
    assert not result.failed, [outcome.key for outcome in result.failed]
    (folder / "done").write_text(result.parent_run_id)
    return study


@pytest.fixture(scope="session")
def real_study(tmp_path_factory) -> RealStudy:
    return real_study_once(tmp_path_factory.getbasetemp())


def _recomputed(study: RealStudy, tmp_path: Path) -> pd.DataFrame:
    """Per (condition, size, task, seed) EM and ROUGE-L straight from the runs' metrics and task lists."""
    runs = load_runs(study.tracking_uri, study.experiment)
    children = runs[runs["tags.itstudy.kind"].isin(["trial", "baseline"])]
    rows = []
    for record in children.to_dict("records"):
        tasks = pd.read_csv(download_artifact(study.tracking_uri, record["run_id"], "task_metrics.csv", tmp_path / record["run_id"]))
        kind = record["tags.itstudy.kind"]
        condition = record["tags.itstudy.variant"] if kind == "trial" else record["tags.itstudy.baseline"]
        size = int(record["tags.itstudy.instances_per_task"]) if kind == "trial" else None
        for task in tasks.itertuples():
            if not task.in_pooled:
                continue
            rows.append({"condition": condition, "size": size, "seed": int(record["tags.itstudy.seed"]), "task": task.task,
                         "is_classification": bool(task.is_classification),
                         "exact_match": record[f"metrics.per_task/exact_match_for_{task.task}"],
                         "rougeL": record[f"metrics.per_task/rougeL_for_{task.task}"]})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.ray
def test_report_of_a_real_sweep_matches_its_runs(real_study, tmp_path):
    path = build_report(str(real_study.experiment_file), out_dir=tmp_path / "report")
    table = pd.read_csv(path.parent / "paper_table.csv")
    truth = _recomputed(real_study, tmp_path / "artifacts")
    assert set(table["condition"]) == {"def-original+ex-original", "def-simplified+ex-original", "random", "majority"}
    assert set(table["split"]) == {"classification"}  # the synthetic test tasks all have label sets
    for row in table.itertuples():
        cells = truth[truth["condition"] == row.condition]
        if not pd.isna(row.size):
            cells = cells[cells["size"] == row.size]
        cells = cells[cells["is_classification"]]
        assert row.mean == pytest.approx(cells[row.metric].mean(), abs=1e-9), row
        assert (row.n_tasks, row.n_seeds) == (cells["task"].nunique(), cells["seed"].nunique()), row
    verdicts = pd.read_csv(path.parent / "verdicts.csv")
    assert set(verdicts["size"]) == {5, 10}
    assert {"variant vs reference", "best tuned vs baseline"} == set(verdicts["question"])
    html = path.read_text()
    assert "report-real.yaml" in html and "8 trials, 4 baselines" in html and "12 finished" in html
    # The finding pools both definitions at the largest size against the random baseline.
    assert _finding(html).startswith("Tuned models ") and "for random guessing (difference " in _finding(html)
    assert "(def-original+ex-original, def-simplified+ex-original) at n = 10 per task" in html
    assert set(pd.read_csv(path.parent / "format_table.csv")["level"]) == {"overall", "category", "task"}
    parent = load_runs(real_study.tracking_uri, real_study.experiment)
    parent_id = parent.loc[parent["tags.itstudy.kind"] == "sweep", "run_id"].iloc[0]
    assert "report/report.html" in list_artifacts(real_study.tracking_uri, parent_id, "report")


# --- per-category table and the diversity curve --------------------------------------------------


def test_category_table_uses_superni_headline_metric_per_category(fixture_study, fixture_report):
    table = pd.read_csv(fixture_report.parent / "category_table.csv")
    metric_of = dict(table.groupby("category")["metric"].first())
    assert metric_of == {"answerability_classification": "exact_match", "textual_entailment": "exact_match", "title_generation": "rougeL"}
    category_of = {task.name: task.category for task in fixture_study.tasks if task.pooled}
    for row in table.itertuples():
        size = None if pd.isna(row.size) else int(row.size)
        index = 0 if row.metric == "exact_match" else 1
        cells = [
            pair[index]
            for (kind, condition, logged_size, _), values in fixture_study.values.items()
            if (kind, condition, logged_size) == (row.kind, row.condition, size)
            for task, pair in values.items()
            if category_of.get(task) == row.category and not math.isnan(pair[index])
        ]
        assert (math.isnan(row.mean) if not cells else row.mean == pytest.approx(np.mean(cells), abs=1e-9)), row
    html = fixture_report.read_text()
    assert 'class="category-table"' in html and "Table 1 layout" in html
    assert "measured on the <b>test</b> tasks" in html and "made on <b>dev</b> tasks" in html


def _diversity_scores() -> pd.DataFrame:
    rows = []
    for n, level in ((2, 40.0), (4, 50.0), (8, 60.0)):
        for seed in (1, 2):
            for index in range(3):
                rows.append({"kind": "trial", "condition": f"def-original+ex-original (num_train_tasks={n})",
                             "variant": "def-original+ex-original", "other": f"num_train_tasks={n}", "size": 10, "seed": seed,
                             "task": f"task{index}", "category": "textual_entailment", "is_classification": True,
                             "exact_match": level + index, "rougeL": level, "label_space_rate": 90.0 + n, "rank_exact_match": math.nan})  # fmt: skip
    for seed in (1, 2):
        for index in range(3):
            rows.append({"kind": "baseline", "condition": "random", "variant": "", "other": "num_train_tasks=None", "size": pd.NA,
                         "seed": seed, "task": f"task{index}", "category": "textual_entailment", "is_classification": True,
                         "exact_match": 45.0, "rougeL": 45.0, "label_space_rate": 100.0, "rank_exact_match": math.nan})  # fmt: skip
    return pd.DataFrame(rows).astype({"size": "Int64", "seed": "Int64"})


def test_diversity_table_and_curve_follow_the_number_of_training_tasks():
    from dashboards import analysis, figures

    table = analysis.diversity_table(_diversity_scores())
    em = table[(table["metric"] == "exact_match") & (table["kind"] == "trial")].set_index("num_train_tasks")
    assert list(em.index) == [2, 4, 8] and list(em["mean"]) == pytest.approx([41.0, 51.0, 61.0])
    assert set(em["condition"]) == {"def-original+ex-original"}
    rate = table[(table["metric"] == "label_space_rate") & (table["kind"] == "trial")]
    assert list(rate["mean"]) == pytest.approx([92.0, 94.0, 98.0])
    assert "rank_exact_match" not in set(table["metric"])  # not logged: not drawn
    baseline = table[table["kind"] == "baseline"]
    assert baseline["num_train_tasks"].isna().all() and set(baseline["condition"]) == {"random"}
    assert figures.diversity_curve(table, "classification").startswith(b"\x89PNG")
    assert analysis.diversity_table(_diversity_scores().assign(other="")).empty


# --- backbones and scale: a model axis with untuned baselines (Table 2 layout, EM against parameters) ----

# Model -> (parameter count, EM level of its tuned runs, EM level zero-shot): the larger model is better.
SCALE_MODELS = {"scratch/llama-tiny": (204_608, 40.0, 10.0), "scratch/t5-tiny": (1_100_000, 55.0, 20.0)}
TABLE2_VARIANTS = {name: VARIANTS[name] for name in list(VARIANTS)[:2]}


def write_model_axis_study(uri: str, experiment: str, seeds=(1, 2)) -> dict:
    """A sweep over model.name x definition with an untuned baseline per model, as a sweep logs it;
    returns (model, row, seed) -> {task: (exact_match, rougeL)}."""
    tasks = fixture_tasks(3, 2)
    experiment_id = ensure_experiment(uri, experiment)
    parent_id = create_run(uri, experiment_id, f"{experiment}-sweep", {"itstudy.kind": "sweep", "itstudy.config_digest": "fixture001"})
    parent = RunLogger(uri, parent_id)
    parent.log_params({"grid": {"model.name": list(SCALE_MODELS), "variant.definition": ["original", "simplified"]}})
    values = {}
    for model, (count, tuned, zero_shot) in SCALE_MODELS.items():
        runs = [(variant, definition, "trial", tuned) for variant, (definition, _, _) in TABLE2_VARIANTS.items()]
        runs.append(("def-original+ex-original", "original", "untuned", zero_shot))
        for variant, definition, kind, level in runs:
            for seed in seeds:
                logged = {t.name: (level + seed + index, level + 10 + seed) for index, t in enumerate(tasks)}
                tags = {"itstudy.kind": "trial" if kind == "trial" else "baseline", "itstudy.variant": variant,
                        "itstudy.definition": definition, "itstudy.examples": "original", "itstudy.instances_per_task": 100,
                        "itstudy.seed": seed, "itstudy.model": model, **({"itstudy.baseline": "untuned"} if kind == "untuned" else {})}
                params = {"model": {"name": model}, "run": {"model_parameters": count}}
                _log_child(uri, experiment_id, parent_id, f"{kind}-{model}-{variant}-s{seed}", tags, tasks, logged, params=params)
                values[(model, "zero-shot" if kind == "untuned" else definition, seed)] = logged
    for seed in seeds:
        tags = {"itstudy.kind": "baseline", "itstudy.baseline": "random", "itstudy.seed": seed}
        _log_child(uri, experiment_id, parent_id, f"baseline-random-s{seed}", tags, tasks, _baseline_values(tasks, "random", seed, np.random.default_rng(seed)))
    parent.end("FINISHED")
    return values


def test_a_model_axis_gets_the_table2_layout_and_em_against_parameter_count(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    values = write_model_axis_study(uri, "backbones")
    report = build_report("backbones", tracking_uri=uri, out_dir=tmp_path / "report")
    table = pd.read_csv(report.parent / "table2.csv")
    # Per model, smallest first: zero-shot, original, simplified; each one condition of its own.
    assert list(table["model"]) == [model for model in SCALE_MODELS for _ in range(3)]
    assert list(table["row"]) == ["zero-shot", "original", "simplified"] * 2
    pooled = [t.name for t in fixture_tasks(3, 2) if t.pooled]
    for row in table.itertuples():
        for metric, index in (("exact_match", 0), ("rougeL", 1)):
            per_seed = [np.mean([values[(row.model, row.row, seed)][task][index] for task in pooled]) for seed in (1, 2)]
            assert getattr(row, metric) == f"{np.mean(per_seed):.1f} ± {np.std(per_seed, ddof=1):.1f}", row
        assert (row.n_seeds, row.n_tasks, row.parameters) == (2, len(pooled), SCALE_MODELS[row.model][0])
    html = report.read_text()
    assert "Table 2 layout" in html and 'class="table2"' in html and "1,100,000 parameters" in html
    # EM against parameter count: one line per definition, the untuned model as its own line, random apart.
    scale = pd.read_csv(report.parent / "scale_table.csv")
    em = scale[scale["metric"] == "exact_match"]
    assert set(em["condition"]) == {*TABLE2_VARIANTS, "untuned (def-original+ex-original)", "random"}
    untuned = em[em["condition"] == "untuned (def-original+ex-original)"].set_index("parameters")["mean"]
    assert list(untuned.index) == [count for count, _, _ in SCALE_MODELS.values()]
    assert untuned.iloc[1] - untuned.iloc[0] == pytest.approx(10.0)
    assert em.loc[em["condition"] == "random", "parameters"].isna().all()
    assert 'id="fig-scale"' in html and (report.parent / "scale_curve.png").read_bytes().startswith(b"\x89PNG")
    # The best tuned condition (the larger model) is compared with its own model's untuned run only.
    verdicts = pd.read_csv(report.parent / "verdicts.csv")
    untuned = verdicts.loc[verdicts["reference"].str.startswith("untuned"), ["candidate", "reference"]]
    assert untuned.values.tolist() == [["def-original+ex-original (model=scratch/t5-tiny)",
                                        "untuned (def-original+ex-original, model=scratch/t5-tiny)"]]


def test_a_study_over_sizes_without_untuned_runs_has_no_table2(fixture_report):
    html = fixture_report.read_text()
    assert "Table 2 layout" not in html and 'id="fig-scale"' not in html
    assert not (fixture_report.parent / "table2.csv").exists()
