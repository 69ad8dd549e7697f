"""`itstudy run`: a whole study as one sweep on Ray Tune, every trial and baseline in MLflow.

    result = run_sweep(load_study("experiments/demo.yaml"), experiment_file=Path("experiments/demo.yaml"))

What one invocation does:
1. pre-flight, before Ray starts or MLflow is written (`preflight`): expands the grid (`trials`),
   checks everything `itstudy train` checks for each trial (batch arithmetic for its worker
   count, model, tokenizer and its vocabulary), the data and variants (a simplified definition on
   a task without labels fails here), each global batch against its training set, the CPUs and
   GPUs of this machine when the sweep starts its own Ray, and the Ray address (where no Ray
   answers within seconds, the command stops here);
2. MLflow (`parent`): one experiment per study (a new SQLite store created under a file lock)
   and one parent run per sweep, named `<study>-<digest8>` and found again by that name,
   holding the experiment file, the config, the trial list and the code version; then the
   sweep's lock (`lock`): a second invocation of a running sweep is refused, naming the holder.
   Holding it, the Ray session starts (`cluster`) and must be able to hold every trial, at its
   autoscaling maximum, before any run is touched; then child runs still RUNNING were left by a killed driver: they are ended FAILED with
   the reason tagged (a resumed trial reopens its run), and what the metric records hold and
   MLflow lacks is sent (`send_records`, also what `itstudy sync` does);
3. the model-free baselines, once per test-task set and seed (`itstudy.baseline_run`), children
   of the parent run; the untuned-model baseline runs as a Tune trial beside the training trials;
4. Ray Tune (`tuning`, `trainable`, `progress`): one Tune experiment named after the
   sweep under the storage path. If its folder exists, `Tuner.restore` resumes it: finished
   trials stay finished, interrupted and errored ones continue from their last checkpoint. With
   a search space, each grid point gets its own Optuna search of `search.num_samples` trials;
5. the end (`summary`): `trials.csv` and the comparison table on the parent run, which ends
   FINISHED when every trial finished, else FAILED; child runs left RUNNING are ended FINISHED
   if Tune saw their trial finish (the store was down when it ended them), else FAILED with the
   reason tagged; the metric records are sent again, and if MLflow still
   lacks some, one line says so and how to send them later. A full disk stops the sweep at the
   first trial it fails (`DiskFull`, one line): the checkpoints it cut short are removed, which
   gives back the space to end the runs FAILED with the reason.
"""

from __future__ import annotations

from pathlib import Path

from itstudy.config import Study, to_plain
from itstudy.paths import storage_path
from itstudy.sweep.cluster import check_cluster, ray_session
from itstudy.sweep.lock import study_lock
from itstudy.sweep.outcomes import SweepResult
from itstudy.sweep.parent import close_orphans, find_parent_run, model_free_baselines, open_parent_run
from itstudy.sweep.preflight import preflight, search_space
from itstudy.sweep.progress import Progress
from itstudy.sweep.summary import summarize
from itstudy.sweep.trainable import SweepContext
from itstudy.sweep.trials import Trial, expand_grid, sweep_name
from itstudy.sweep.tuning import run_tune, tune_state_name, untuned_trials
from itstudy.tracking import (
    RunLogger,
    check_tracking,
    check_writable,
    disk_full_cause,
    disk_full_named,
    ensure_experiment,
    experiment_name,
    resolve_tracking_uri,
    store_creation_lock,
    sync_folder,
)

LEFT_BY_DEAD_DRIVER = "its sweep's driver stopped before ending it; a resumed trial reopens it"
LEFT_BY_DEAD_TRIAL = "its trial stopped before ending it; rerun the same command to resume it"
LEFT_BY_FULL_DISK = "the disk filled up while it ran; free space and rerun the same command to resume it"


def run_sweep(study: Study, experiment_file: Path | None = None) -> SweepResult:
    """Run (or resume) every trial and baseline of `study`; print and return the comparison."""
    trials = expand_grid(study)
    untuned = untuned_trials(study, trials)
    preflight(study, trials)
    uri = resolve_tracking_uri(study.tracking)
    check_writable(uri)  # before the lock files beside it
    with store_creation_lock(uri):  # two first runs on a new store must not race its schema migration
        check_tracking(uri)
        experiment_id = ensure_experiment(uri, experiment_name(study))
    with disk_full_named(uri, storage_path(study.tracking.storage_path)):
        return _run_locked(study, trials, untuned, uri, experiment_id, experiment_file)


