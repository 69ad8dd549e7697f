"""Sweeps: a study's grid of trials on Ray Tune, with its baselines, tracked in MLflow, resumable.

    from itstudy.sweep import run_sweep
    result = run_sweep(load_study("experiments/demo.yaml"), experiment_file=Path("experiments/demo.yaml"))

One concept per module, in the order a sweep meets them:
- `trials`: the grid expanded into trials with stable keys (plain Python);
- `preflight`: what is refused before Ray starts or MLflow is written;
- `parent`: the sweep's MLflow parent run, its model-free baselines, orphaned child runs;
- `lock`: one invocation of a sweep at a time (file lock or lease), serialised store creation;
- `cluster`: the Ray session, the tracking URI workers reach, per-trial resources;
- `tuning`: the Tune experiments planned, their Tuners (new or restored), each trial's outcome;
- `trainable`: what runs inside one Tune trial;
- `progress`: the live progress line and parent-run metrics, a Tune callback;
- `summary` and `table`: trials.csv and the comparison table the sweep ends with;
- `outcomes`: what a sweep returns;
- `driver`: `run_sweep`, the whole invocation top to bottom.

`run_sweep` is imported on first use, so that `itstudy.sweep.trials` loads without Ray or MLflow.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "run_sweep":
        from itstudy.sweep.driver import run_sweep

        return run_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
