"""`itstudy baseline` end to end on the real SuperNI sample's classification test tasks, recorded in MLflow."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from itstudy.baseline_run import baseline_command, format_baseline_table, run_baselines
from itstudy.config import ConfigError, study_from_dict
from itstudy.data import load_study_data
from itstudy.metrics import exact_match
from itstudy.tracking import create_run, download_artifact, ensure_experiment, find_runs, get_run

SEEDS = [1, 2, 3]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    # Module-wide and explicit: the recorded runs are shared by the tests below.
    return f"sqlite:///{tmp_path_factory.mktemp('baselines') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def study(superni_dir, store):
    return study_from_dict(
        {
            "name": "baselines",
            "data": {"source": "superni", "superni_dir": str(superni_dir), "test_task_kind": "classification"},
            "tracking": {"tracking_uri": store},
        }
    )


@pytest.fixture(scope="module")
def results(study):
    return run_baselines(study, ["random", "majority"], SEEDS)


@pytest.fixture(scope="module")
def test_tasks(study):
    return load_study_data(study.data, study.seed).test


def _hit_probability(labels: tuple[str, ...], references: tuple[str, ...]) -> float:
    """The chance that a uniform guess among `labels` matches one of `references`."""
    return sum(exact_match(label, references) for label in labels) / len(labels)


def _record(results, baseline: str, seed: int):
    return next(r for r in results.records if (r.baseline, r.seed) == (baseline, seed))


def test_random_guess_on_superni_classification_matches_its_expectation(results, test_tasks):
    # The exact expectation of a uniform guess, from the label spaces alone: instance i of a task
    # with labels L is hit with probability p_i = |{l in L: l matches a reference}| / |L|.
    hit = {}
    for task in test_tasks:
        hit[task.name] = [_hit_probability(task.label_space.labels, i.outputs) for i in task.instances]
    everything = [p for probabilities in hit.values() for p in probabilities]
    expected_instance_mean = 100 * sum(everything) / len(everything)
    expected_task_mean = 100 * sum(sum(p) / len(p) for p in hit.values()) / len(hit)
    # Independent Bernoulli hits: the standard deviation of one seed's figure, then of the 3-seed mean.
    sd_instance_mean = 100 * math.sqrt(sum(p * (1 - p) for p in everything)) / len(everything)
    sd_task_mean = 100 * math.sqrt(sum(sum(q * (1 - q) for q in p) / len(p) ** 2 for p in hit.values())) / len(hit)

    assert len(test_tasks) == 51, "the sample's README counts 51 classification test tasks"
    assert expected_task_mean == pytest.approx(43.2, abs=0.05), "the README's expectation of a uniform guess"
    # 4 standard deviations of the 3-seed mean (about 1.8 EM points here): a uniform guess lands
    # inside with probability > 0.9999, a guess that favours or avoids the gold label does not.
    random_instance = results.values("random", "exact_match")
    random_task = results.values("random", "exact_match_task_mean")
    assert len(random_instance) == len(SEEDS)
    assert abs(sum(random_instance) / 3 - expected_instance_mean) < 4 * sd_instance_mean / math.sqrt(3)
    assert abs(sum(random_task) / 3 - expected_task_mean) < 4 * sd_task_mean / math.sqrt(3)
    assert 38 < sum(random_task) / 3 < 48, "near the paper's 42.6% random baseline"

    # Seeds matter for random and not for majority, which reads only the demonstrations.
    assert len(set(random_instance)) == len(SEEDS)
    assert len(set(results.values("majority", "exact_match"))) == 1


def test_every_baseline_and_seed_is_one_finished_mlflow_run(results, test_tasks, store, tmp_path):
    n_instances = sum(len(task.instances) for task in test_tasks)
    for record in results.records:
        run = get_run(store, record.run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == f"{record.baseline} seed={record.seed}"
        assert run.data.tags["itstudy.trial_key"] == record.run_name
        assert record.run_name == f"baseline-{record.baseline}-s{record.seed}-{results.data_key[:8]}"
        tags = run.data.tags
        assert tags["itstudy.kind"] == "baseline" and tags["itstudy.baseline"] == record.baseline
        assert tags["itstudy.seed"] == str(record.seed)
        assert run.data.params["data.test_task_kind"] == "classification"
        assert run.data.params["label_space.sources"].startswith('["rule:labels_in_definition(max_labels=10)')
        assert all(f"per_task/exact_match_for_{task.name}" in run.data.metrics for task in test_tasks)
        assert run.inputs.dataset_inputs[0].dataset.digest == results.data_key[:36]

    random_seed_2 = _record(results, "random", 2)
    lines = download_artifact(store, random_seed_2.run_id, "predictions.jsonl", tmp_path).read_text().splitlines()
    assert len(lines) == n_instances
    first = json.loads(lines[0])
    assert first["task"] == test_tasks[0].name and first["instance_id"] == test_tasks[0].instances[0].id
    assert first["prediction"] in test_tasks[0].label_space.labels
    table = download_artifact(store, random_seed_2.run_id, "task_metrics.csv", tmp_path).read_text()
    rows = list(csv.DictReader(io.StringIO(table)))
    assert [row["task"] for row in rows] == sorted(task.name for task in test_tasks)
    by_task = {row["task"]: float(row["exact_match"]) for row in rows}
    assert by_task[test_tasks[0].name] == pytest.approx(random_seed_2.metrics[f"exact_match_for_{test_tasks[0].name}"])


def test_running_again_reuses_finished_runs_and_adds_only_new_seeds(study, results, store, capsys):
    experiment_id = ensure_experiment(store, "baselines")
    before = {run.info.run_id for run in find_runs(store, experiment_id, {"itstudy.kind": "baseline"})}
    parent = create_run(store, experiment_id, "sweep-baselines", {"itstudy.kind": "sweep"})

    again = baseline_command(study, ["random"], [3, 4])

    (seed3, seed4) = again.records
    first_seed3 = _record(results, "random", 3)
    assert seed3.reused and (seed3.run_id, seed3.metrics) == (first_seed3.run_id, first_seed3.metrics)
    assert not seed4.reused
    after = {run.info.run_id for run in find_runs(store, experiment_id, {"itstudy.kind": "baseline"})}
    assert after == before | {seed4.run_id}
    assert f"reused finished MLflow run {seed3.run_name}" in capsys.readouterr().out

    # A sweep records its baselines as children of its run; finished ones are still not duplicated.
    child = run_baselines(study, ["random"], [4, 5], parent_run_id=parent).records
    assert child[0].reused and not child[1].reused
    assert get_run(store, child[1].run_id).data.tags["mlflow.parentRunId"] == parent


def test_table_shows_every_task_and_both_overall_means(results, test_tasks):
    table = format_baseline_table(results)
    for task in test_tasks:
        assert task.name in table
    random_task_means = results.values("random", "exact_match_task_mean")
    task_mean_line = next(line for line in table.splitlines() if line.startswith("overall, task mean"))
    assert f"{sum(random_task_means) / 3:.1f} ±" in task_mean_line
    assert "mean ± std over seeds 1, 2, 3" in table and "instance mean pools them all" in table


def test_unknown_baselines_are_refused_before_anything_runs(study, tmp_path):
    fresh = study_from_dict({**study.model_dump(), "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}})
    with pytest.raises(ConfigError, match="'untuned' needs a model"):
        run_baselines(fresh, ["random", "untuned"], SEEDS)
    with pytest.raises(ConfigError, match="at least one seed"):
        run_baselines(fresh, ["random"], [])
    assert not (tmp_path / "m.db").exists()
