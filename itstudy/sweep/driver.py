"""`itstudy run`: a whole study as one sweep on Ray Tune, every trial and baseline in MLflow.

    result = run_sweep(load_study("experiments/demo.yaml"), experiment_file=Path("experiments/demo.yaml"))

What one invocation does:
1. pre-flight, before Ray starts or MLflow is written: expands the grid (`trials`), checks each
   trial's batch arithmetic for its worker count, the models, the data and variants (a simplified
   definition on a task without labels fails here), the search space and the Ray address;
2. MLflow: one experiment per study and one parent run per sweep, named `<study>-<digest8>` and
   found again by that name, holding the experiment file, the config, the trial list and the
   code version;
3. the model-free baselines, once per test-task set and seed (`itstudy.baseline_run`), children
   of the parent run; the untuned-model baseline runs as a Tune trial beside the training trials;
4. Ray Tune: one Tune experiment named after the sweep under the storage path. If its folder
   exists, `Tuner.restore` resumes it: finished trials stay finished, interrupted and errored
   ones continue from their last checkpoint (a new Tuner would start over: ray#28722). With a
   search space, each grid point gets its own Optuna search of `search.num_samples` trials;
5. the end: `trials.csv` and the comparison table on the parent run, which ends FINISHED when
   every trial finished, else FAILED; child runs a dying trial left RUNNING are closed KILLED.

Resources: a single-worker trial takes cpus/gpus_per_worker (a fraction of a GPU lets small
trials share one) and runs the training loop in the Tune trial itself; a multi-worker trial's
driver takes one unit of the custom `trial_driver` resource instead of a CPU (a Tune driver
otherwise holds a CPU that its own Train workers need) and its TorchTrainer reserves the
workers. Trials in flight: resources.max_concurrent_trials, else as many as the cluster fits.

Never uses `fail_fast` (it makes a sweep unrestorable, ray#30584). Refuses with ConfigError,
before anything starts: a RAY_ADDRESS that is a job-server URL, an unknown search-space type, a
search over a swept key, a cluster without `trial_driver` for multi-worker trials.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ray
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from itstudy.baseline_run import BaselineResults, run_baselines
from itstudy.baselines import BASELINES as MODEL_FREE_BASELINES
from itstudy.config import ConfigError, Study, to_plain, with_overrides
from itstudy.data import SelectionError, SourceError, SyntheticError, TaskFileError, load_study_data
from itstudy.sweep.table import METRICS, Row, format_table
from itstudy.sweep.trainable import SweepContext, reopen, resolve_trial, run_trial
from itstudy.sweep.trials import Trial, expand_grid, sweep_name, evaluation_set_key, untuned_trial
from itstudy.tracking import (
    RunLogger,
    check_tracking,
    create_run,
    ensure_experiment,
    experiment_name,
    find_runs,
    resolve_tracking_uri,
)
from itstudy.training.runner import check_run, storage_path, worker_env
from itstudy.variants import VariantError, apply_variant

TRIAL_DRIVER = "trial_driver"
"""Custom Ray resource that the driver of a multi-worker trial takes instead of a CPU."""
LOCAL_TRIAL_DRIVERS = 64
"""`trial_driver` units of a local Ray started by the sweep (a count of drivers, not a real limit)."""
SEARCH_TYPES = {
    "loguniform": lambda spec: tune.loguniform(spec["low"], spec["high"]),
    "uniform": lambda spec: tune.uniform(spec["low"], spec["high"]),
    "choice": lambda spec: tune.choice(spec["values"]),
}


@dataclass(frozen=True)
class TrialOutcome:
    """How one trial (training run or untuned baseline) of the sweep ended."""

    key: str
    kind: str
    """trial or untuned."""
    run_id: str | None
    """Its MLflow child run (None if the trial never started)."""
    label: str
    """The configuration it belongs to: what its seeds share."""
    seed: int
    workers: int
    status: str
    """FINISHED or FAILED."""
    metrics: dict[str, float]
    window: tuple[float, float] | None
    """(start, end) in seconds since the sweep's Tune run began, from Tune starting the trial
    (its worker process ready) to its end; None if it finished in an earlier invocation."""

    @property
    def wall_s(self) -> float | None:
        return self.window[1] - self.window[0] if self.window else None

    @property
    def overhead_s(self) -> float | None:
        """Orchestration overhead: wall time minus data preparation and the training loop."""
        if self.wall_s is None or "train_loop_s" not in self.metrics or self.metrics.get("already_finished"):
            return None
        return self.wall_s - self.metrics["train_loop_s"] - self.metrics.get("prepare_s", 0.0)


@dataclass(frozen=True)
class SweepResult:
    """What `run_sweep` returns; `table` is what it printed."""

    study: str
    sweep: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    outcomes: tuple[TrialOutcome, ...]
    baselines: tuple[BaselineResults, ...]
    table: str

    @property
    def failed(self) -> list[TrialOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status != "FINISHED"]


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
                train_storage_path=f"{storage_path(study)}/{sweep_name(study)}-train",
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


# --- before anything starts --------------------------------------------------------------------


def untuned_trials(study: Study, trials: list[Trial]) -> list[Trial]:
    """One untuned-model baseline per distinct (test prompts, model, seed), if the study asks for it."""
    if "untuned" not in study.baselines:
        return []
    return list({baseline.key: baseline for baseline in map(untuned_trial, trials)}.values())


def search_space(study: Study) -> dict[str, Any] | None:
    """The Tune search space of `search.space`, each key checked against the config; None without a search."""
    if study.search is None:
        return None
    if not study.search.space:
        raise ConfigError("search.space: empty; give at least one key, e.g. train.learning_rate: {type: loguniform, low: 1e-5, high: 1e-3}")
    space = {}
    for key, spec in study.search.space.items():
        where = f"search.space.{key}"
        if key in study.grid:
            raise ConfigError(f"{where}: '{key}' is also a grid axis; sweep it in one place")
        kind = spec.get("type")
        if kind not in SEARCH_TYPES:
            raise ConfigError(f"{where}.type: expected one of {sorted(SEARCH_TYPES)}, got {kind!r}")
        try:
            space[key] = SEARCH_TYPES[kind](spec)
            example = spec["values"][0] if kind == "choice" else spec["low"]
        except KeyError as missing:
            raise ConfigError(f"{where}: type {kind} needs '{missing.args[0]}'") from None
        except (ValueError, TypeError, IndexError) as error:
            raise ConfigError(f"{where}: {error}") from None
        with_overrides(study, {key: example}, origin=where)  # the key must name a field of that type
    return space


def preflight(study: Study, trials: list[Trial]) -> None:
    """Refuse what would fail inside Ray, while nothing has started yet."""
    address = os.environ.get("RAY_ADDRESS", "")
    if urlparse(address).scheme in ("http", "https"):
        raise ConfigError(
            f"RAY_ADDRESS={address} is a job-server address: submit the study with `ray job submit` "
            f"(cluster/README.md), or unset RAY_ADDRESS to run on a local Ray"
        )
    for trial in trials:
        try:
            check_run(trial.study, trial.study.resources.workers_per_trial)
        except ConfigError as error:
            raise ConfigError(f"trial {trial.key}: {error}") from None
    check_variants(trials)


def check_variants(trials: list[Trial]) -> None:
    """Load each distinct data selection and apply its variants, so that a misfit fails before Ray starts."""
    checked = set()
    for trial in trials:
        study = trial.study
        identity = (study.data.model_dump_json(), study.variant.model_dump_json())
        if identity in checked:
            continue
        checked.add(identity)
        try:
            data = load_study_data(study.data, study.seed)
            for task in data.train + (data.test if study.variant.apply_to_test else ()):
                apply_variant(task, study.variant, study.seed)
        except (SelectionError, SourceError, SyntheticError, TaskFileError) as error:
            raise ConfigError(f"data: {error}") from None
        except VariantError as error:
            raise ConfigError(f"variant: {error}") from None


# --- MLflow: the parent run, the model-free baselines, what is left RUNNING ----------------------


def open_parent_run(
    study: Study, trials: list[Trial], untuned: list[Trial], uri: str, experiment_id: str, experiment_file: Path | None
) -> RunLogger:
    """The sweep's parent run, found by its name (a rerun continues it) or created; config and trial list logged."""
    name = sweep_name(study)
    found = find_runs(uri, experiment_id, {"itstudy.kind": "sweep", "itstudy.sweep": name})
    if found:
        run_id = found[0].info.run_id
        print(f"[{name}] resuming sweep: MLflow parent run {run_id}")
    else:
        tags = {"itstudy.kind": "sweep", "itstudy.sweep": name, "itstudy.study": study.name}
        run_id = create_run(uri, experiment_id, name, tags)
    parent = RunLogger(uri, run_id)
    reopen(parent)
    parent.log_config(study)
    parent.log_environment()
    if experiment_file is not None:
        parent.log_file(experiment_file, "experiment")
    listing = [{"key": trial.key, "kind": "trial", "point": trial.point} for trial in trials]
    listing += [{"key": trial.key, "kind": "untuned", "point": trial.point} for trial in untuned]
    parent.log_dict_yaml(listing, "trials.yaml")
    return parent


