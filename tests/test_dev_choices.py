"""Every choice is made on the dev tasks: changing the test instances changes no choice.

A choice (the checkpoint a trial keeps with `eval.select_on: dev`, the trial an Optuna search
picks) reads dev_<metric> figures only; the spec refuses a search on any other metric. So it is
enough to show that the dev figures do not move when the test instances do, and that the
checkpoint choice follows dev figures and ignores test ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from itstudy.config import ConfigError, load_study
from itstudy.training.loop import run_plain

TRAIN_TINY = Path(__file__).resolve().parents[1] / "experiments" / "train_tiny.yaml"
# 8 training tasks x 4 instances, 2 dev tasks x 4 instances, 2 steps with an evaluation after each.
SMALL = [
    "resources.workers_per_trial=1", "train.per_device_batch_size=4", "train.max_steps=2", "train.eval_every_steps=1",
    "data.num_train_tasks=8", "data.instances_per_task=4", "data.dev_tasks=2", "data.dev_instances_per_task=4",
]  # fmt: skip


def _dev(metrics: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in metrics.items() if name.startswith("dev_")}


def test_dev_figures_do_not_move_when_the_test_instances_change(tmp_path):
    few = run_plain(load_study(TRAIN_TINY, [*SMALL, "data.test_instances_per_task=2"]), tmp_path / "few")
    many = run_plain(load_study(TRAIN_TINY, [*SMALL, "data.test_instances_per_task=8"]), tmp_path / "many")
    assert {"dev_exact_match", "dev_rougeL"} <= set(_dev(few))
    assert _dev(few) == _dev(many)  # exactly: the same training, the same dev predictions
    assert few["train_loss"] == many["train_loss"]


def test_the_kept_checkpoint_follows_dev_figures_and_ignores_test_ones():
    from ray import tune

    from itstudy.sweep.tuning import selected_checkpoint

    study = load_study(TRAIN_TINY)
    early, late = tune.Checkpoint("/ckpt/early"), tune.Checkpoint("/ckpt/late")
    dev = {"early": {"dev_exact_match": 60.0}, "late": {"dev_exact_match": 40.0}}
    for test_em in ((10.0, 90.0), (90.0, 10.0)):  # the test figures flip; the choice must not
        best = [(early, {**dev["early"], "exact_match": test_em[0]}), (late, {**dev["late"], "exact_match": test_em[1]})]
        result = tune.Result(metrics=best[-1][1], checkpoint=late, error=None, path="/trial", best_checkpoints=best)
        assert selected_checkpoint(result, study) == (early, "dev_exact_match")
    last = load_study(TRAIN_TINY, ["eval.select_on=last"])
    assert selected_checkpoint(result, last) == (late, "last")


def test_a_search_on_a_test_metric_or_a_choice_without_dev_tasks_is_refused():
    with pytest.raises(ConfigError, match="search.metric: a search chooses on dev metrics only.*use dev_exact_match"):
        load_study(TRAIN_TINY, ["search={space: {}, metric: exact_match}"])
    with pytest.raises(ConfigError, match="data.dev_tasks=0 leaves no dev split, but eval.select_on=dev"):
        load_study(TRAIN_TINY, ["data.dev_tasks=0"])
