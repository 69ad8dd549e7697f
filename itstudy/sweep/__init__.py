"""Sweeps: a study's grid of trials on Ray Tune, with its baselines, tracked in MLflow, resumable.

    from itstudy.sweep import run_sweep
    result = run_sweep(load_study("experiments/demo.yaml"), experiment_file=Path("experiments/demo.yaml"))

- `trials`: the grid expanded into trials with stable keys (plain Python);
- `trainable`: what runs inside one Tune trial;
- `driver`: `run_sweep`, the Tune and MLflow orchestration, resume;
- `table`: the comparison table the sweep prints.
"""

from itstudy.sweep.driver import SweepResult, TrialOutcome, run_sweep

__all__ = ["SweepResult", "TrialOutcome", "run_sweep"]
