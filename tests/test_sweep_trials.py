"""Grid expansion, trial keys, baseline grouping, search-space and pre-flight checks, the table.

Fast: no Ray, no training. What a user relies on here: the same experiment gives the same trial
keys (resume needs no flags), trials that share test tasks share their baselines, and a bad
sweep is refused with the field named before anything starts.
"""

from __future__ import annotations

import pytest

from itstudy.config import ConfigError, load_study, study_from_dict, with_overrides
from itstudy.sweep.preflight import preflight, search_space
from itstudy.sweep.table import Row, format_table
from itstudy.sweep.trials import expand_grid, make_trial, sweep_name, evaluation_set_key, untuned_trial
from itstudy.sweep.tuning import plan_experiments, untuned_trials

DEMO = "experiments/demo.yaml"


def _study(**sections):
    return study_from_dict({"name": "t", **sections})


def test_grid_expands_to_the_product_with_stable_unique_readable_keys():
    study = load_study(DEMO)
    trials = expand_grid(study)
    assert len(trials) == 2 * 2 * 2
    keys = [trial.key for trial in trials]
    assert len(set(keys)) == len(keys)
    # A second load of the same file, in any process, gives the very same keys: resume needs no flags.
    assert keys == [trial.key for trial in expand_grid(load_study(DEMO))]
    first = trials[0]
    assert first.key.startswith("def-original+ex-original_n20_s1_")
    assert first.study.variant.definition == "original" and first.study.data.instances_per_task == 20
    assert first.study.seed == 1 and first.study.grid == {}
    assert first.label == "def-original+ex-original_n20"
    # Seeds of one configuration share the label the table averages over.
    assert {trial.label for trial in trials if trial.study.variant.definition == "simplified"} == {
        "def-simplified+ex-original_n20",
        "def-simplified+ex-delusive_n20",
    }


def test_any_config_key_can_be_an_axis_and_changes_key_and_sweep_name():
    study = load_study(DEMO, ["grid={data.num_train_tasks: [4, 8], model.name: [scratch/t5-tiny]}"])
    trials = expand_grid(study)
    assert [trial.study.data.num_train_tasks for trial in trials] == [4, 8]
    assert "_tasks4_" in trials[0].key and "_scratch-t5-tiny_" in trials[0].key
    assert sweep_name(study) != sweep_name(load_study(DEMO))
    # Changing anything in the config changes the digest in every key.
    other = load_study(DEMO, ["grid={data.num_train_tasks: [4, 8], model.name: [scratch/t5-tiny]}", "train.epochs=4"])
    assert {t.key for t in expand_grid(other)}.isdisjoint({t.key for t in trials})


def test_an_empty_grid_is_one_trial():
    trials = expand_grid(_study())
    assert len(trials) == 1 and trials[0].point == {}


def test_trials_that_differ_only_in_training_share_their_test_set_and_baselines():
    base = _study(data={"test_instances_per_task": 40})
    sizes = [with_overrides(base, {"data.instances_per_task": n, "seed": 1}) for n in (10, 800)]
    assert evaluation_set_key(sizes[0]) == evaluation_set_key(sizes[1])
    assert evaluation_set_key(with_overrides(base, {"data.test_instances_per_task": 20})) != evaluation_set_key(base)
    assert evaluation_set_key(with_overrides(base, {"data.test_task_kind": "classification"})) != evaluation_set_key(base)


def test_a_study_without_dev_tasks_has_an_evaluation_set():
    # The demo chooses nothing and holds out no dev tasks (select_on: last); the key's probe must
    # not be refused for lacking them, and dev tasks (evaluated beside the test tasks) change it.
    dev_less = load_study(DEMO)
    assert dev_less.data.dev_tasks == 0
    assert evaluation_set_key(dev_less) != evaluation_set_key(load_study(DEMO, ["data.dev_tasks=4", "eval.select_on=dev"]))


def test_untuned_baseline_is_shared_across_data_sizes_unless_the_tokenizer_learns_from_them():
    grid = {"data.instances_per_task": [10, 50], "seed": [1, 2]}
    pretrained_vocab = _study(baselines=["untuned"], model={"tokenizer": "t5"}, grid=grid)
    shared = untuned_trials(pretrained_vocab, expand_grid(pretrained_vocab))
    assert len(shared) == 2  # one per seed: the training sample cannot change its predictions
    learnt_vocab = _study(baselines=["untuned"], model={"tokenizer": "bpe"}, grid=grid)
    assert len(untuned_trials(learnt_vocab, expand_grid(learnt_vocab))) == 4  # BPE is trained on the sample
    assert untuned_trials(_study(baselines=["random"], grid=grid), expand_grid(_study(grid=grid))) == []
    baseline = untuned_trial(expand_grid(pretrained_vocab)[0])
    assert baseline.key.startswith("baseline-untuned_scratch-t5-tiny_def-original+ex-original_s1_")