def model_free_baselines(study: Study, trials: list[Trial], parent_run_id: str) -> list[BaselineResults]:
    """Each model-free baseline once per test-task set and seed (finished runs are reused, not redone)."""
    names = [name for name in study.baselines if name in MODEL_FREE_BASELINES]
    groups: dict[str, tuple[Study, set[int]]] = {}
    for trial in trials:
        groups.setdefault(evaluation_set_key(trial.study), (trial.study, set()))[1].add(trial.study.seed)
    if not names:
        return []
    results = [run_baselines(group, names, sorted(seeds), parent_run_id) for group, seeds in groups.values()]
    for result in results:
        reused = sum(record.reused for record in result.records)
        print(
            f"[{sweep_name(study)}] baselines {', '.join(names)} on {len(result.tasks)} test tasks, "
            f"seeds {', '.join(map(str, result.seeds))}: {len(result.records) - reused} run, {reused} reused"
        )
    return results


def close_orphans(uri: str, experiment_id: str, parent_run_id: str) -> None:
    """End KILLED every child run still RUNNING: its trial was stopped before it could end its run."""
    for run in find_runs(uri, experiment_id, {"mlflow.parentRunId": parent_run_id}, status="RUNNING"):
        RunLogger(uri, run.info.run_id).end("KILLED")


