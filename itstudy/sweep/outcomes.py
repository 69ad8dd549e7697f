"""What a sweep produces: how each trial ended, and the sweep's result. Plain data: no Ray, no MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from itstudy.baseline_run import BaselineResults


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
