"""`itstudy run`: a whole study as one sweep on Ray Tune, every trial and baseline in MLflow.

    result = run_sweep(load_study("experiments/demo.yaml"), experiment_file=Path("experiments/demo.yaml"))

What one invocation does:
1. pre-flight, before Ray starts or MLflow is written (`preflight`): expands the grid (`trials`),
   checks each trial's batch arithmetic for its worker count, the models, the data and variants
   (a simplified definition on a task without labels fails here), the search space and the Ray
   address;
2. MLflow (`parent`): one experiment per study and one parent run per sweep, named
   `<study>-<digest8>` and found again by that name, holding the experiment file, the config,
   the trial list and the code version;
3. the model-free baselines, once per test-task set and seed (`itstudy.baseline_run`), children
   of the parent run; the untuned-model baseline runs as a Tune trial beside the training trials;
4. Ray Tune (`cluster`, `tuning`, `trainable`, `progress`): one Tune experiment named after the
   sweep under the storage path. If its folder exists, `Tuner.restore` resumes it: finished
   trials stay finished, interrupted and errored ones continue from their last checkpoint. With
   a search space, each grid point gets its own Optuna search of `search.num_samples` trials;
5. the end (`summary`): `trials.csv` and the comparison table on the parent run, which ends
   FINISHED when every trial finished, else FAILED; child runs a dying trial left RUNNING are
   closed KILLED.
"""

from __future__ import annotations

from pathlib import Path

from itstudy.config import Study, to_plain
from itstudy.paths import storage_path
from itstudy.sweep.cluster import check_cluster, ray_session
from itstudy.sweep.outcomes import SweepResult
from itstudy.sweep.parent import close_orphans, model_free_baselines, open_parent_run
from itstudy.sweep.preflight import preflight, search_space
from itstudy.sweep.progress import Progress
from itstudy.sweep.summary import summarize
from itstudy.sweep.trainable import SweepContext
from itstudy.sweep.trials import expand_grid, sweep_name
from itstudy.sweep.tuning import run_tune, tune_state_name, untuned_trials
from itstudy.tracking import check_tracking, ensure_experiment, experiment_name, resolve_tracking_uri


def run_sweep(study: Study, experiment_file: Path | None = None) -> SweepResult:
    """Run (or resume) every trial and baseline of `study`; print and return the comparison."""
    trials = expand_grid(study)
    untuned = untuned_trials(study, trials)
    space = search_space(study)
    preflight(study, trials)
    uri = resolve_tracking_uri(study.tracking)
    check_tracking(uri)
    experiment_id = ensure_experiment(uri, experiment_name(study))
    parent = open_parent_run(study, trials, untuned, uri, experiment_id, experiment_file)
    status = "KILLED"  # unless the sweep ends or fails below: an interrupt or exit
    try:
        baselines = model_free_baselines(study, trials, parent.run_id)
        total = len(trials) * (study.search.num_samples if space else 1) + len(untuned)
        with ray_session(uri) as worker_uri:
            check_cluster(trials)
            context = SweepContext(
                study=to_plain(study),
                tracking_uri=worker_uri,
                experiment_id=experiment_id,
                parent_run_id=parent.run_id,
                train_storage_path=f"{storage_path(study.tracking.storage_path)}/{tune_state_name(study, parent.run_id)}-train",
            )
            progress = Progress(sweep_name(study), context, parent, total)
            outcomes = run_tune(study, trials, untuned, space, context, progress)
        result = summarize(study, experiment_file, uri, experiment_id, parent, outcomes, baselines)
        status = "FAILED" if result.failed else "FINISHED"
        print(result.table)
        return result
    except Exception:
        status = "FAILED"
        raise
    finally:
        close_orphans(uri, experiment_id, parent.run_id)
        parent.end(status)
