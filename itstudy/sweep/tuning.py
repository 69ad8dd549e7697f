"""Ray Tune for a sweep: which Tune experiments to run, their Tuners (new or restored), each trial's outcome.

Without a search the whole grid (and the untuned baselines) is one Tune experiment named after
the sweep and its MLflow parent run (state from another store is never reused); with one, each
grid point gets its own Optuna search of `search.num_samples` trials.
A Tune experiment whose folder exists under the storage path is resumed with `Tuner.restore`:
finished trials stay finished, interrupted and errored ones continue from their last checkpoint
(a new Tuner would start over: ray#28722). Never uses `fail_fast`: it makes a sweep
unrestorable (ray#30584).

Every choice reads dev metrics only: Optuna optimises `search.metric` (a `dev_` metric, checked
by the spec), and with `eval.select_on: dev` the checkpoint a trial's run points to is its best
retained one by `dev_exact_match`, never by a test figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import cloudpickle, tune
from ray.tune.search.optuna import OptunaSearch

from itstudy.config import DEV_PREFIX, Study
from itstudy.paths import storage_path
from itstudy.sweep.cluster import TrialResources, max_concurrent_trials
from itstudy.sweep.outcomes import TrialOutcome
from itstudy.sweep.progress import Progress
from itstudy.sweep.trainable import SweepContext, child_run_identity, resolve_trial, run_trial
from itstudy.sweep.trials import Trial, sweep_name, untuned_trial
from itstudy.tracking import RunLogger, disk_full_cause, find_runs


def untuned_trials(study: Study, trials: list[Trial]) -> list[Trial]:
    """One untuned-model baseline per distinct (test prompts, model, seed), if the study asks for it."""
    if "untuned" not in study.baselines:
        return []
    return list({baseline.key: baseline for baseline in map(untuned_trial, trials)}.values())


def tune_state_name(study: Study, parent_run_id: str) -> str:
    """The folder name of a sweep's Ray state: the sweep and its MLflow parent run in this store.

    Tune and Train state is only resumed together with the store that recorded it: another store
    (a fresh cluster's, an emptied one) has another parent run, so its sweep starts afresh
    instead of replaying finished trials that this store never saw.
    """
    return f"{sweep_name(study)}-run{parent_run_id[:8]}"


def plan_experiments(
    study: Study, trials: list[Trial], untuned: list[Trial], space: dict[str, Any] | None, parent_run_id: str
) -> list[tuple[str, dict, bool]]:
    """(Tune experiment name, param space, searched?): the grid in one experiment, or one search per point."""
    name = tune_state_name(study, parent_run_id)
    baselines = [{"kind": "untuned", "point": trial.point} for trial in untuned]
    if space is None:
        entries = [{"kind": "trial", "point": trial.point} for trial in trials] + baselines
        return [(name, {"trial": tune.grid_search(entries)}, False)]
    plans = [(f"{name}-untuned", {"trial": tune.grid_search(baselines)}, False)] if baselines else []
    for trial in trials:
        plans.append((f"{name}-search-{trial.key}", {"trial": {"kind": "trial", "point": trial.point, "sampled": space}}, True))
    return plans


def run_tune(
    study: Study,
    trials: list[Trial],
    untuned: list[Trial],
    space: dict[str, Any] | None,
    context: SweepContext,
    progress: Progress,
) -> list[TrialOutcome]:
    """Run each planned Tune experiment (restored when its folder exists); every trial's outcome."""
    outcomes = []
    for name, param_space, searched in plan_experiments(study, trials, untuned, space, context.parent_run_id):
        tuner = make_tuner(study, trials, name, param_space, searched, context, progress)
        for result in tuner.fit():
            outcomes.append(outcome_of(result, context, progress))
    return outcomes


def make_tuner(
    study: Study,
    trials: list[Trial],
    name: str,
    param_space: dict,
    searched: bool,
    context: SweepContext,
    progress: Progress,
) -> tune.Tuner:
    """A Tuner for experiment `name`: restored if Tune saved it before (the resume path), else new."""
    storage = storage_path(study.tracking.storage_path)
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), TrialResources(context))
    if tune.Tuner.can_restore(f"{storage}/{name}"):
        print(f"[{progress.sweep}] resuming Tune experiment {storage}/{name}")
        return tune.Tuner.restore(f"{storage}/{name}", trainable=trainable, resume_errored=True)
    search = study.search
    tune_config = tune.TuneConfig(
        search_alg=OptunaSearch(metric=search.metric, mode=search.mode, seed=study.seed) if searched else None,
        num_samples=search.num_samples if searched else 1,
        max_concurrent_trials=max_concurrent_trials(study, trials),
        trial_name_creator=TrialNamer(context),
        trial_dirname_creator=TrialNamer(context),
        # A trial's process is kept for the next trial with the same resources: torch and
        # transformers are imported once per worker, not once per trial (~2 s each on 2 cores).
        reuse_actors=True,
    )
    run_config = tune.RunConfig(
        name=name,
        storage_path=storage,
        callbacks=[progress, StopOnDiskFull()],
        verbose=0,  # Progress prints one line per event instead of Tune's tables
        failure_config=tune.FailureConfig(max_failures=study.train.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=study.train.checkpoints_to_keep),
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


class StopOnDiskFull(tune.Callback):
    """Stop the sweep when a trial failed on a full disk: a retry would fail the same way, with thousands of
    lines. Raised from Tune's loop, the trial's `DiskFull` ends `Tuner.fit`; Tune's saved state still
    holds the trial as unfinished, so the rerun resumes it from its last checkpoint."""

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._stop_if_full(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._stop_if_full(trial)

    @staticmethod
    def _stop_if_full(trial) -> None:
        # The driver's own copy of the trial's error (`trial.get_pickled_error()` reads the storage's copy,
        # which a full disk never received); checked against Ray 2.60.
        pickled = Path(trial.pickled_error_file) if trial.pickled_error_file else None
        full = disk_full_cause(cloudpickle.loads(pickled.read_bytes())) if pickled and pickled.is_file() else None
        if full is not None:
            raise full


class TrialNamer:
    """Tune trial names and folders are the trial keys: readable, and stable across reruns."""

    def __init__(self, context: SweepContext):
        self.context = context

    def __call__(self, trial) -> str:
        return resolve_trial(trial.config, self.context).key


def outcome_of(result: tune.Result, context: SweepContext, progress: Progress) -> TrialOutcome:
    """A Tune result as a TrialOutcome; its MLflow run gets a pointer to the trial's final checkpoint."""
    trial = resolve_trial(result.config, context)
    runs = find_runs(context.tracking_uri, context.experiment_id, child_run_identity(trial.key, context))
    run_id = runs[0].info.run_id if runs else None
    checkpoint, selected_on = selected_checkpoint(result, trial.study)
    if run_id and checkpoint:
        RunLogger(context.tracking_uri, run_id).set_tags({"itstudy.checkpoint": checkpoint.path, "itstudy.selected_on": selected_on})
    metrics = {key: float(value) for key, value in (result.metrics or {}).items() if _is_number(value)}
    return TrialOutcome(
        key=trial.key,
        kind=result.config["trial"]["kind"],
        run_id=run_id,
        label=trial.label,
        seed=trial.study.seed,
        workers=trial.study.resources.workers_per_trial,
        status="FAILED" if result.error else "FINISHED",
        metrics=metrics,
        window=progress.windows.get(trial.key),
    )


SELECTION_METRIC = f"{DEV_PREFIX}exact_match"
"""What `eval.select_on: dev` ranks a trial's checkpoints by."""


def selected_checkpoint(result: tune.Result, study: Study) -> tuple[Any, str]:
    """(the trial's chosen checkpoint, what chose it): the best on dev exact match, or the last one."""
    has_dev = any(SELECTION_METRIC in metrics for _, metrics in result.best_checkpoints or ())
    if study.eval.select_on == "dev" and has_dev:
        return result.get_best_checkpoint(SELECTION_METRIC, "max"), SELECTION_METRIC
    return result.checkpoint, "last"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
