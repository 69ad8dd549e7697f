"""The sweep's live progress: one printed line and one MLflow update on the parent run per trial event.

`Progress` is a Tune callback. It also times each trial from Tune's start to its end, for the
orchestration-overhead figures of the summary.
"""

from __future__ import annotations

import time

from ray import tune

from itstudy.sweep.trainable import SweepContext, resolve_trial
from itstudy.tracking import RunLogger


class Progress(tune.Callback):
    """Trials done / running / failed with their key metrics, printed and on the parent run."""

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
        # `Tuner.restore` unpickles the saved callbacks: pickle the name, so a resumed sweep reports to this invocation's.
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
"""The callback of each sweep running in this process, by sweep name (what `__reduce__` pickles)."""


def _live_progress(sweep: str) -> Progress:
    return _LIVE_PROGRESS[sweep]