def _run_locked(
    study: Study, trials: list[Trial], untuned: list[Trial], uri: str, experiment_id: str, experiment_file: Path | None
) -> SweepResult:
    """Under the study's lock, with Ray up: close what a killed driver left, run the trials, end the parent run."""
    found_parent = lambda: find_parent_run(study, uri, experiment_id)  # noqa: E731
    # Ray answers (and the cluster can hold every trial) before any run is touched.
    with study_lock(sweep_name(study), uri, found_parent) as found, ray_session(uri) as worker_uri:
        check_cluster(trials)
        # Holding the lock, nothing else runs this sweep: children still RUNNING were left by a killed driver.
        close_orphans(uri, experiment_id, found.run_id, LEFT_BY_DEAD_DRIVER)
        send_records(study, uri, found.run_id, experiment_file)
        parent = open_parent_run(study, found, trials, untuned, uri, experiment_file)
        context = SweepContext(
            study=to_plain(study),
            tracking_uri=worker_uri,
            experiment_id=experiment_id,
            parent_run_id=parent.run_id,
            train_storage_path=f"{storage_path(study.tracking.storage_path)}/{tune_state_name(study, parent.run_id)}-train",
            journal_dir=str(journal_dir(study, parent.run_id)),
        )
        status, reason = "KILLED", LEFT_BY_DEAD_TRIAL  # unless the sweep ends or fails below: an interrupt or exit
        finished: frozenset[str] = frozenset()
        try:
            result = _run_trials(study, trials, untuned, uri, context, parent, experiment_file)
            finished = frozenset(o.run_id for o in result.outcomes if o.status == "FINISHED" and o.run_id)
            status = "FAILED" if result.failed else "FINISHED"
            return result
        except Exception as error:
            status = "FAILED"
            if disk_full_cause(error):
                reason = LEFT_BY_FULL_DISK
                free_cut_short(study, parent.run_id)
                parent.store_full = False  # with that space the runs can be ended
            raise
        finally:
            close_orphans(uri, experiment_id, parent.run_id, reason, finished)
            send_records(study, uri, parent.run_id, experiment_file)
            parent.end(status)


def _run_trials(
    study: Study,
    trials: list[Trial],
    untuned: list[Trial],
    uri: str,
    context: SweepContext,
    parent: RunLogger,
    experiment_file: Path | None,
) -> SweepResult:
    """Baselines, then every trial on Ray Tune; the summary printed and returned."""
    space = search_space(study)
    baselines = model_free_baselines(study, trials, parent.run_id)
    total = len(trials) * (study.search.num_samples if space else 1) + len(untuned)
    progress = Progress(sweep_name(study), context, parent, total)
    outcomes = run_tune(study, trials, untuned, space, context, progress)
    result = summarize(study, experiment_file, uri, context.experiment_id, parent, outcomes, baselines)
    print(result.table)
    return result


def free_cut_short(study: Study, parent_run_id: str) -> None:
    """After a full disk stopped the sweep (no trial runs any more): remove the checkpoints it cut short, which
    no resume can use, so that the runs can be ended in an SQLite store on the same disk."""
    from itstudy.training.checkpoints import remove_cut_short

    storage = Path(storage_path(study.tracking.storage_path))
    for state in storage.glob(f"{tune_state_name(study, parent_run_id)}*"):
        for folder in remove_cut_short(state):
            print(f"[{sweep_name(study)}] removed checkpoint {folder}: the full disk cut it short")


# --- the metric records ------------------------------------------------------------------------


def journal_dir(study: Study, parent_run_id: str) -> Path:
    """Where the sweep's trials record their metric points, one `<run id>.jsonl` per child run;
    keyed by the parent run like the Tune state, so records are only ever sent to their own store."""
    return Path(storage_path(study.tracking.storage_path)) / f"{tune_state_name(study, parent_run_id)}-journal"


def send_records(study: Study, uri: str, parent_run_id: str, experiment_file: Path | None = None) -> list[str]:
    """Send MLflow what the sweep's metric records hold and it lacks; say in one line what is still unsent.

    Called at the start and end of every invocation and by `itstudy sync`; returns the unsent run ids.
    """
    sent, unsent = sync_folder(journal_dir(study, parent_run_id), uri)
    name = sweep_name(study)
    if sent.points or sent.artifacts:
        print(f"[{name}] sent {sent.points} recorded metric values and {sent.artifacts} kept artifacts that MLflow ({uri}) did not have")
    if unsent:
        print(
            f"[{name}] {len(unsent)} runs have metrics not yet in MLflow ({uri}), kept in {journal_dir(study, parent_run_id)}: "
            f"itstudy sync {experiment_file or 'EXPERIMENT.yaml'} (with this run's overrides) once MLflow answers"
        )
    return unsent