# --- Ray -------------------------------------------------------------------------------------


@contextmanager
def ray_session(uri: str) -> Iterator[str]:
    """Ray for the sweep, its workers given the tracking settings; yields the URI as workers reach it.

    RAY_ADDRESS (set inside `ray job submit`) names the cluster; without it a local Ray starts,
    limited to this machine's CPUs. A Ray already initialised by the caller is used as it is.
    """
    if ray.is_initialized():
        yield uri
        return
    local = {} if os.environ.get("RAY_ADDRESS") else {"resources": {TRIAL_DRIVER: LOCAL_TRIAL_DRIVERS}, "include_dashboard": False}
    # Inside a job the job's runtime environment applies too; the sweep's tracking settings win.
    os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    ray.init(runtime_env={"env_vars": worker_env(uri)}, **local)
    try:
        worker_uri = worker_tracking_uri(uri)
        if worker_uri != uri:  # the runtime environment is fixed at init: start over with the head's address
            ray.shutdown()
            ray.init(runtime_env={"env_vars": worker_env(worker_uri)}, **local)
        yield worker_uri
    finally:
        ray.shutdown()


def worker_tracking_uri(uri: str) -> str:
    """`uri`, with a loopback host swapped for this (head) node's address when the cluster has other nodes."""
    parsed = urlparse(uri)
    alive = [node for node in ray.nodes() if node["Alive"]]
    if parsed.hostname not in ("127.0.0.1", "localhost") or len(alive) < 2:
        return uri
    host = ray.util.get_node_ip_address()
    return parsed._replace(netloc=f"{host}:{parsed.port}" if parsed.port else host).geturl()