def test_each_model_of_a_model_axis_has_its_own_untuned_baseline():
    study = _study(baselines=["untuned"], model={"tokenizer": "t5"}, grid={"model.name": ["scratch/t5-tiny", "scratch/llama-tiny"]})
    labels = sorted(baseline.label for baseline in untuned_trials(study, expand_grid(study)))
    assert labels == ["untuned_scratch-llama-tiny_def-original+ex-original", "untuned_scratch-t5-tiny_def-original+ex-original"]


def test_search_space_is_checked_against_the_config():
    ok = _study(search={"space": {"train.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}})
    assert set(search_space(ok)) == {"train.learning_rate"}
    assert search_space(_study()) is None
    cases = {
        "type": {"train.learning_rate": {"type": "gaussian", "low": 1, "high": 2}},
        "needs 'high'": {"train.learning_rate": {"type": "uniform", "low": 1e-5}},
        "does not name a config field": {"train.learning_rte": {"type": "uniform", "low": 1e-5, "high": 1e-3}},
        "also a grid axis": {"seed": {"type": "choice", "values": [1, 2]}},
    }
    for expected, space in cases.items():
        study = _study(search={"space": space}, grid={"seed": [1, 2]})
        with pytest.raises(ConfigError, match=expected):
            search_space(study)


def test_search_plans_one_optuna_experiment_per_grid_point():
    study = _study(
        grid={"seed": [1, 2]},
        baselines=["untuned"],
        search={"space": {"train.learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}, "num_samples": 3},
    )
    trials = expand_grid(study)
    plans = plan_experiments(study, trials, untuned_trials(study, trials), search_space(study), "0123456789abcdef")
    names = [name for name, _, _ in plans]
    assert names[0] == f"{sweep_name(study)}-run01234567-untuned"
    assert names[1:] == [f"{sweep_name(study)}-run01234567-search-{trial.key}" for trial in trials]
    assert [searched for _, _, searched in plans] == [False, True, True]
    assert plans[1][1]["trial"]["point"] == {"seed": 1}


def test_preflight_refuses_a_batch_that_does_not_divide_naming_the_trial():
    study = _study(train={"global_batch_size": 16, "per_device_batch_size": 8}, grid={"resources.workers_per_trial": [1, 3]})
    with pytest.raises(ConfigError, match=r"trial .*_workers_per_trial3_.*global_batch_size=16"):
        preflight(study, expand_grid(study))


def test_preflight_refuses_a_job_server_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(ConfigError, match="job-server address"):
        preflight(_study(), expand_grid(_study()))


def test_preflight_refuses_a_simplified_definition_on_generation_tasks(superni_dir):
    # SuperNI's test split has generation tasks, which have no label list to simplify to.
    study = _study(
        data={"source": "superni", "superni_dir": str(superni_dir), "num_train_tasks": 2, "test_instances_per_task": 5},
        grid={"variant.definition": ["original", "simplified"]},
    )
    with pytest.raises(ConfigError, match="variant: task .* needs a label space"):
        preflight(study, expand_grid(study))


TABLE_TASKS = [f"task{i:03d}_table" for i in range(12)]


def _seed_metrics(level: float, seed: int, label_space: float | None = None, rank: float | None = None) -> dict:
    """A run's final metrics: per-task EM that varies by task and seed, and their mean overall."""
    per_task = {f"exact_match_for_{task}": level + (i % 4) * 5 + seed for i, task in enumerate(TABLE_TASKS)}
    metrics = {**per_task, "exact_match": sum(per_task.values()) / len(per_task), "rougeL": level}
    if label_space is not None:
        metrics["label_space_rate"] = label_space
    if rank is not None:
        metrics["rank_exact_match"] = rank
    return metrics


def _line(lines: list[str], label: str) -> str:
    return next(line for line in lines if line.startswith(label + " "))


def test_table_shows_format_metrics_and_the_paired_bootstrap_verdict_against_the_best_baseline():
    rows = [
        Row("def-original_n20", {s: _seed_metrics(60.0, s, 99.0, 58.0) for s in (1, 2, 3)}, 3),
        Row("def-simplified_n20", {s: _seed_metrics(50.3, s, 97.0, 49.0) for s in (1, 2)}, 3),
        Row("random", {s: _seed_metrics(50.0, s, 100.0) for s in (1, 2, 3)}, 3, True),
        Row("majority", {s: _seed_metrics(40.0, s, 100.0) for s in (1, 2, 3)}, 3, True),
    ]
    lines = format_table("title", rows, TABLE_TASKS).splitlines()
    assert lines[0] == "title (test tasks; nothing was chosen on them)"
    header = lines[1].split()
    assert header[:6] == ["configuration", "seeds", "exact_match", "rougeL", "label_space_rate", "rank_exact_match"]
    # 10 points above random on every task and seed: the whole CI is above 0.
    original = _line(lines, "def-original_n20")
    assert "99.0 ± 0.0" in original and "58.0 ± 0.0" in original
    assert "+10.0 [+10.0, +10.0] vs random: better" in original
    # 0.3 above random on every cell, two of three seeds: inside the ±2 margin.
    simplified = _line(lines, "def-simplified_n20")
    assert " 2/3 " in simplified and "+0.3 [+0.3, +0.3] vs random: equivalent within ±2 EM" in simplified
    # Baselines carry the label-space rate but no rank EM, and are not compared with themselves.
    assert _line(lines, "random").split()[-4:] == ["100.0", "±", "0.0", "-"]


def test_table_pairs_by_seed_and_omits_metrics_no_run_logged():
    rows = [
        Row("tuned", {1: _seed_metrics(55.0, 1), 2: _seed_metrics(45.0, 2)}, 2),
        Row("random", {1: _seed_metrics(50.0, 1), 3: _seed_metrics(50.0, 3)}, 2, True),
    ]
    lines = format_table("title", rows, TABLE_TASKS).splitlines()
    assert "rank_exact_match" not in lines[1] and "label_space_rate" in lines[1]
    # Only seed 1 pairs: +5 on every task of that seed, whatever seed 2 scored.
    assert "+5.0 [+5.0, +5.0] vs random: better" in _line(lines, "tuned")
    # Without the test tasks to pair over (no model-free baseline), the comparison stays empty.
    assert "vs random" not in format_table("title", rows, []).splitlines()[2]


def test_the_sweep_pairs_its_table_over_the_classification_test_tasks_by_seed():
    from itstudy.baseline_run import BaselineRecord, BaselineResults, TaskRow
    from itstudy.sweep.outcomes import TrialOutcome
    from itstudy.sweep.summary import comparison_rows, paired_tasks

    tasks = (*(TaskRow(task, 2, 8) for task in TABLE_TASKS), TaskRow("task999_generation", None, 8))
    records = tuple(BaselineRecord("random", seed, f"r{seed}", f"random-s{seed}", False, _seed_metrics(50.0, seed, 100.0))
                    for seed in (1, 2))  # fmt: skip
    baselines = [BaselineResults(tasks, records, "key", "synthetic", (), "sqlite://", "0")]
    outcomes = [TrialOutcome(f"t_s{seed}", "trial", f"run{seed}", "def-original_n20", seed, 1, status,
                             _seed_metrics(53.0, seed, 98.0, 51.0) if status == "FINISHED" else {}, None)
                for seed, status in ((1, "FINISHED"), (2, "FINISHED"), (3, "FAILED"))]  # fmt: skip
    assert paired_tasks(baselines) == TABLE_TASKS  # generation tasks have no label space to guess in
    rows = comparison_rows(outcomes, baselines)
    assert [(row.label, sorted(row.runs), row.expected) for row in rows] == [("def-original_n20", [1, 2], 3), ("random", [1, 2], 2)]
    trial = _line(format_table("title", rows, paired_tasks(baselines)).splitlines(), "def-original_n20")
    assert " 2/3 " in trial and "98.0 ± 0.0" in trial and "+3.0 [+3.0, +3.0] vs random: better" in trial


def test_make_trial_applies_the_point_as_overrides():
    trial = make_trial(_study(), {"train.learning_rate": 3e-4, "seed": 7})
    assert trial.study.train.learning_rate == 3e-4 and trial.study.seed == 7
    assert "_lr0.0003_" in trial.key


def test_another_store_more_workers_or_a_new_description_resume_the_same_sweep_and_trials():
    study = load_study(DEMO)
    moved = load_study(DEMO, ["tracking.experiment=elsewhere", "resources.cpus_per_worker=2", "description=again"])
    assert sweep_name(moved) == sweep_name(study)
    assert [trial.key for trial in expand_grid(moved)] == [trial.key for trial in expand_grid(study)]


def test_a_key_that_shapes_the_result_names_a_new_sweep_and_new_trials():
    study = load_study(DEMO)
    changed = load_study(DEMO, ["train.learning_rate=3e-3"])
    assert sweep_name(changed) != sweep_name(study)
    assert not {trial.key for trial in expand_grid(changed)} & {trial.key for trial in expand_grid(study)}


def test_a_new_sweep_of_a_study_names_the_result_keys_that_changed(tmp_path, capsys):
    from itstudy.sweep.parent import find_parent_run, say_what_changed
    from itstudy.tracking import RunLogger, ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = ensure_experiment(uri, "demo")
    first = load_study(DEMO)
    RunLogger(uri, find_parent_run(first, uri, experiment_id).run_id).log_config(first)
    changed = load_study(DEMO, ["train.learning_rate=3e-3", "resources.cpus_per_worker=2"])
    say_what_changed(changed, uri, find_parent_run(changed, uri, experiment_id).run_id)
    line = capsys.readouterr().out.strip()
    assert "a new sweep" in line and "train.learning_rate" in line and "resources" not in line
