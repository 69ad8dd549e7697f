"""The sweep's MLflow parent run: found (or created), opened, its model-free baselines, its orphans closed.

One parent run per sweep, named `<study> sweep <digest8>` and found again by its tag
`itstudy.sweep` (`<study>-<digest8>`), so a rerun of the same command continues it. It holds the
experiment file, the config, the trial list and the code version; every trial and baseline is one
of its child runs. A child run is never left RUNNING: one that a killed driver or trial left so is
ended FAILED with the reason in the tag `itstudy.failure_reason` (a resumed trial reopens it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from itstudy.baseline_run import BaselineResults, run_baselines
from itstudy.baselines import BASELINES as MODEL_FREE_BASELINES
from itstudy.config import Study, changed_result_keys, to_plain
from itstudy.sweep.trials import Trial, evaluation_set_key, sweep_name
from itstudy.tracking import (
    FAILURE_REASON_TAG,
    FoundRun,
    RunLogger,
    download_artifact,
    find_runs,
    get_or_create_run,
    get_run,
    list_artifacts,
    reopen_run,
)


def find_parent_run(study: Study, uri: str, experiment_id: str) -> FoundRun:
    """The sweep's parent run, found by its name (a rerun continues it) or created."""
    name = sweep_name(study)
    identity = {"itstudy.kind": "sweep", "itstudy.sweep": name}
    return get_or_create_run(uri, experiment_id, parent_run_name(study), identity, tags={"itstudy.study": study.name})


def parent_run_name(study: Study) -> str:
    """`<study> sweep <digest8>`: the study first, so that the name reads whole in the UI's run list."""
    return f"{study.name} sweep {sweep_name(study).removeprefix(study.name + '-')}"


def open_parent_run(
    study: Study, found: FoundRun, trials: list[Trial], untuned: list[Trial], uri: str, experiment_file: Path | None
) -> RunLogger:
    """The parent run `found` marked RUNNING again, its config and trial list logged."""
    name = sweep_name(study)
    if not found.created:
        print(f"[{name}] resuming sweep: MLflow parent run {found.run_id}")
    else:
        say_what_changed(study, uri, found.run_id)
    reopen_run(uri, found.run_id)
    parent = RunLogger(uri, found.run_id)
    parent.log_config(study)
    parent.log_environment()
    if experiment_file is not None:
        parent.log_file(experiment_file, "experiment")
    listing = [{"key": trial.key, "kind": "trial", "point": trial.point} for trial in trials]
    listing += [{"key": trial.key, "kind": "untuned", "point": trial.point} for trial in untuned]
    parent.log_dict_yaml(listing, "trials.yaml")
    return parent


def say_what_changed(study: Study, uri: str, parent_run_id: str) -> None:
    """A new sweep of a study that already has one in this store: name, in one line, the config
    keys that shape results and differ, so a changed setting is a clear restart, not a silent one."""
    experiment_id = get_run(uri, parent_run_id).info.experiment_id
    identity = {"itstudy.kind": "sweep", "itstudy.study": study.name}
    earlier = [run for run in find_runs(uri, experiment_id, identity) if run.info.run_id != parent_run_id]
    if not earlier or "config.yaml" not in list_artifacts(uri, earlier[0].info.run_id):
        return
    with tempfile.TemporaryDirectory() as scratch:
        saved = yaml.safe_load(download_artifact(uri, earlier[0].info.run_id, "config.yaml", scratch).read_text())
    changed = changed_result_keys(saved, to_plain(study)) or [
        "no key that shapes results (grid, search, baselines, or the data or tokenizer files)"
    ]
    print(
        f"[{sweep_name(study)}] a new sweep: its config differs from the earlier sweep {earlier[0].info.run_name} "
        f"in {', '.join(changed)}; that sweep's runs stay in MLflow beside this one's"
    )


def model_free_baselines(study: Study, trials: list[Trial], parent_run_id: str) -> list[BaselineResults]:
    """Each model-free baseline once per test-task set and seed (finished runs are reused, not redone)."""
    names = [name for name in study.baselines if name in MODEL_FREE_BASELINES]
    if not names:
        return []
    groups: dict[str, tuple[Study, set[int]]] = {}
    for trial in trials:
        groups.setdefault(evaluation_set_key(trial.study), (trial.study, set()))[1].add(trial.study.seed)
    results = [run_baselines(group, names, sorted(seeds), parent_run_id) for group, seeds in groups.values()]
    for result in results:
        reused = sum(record.reused for record in result.records)
        print(
            f"[{sweep_name(study)}] baselines {', '.join(names)} on {len(result.tasks)} test tasks, "
            f"seeds {', '.join(map(str, result.seeds))}: {len(result.records) - reused} run, {reused} reused"
        )
    return results


def close_orphans(
    uri: str, experiment_id: str, parent_run_id: str, reason: str, finished: frozenset[str] = frozenset()
) -> None:
    """End every child run still RUNNING: FINISHED if its id is in `finished` (its trial finished but
    could not end its run: the store was down), else FAILED with `reason` tagged."""
    for run in find_runs(uri, experiment_id, {"mlflow.parentRunId": parent_run_id}, status="RUNNING"):
        logger = RunLogger(uri, run.info.run_id)
        if run.info.run_id in finished:
            logger.end("FINISHED")
            continue
        logger.set_tags({FAILURE_REASON_TAG: reason})
        logger.end("FAILED")