def check_cluster(trials: list[Trial]) -> None:
    if any(trial.study.resources.workers_per_trial > 1 for trial in trials) and not ray.cluster_resources().get(TRIAL_DRIVER):
        raise ConfigError(
            f"resources.workers_per_trial > 1 needs the custom Ray resource '{TRIAL_DRIVER}' on the cluster: "
            f"start its head with --resources='{{\"{TRIAL_DRIVER}\": 16}}' (cluster/local-up.sh does)"
        )


def max_concurrent_trials(study: Study, trials: list[Trial]) -> int:
    """resources.max_concurrent_trials, else how many of the largest trial the cluster fits now (at least 1)."""
    if study.resources.max_concurrent_trials:
        return study.resources.max_concurrent_trials
    available = ray.cluster_resources()
    fits = []
    for trial in trials:
        resources = trial.study.resources
        fit = available.get("CPU", 0) // (resources.workers_per_trial * resources.cpus_per_worker)
        if resources.gpus_per_worker:
            fit = min(fit, available.get("GPU", 0) // (resources.workers_per_trial * resources.gpus_per_worker))
        fits.append(fit)
    return max(1, int(min(fits)))


class TrialResources:
    """Tune's per-trial resource request: what the trial's own config asks for."""

    def __init__(self, context: SweepContext):
        self.context = context

    def __call__(self, config: dict) -> tune.PlacementGroupFactory:
        resources = resolve_trial(config, self.context).study.resources
        if resources.workers_per_trial > 1 and config["trial"]["kind"] == "trial":
            return tune.PlacementGroupFactory([{TRIAL_DRIVER: 1}])
        return tune.PlacementGroupFactory([{"CPU": resources.cpus_per_worker, "GPU": resources.gpus_per_worker}])


class TrialNamer:
    """Tune trial names and folders are the trial keys: readable, and stable across reruns."""

    def __init__(self, context: SweepContext):
        self.context = context

    def __call__(self, trial) -> str:
        return resolve_trial(trial.config, self.context).key


# --- Tune ------------------------------------------------------------------------------------


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
    for name, param_space, searched in plan_experiments(study, trials, untuned, space):
        tuner = make_tuner(study, trials, name, param_space, searched, context, progress)
        for result in tuner.fit():
            outcomes.append(outcome_of(result, context, progress))
    return outcomes


def outcome_of(result: tune.Result, context: SweepContext, progress: Progress) -> TrialOutcome:
    """A Tune result as a TrialOutcome; its MLflow run gets a pointer to the trial's final checkpoint."""
    trial = resolve_trial(result.config, context)
    identity = {"itstudy.trial_key": trial.key, "mlflow.parentRunId": context.parent_run_id}
    runs = find_runs(context.tracking_uri, context.experiment_id, identity)
    run_id = runs[0].info.run_id if runs else None
    if run_id and result.checkpoint:
        RunLogger(context.tracking_uri, run_id).set_tags({"itstudy.checkpoint": result.checkpoint.path})
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


def plan_experiments(
    study: Study, trials: list[Trial], untuned: list[Trial], space: dict[str, Any] | None
) -> list[tuple[str, dict, bool]]:
    """(Tune experiment name, param space, searched?): the grid in one experiment, or one search per point."""
    name = sweep_name(study)
    baselines = [{"kind": "untuned", "point": trial.point} for trial in untuned]
    if space is None:
        entries = [{"kind": "trial", "point": trial.point} for trial in trials] + baselines
        return [(name, {"trial": tune.grid_search(entries)}, False)]
    plans = [(f"{name}-untuned", {"trial": tune.grid_search(baselines)}, False)] if baselines else []
    for trial in trials:
        plans.append((f"{name}-search-{trial.key}", {"trial": {"kind": "trial", "point": trial.point, "sampled": space}}, True))
    return plans


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
    storage = storage_path(study)
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
        callbacks=[progress],
        verbose=0,  # Progress prints one line per event instead of Tune's tables
        failure_config=tune.FailureConfig(max_failures=study.train.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=study.train.checkpoints_to_keep),
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Progress(tune.Callback):
    """Trials done / running / failed with their key metrics: one printed line and MLflow update per event.

    It also times each trial from Tune's start to its end, for the overhead figures.
    """

    def __init__(self, sweep: str, context: SweepContext, parent: RunLogger, total: int):
        self.sweep = sweep
        self.context = context
        self.parent = parent
        self.total = total
        self.status: dict[str, str] = {}
        self.keys: dict[str, str] = {}  # by Tune trial id: resolving a key applies the config, so once per trial
        self.began = time.monotonic()
        self.started: dict[str, float] = {}
        self.windows: dict[str, tuple[float, float]] = {}
        self.events = 0
        _LIVE_PROGRESS[sweep] = self

    def __reduce__(self):
        # Tune pickles its callbacks with the Tuner and unpickles them on `Tuner.restore`. A
        # restored sweep must report to this invocation's callback (its parent run, its clock),
        # so only the sweep name is pickled and unpickling looks the live instance up.
        return (_live_progress, (self.sweep,))

    def _key(self, trial) -> str:
        if trial.trial_id not in self.keys:
            self.keys[trial.trial_id] = resolve_trial(trial.config, self.context).key
        return self.keys[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[self._key(trial)] = time.monotonic() - self.began
        self._update(trials, f"started {self._key(trial)}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self._stop_clock(key)
        result = trial.last_result or {}
        figures = ", ".join(f"{name} {result[name]:.1f}" for name in ("exact_match", "rougeL") if name in result)
        earlier = " (finished in an earlier run)" if result.get("already_finished") else ""
        self._update(trials, f"finished {key}: {figures}{earlier}", done_key=key)

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self._stop_clock(key)
        self._update(trials, f"FAILED {key}: see error.txt in its MLflow run", failed_key=key)

    def _stop_clock(self, key: str) -> None:
        if key in self.started:
            self.windows[key] = (self.started.pop(key), time.monotonic() - self.began)

    def _update(self, trials, event: str, done_key: str | None = None, failed_key: str | None = None) -> None:
        # Tune reports a trial's status before or after the callback depending on the event: take
        # every trial's status from the list, and the event's own trial from the event.
        for trial in trials:
            self.status[self._key(trial)] = trial.status
        if done_key:
            self.status[done_key] = "TERMINATED"
        if failed_key:
            self.status[failed_key] = "ERROR"
        counts = {state: sum(value == state for value in self.status.values()) for state in ("TERMINATED", "RUNNING", "ERROR")}
        line = f"{counts['TERMINATED']}/{self.total} done, {counts['RUNNING']} running, {counts['ERROR']} failed"
        print(f"[{self.sweep}] {line} | {event}", flush=True)
        self.events += 1
        self.parent.log_metrics(
            {"trials_done": counts["TERMINATED"], "trials_running": counts["RUNNING"], "trials_failed": counts["ERROR"]},
            step=self.events,
        )
        self.parent.set_tags({"itstudy.progress": line})
        self.parent.flush()


_LIVE_PROGRESS: dict[str, Progress] = {}


def _live_progress(sweep: str) -> Progress:
    return _LIVE_PROGRESS[sweep]


# --- the end: summary, table, where to look --------------------------------------------------


def summarize(
    study: Study,
    experiment_file: Path | None,
    uri: str,
    experiment_id: str,
    parent: RunLogger,
    outcomes: list[TrialOutcome],
    baselines: list[BaselineResults],
) -> SweepResult:
    """Log trials.csv, overhead figures and the comparison table on the parent run; build the result."""
    parent.log_text(_csv(outcomes), "trials.csv")
    parent.log_metrics(overhead_metrics(outcomes), step=0)
    seeds = sorted({outcome.seed for outcome in outcomes})
    title = (
        f"Study {study.name} (sweep {sweep_name(study)}): exact match and ROUGE-L (%) on the test tasks, "
        f"mean ± std over seeds {', '.join(map(str, seeds))}"
    )
    table = format_table(title, comparison_rows(outcomes, baselines))
    parent.log_text(table + "\n", "comparison.txt")
    table += "\n" + where_to_look(study, experiment_file, uri, experiment_id, parent.run_id, outcomes)
    return SweepResult(
        study=study.name,
        sweep=sweep_name(study),
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent.run_id,
        outcomes=tuple(outcomes),
        baselines=tuple(baselines),
        table=table,
    )


def comparison_rows(outcomes: list[TrialOutcome], baselines: list[BaselineResults]) -> list[Row]:
    """Configurations (in grid order), then the untuned baselines, then the model-free ones."""
    rows = []
    for kind in ("trial", "untuned"):
        labels = list(dict.fromkeys(outcome.label for outcome in outcomes if outcome.kind == kind))
        for label in labels:
            group = [outcome for outcome in outcomes if outcome.kind == kind and outcome.label == label]
            finished = tuple(outcome.metrics for outcome in group if outcome.status == "FINISHED")
            rows.append(Row(label, finished, expected=len(group), is_baseline=kind == "untuned"))
    for result in baselines:
        suffix = f" [{result.data_key[:8]}]" if len(baselines) > 1 else ""
        for name in result.baselines:
            runs = tuple(record.metrics for record in result.records if record.baseline == name)
            rows.append(Row(f"{name}{suffix}", runs, expected=len(runs), is_baseline=True))
    return rows


def overhead_metrics(outcomes: list[TrialOutcome]) -> dict[str, float]:
    """Median orchestration overhead (s) of the trials timed here, per worker count."""
    metrics = {}
    for workers in sorted({outcome.workers for outcome in outcomes}):
        values = [o.overhead_s for o in outcomes if o.kind == "trial" and o.workers == workers and o.overhead_s is not None]
        if values:
            metrics[f"overhead_median_s_workers{workers}"] = statistics.median(values)
    return metrics


def _csv(outcomes: list[TrialOutcome]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    timing = ("prepare_s", "train_loop_s", "train_fit_s")
    writer.writerow(["key", "kind", "configuration", "seed", "workers", "status", *METRICS, "started_s", "ended_s", "wall_s", *timing, "overhead_s"])
    for o in outcomes:
        window = o.window or (None, None)
        values = [o.metrics.get(name) for name in (*METRICS, *timing)]
        writer.writerow([o.key, o.kind, o.label, o.seed, o.workers, o.status, *values[:2], *window, o.wall_s, *values[2:], o.overhead_s])
    return buffer.getvalue()


def where_to_look(
    study: Study, experiment_file: Path | None, uri: str, experiment_id: str, parent_run_id: str, outcomes: list[TrialOutcome]
) -> str:
    failed = [outcome.key for outcome in outcomes if outcome.status != "FINISHED"]
    lines = [f"MLflow: {uri}, experiment '{experiment_name(study)}' (id {experiment_id}), sweep run {parent_run_id}"]
    if uri.startswith(("http://", "https://")):
        lines.append(f"Open: {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{parent_run_id}")
    else:
        target = experiment_file or study.name
        lines.append(f"Open the MLflow UI: itstudy ui {target}   (or: mlflow ui --backend-store-uri {uri})")
    if failed:
        lines.append(f"{len(failed)} trial(s) failed ({', '.join(failed)}): rerun the same command to retry them.")
    return "\n".join(lines)
