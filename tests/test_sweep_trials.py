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
    study = load_study(DEMO, ["grid={data.max_train_tasks: [4, 8], model.name: [t5-tiny]}"])
    trials = expand_grid(study)
    assert [trial.study.data.max_train_tasks for trial in trials] == [4, 8]
    assert "_tasks4_" in trials[0].key and "_t5-tiny_" in trials[0].key
    assert sweep_name(study) != sweep_name(load_study(DEMO))
    # Changing anything in the config changes the digest in every key.
    other = load_study(DEMO, ["grid={data.max_train_tasks: [4, 8], model.name: [t5-tiny]}", "train.epochs=4"])
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


def test_untuned_baseline_is_shared_across_data_sizes_unless_the_tokenizer_learns_from_them():
    grid = {"data.instances_per_task": [10, 50], "seed": [1, 2]}
    pretrained_vocab = _study(baselines=["untuned"], model={"tokenizer": "t5"}, grid=grid)
    shared = untuned_trials(pretrained_vocab, expand_grid(pretrained_vocab))
    assert len(shared) == 2  # one per seed: the training sample cannot change its predictions
    learnt_vocab = _study(baselines=["untuned"], model={"tokenizer": "bpe"}, grid=grid)
    assert len(untuned_trials(learnt_vocab, expand_grid(learnt_vocab))) == 4  # BPE is trained on the sample
    assert untuned_trials(_study(baselines=["random"], grid=grid), expand_grid(_study(grid=grid))) == []
    baseline = untuned_trial(expand_grid(pretrained_vocab)[0])
    assert baseline.key.startswith("baseline-untuned_def-original+ex-original_s1_")


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
    plans = plan_experiments(study, trials, untuned_trials(study, trials), search_space(study))
    names = [name for name, _, _ in plans]
    assert names[0] == f"{sweep_name(study)}-untuned"
    assert names[1:] == [f"{sweep_name(study)}-search-{trial.key}" for trial in trials]
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
        data={"source": "superni", "superni_dir": str(superni_dir), "max_train_tasks": 2, "test_instances_per_task": 5},
        grid={"variant.definition": ["original", "simplified"]},
    )
    with pytest.raises(ConfigError, match="variant: task .* needs a label space"):
        preflight(study, expand_grid(study))


def test_table_gives_mean_and_spread_over_seeds_and_says_when_a_gap_is_seed_noise():
    rows = [
        Row("def-original_n20", ({"exact_match": 60.0, "rougeL": 61.0}, {"exact_match": 64.0, "rougeL": 65.0}), 2),
        Row("def-simplified_n20", ({"exact_match": 51.0, "rougeL": 52.0},), 2),
        Row("random", ({"exact_match": 50.0, "rougeL": 50.0}, {"exact_match": 52.0, "rougeL": 52.0}), 2, True),
    ]
    lines = format_table("title", rows).splitlines()
    original = next(line for line in lines if line.startswith("def-original_n20"))
    assert "62.0 ± 2.8" in original and "+11.0 vs random (beyond seed noise)" in original
    simplified = next(line for line in lines if line.startswith("def-simplified_n20"))
    # one of two seeds finished; 51 vs 51 ± 1.4 is within noise
    assert " 1/2 " in simplified and "within seed noise" in simplified
    assert next(line for line in lines if line.startswith("random")).rstrip().endswith("51.0 ± 1.4")


def test_make_trial_applies_the_point_as_overrides():
    trial = make_trial(_study(), {"train.learning_rate": 3e-4, "seed": 7})
    assert trial.study.train.learning_rate == 3e-4 and trial.study.seed == 7
    assert "_lr0.0003_" in trial.key
