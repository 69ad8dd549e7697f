"""The sweep's live progress: a line per trial event and, every `PROGRESS_EVERY_S`, one line per running
training trial (step, loss, tokens/s, ETA), printed; the counts also go to the parent run.

`Progress` is a Tune callback. A running trial's line is the `itstudy.progress` tag its training
loop keeps current (`Reporter.show_progress`), read from MLflow: it reaches the driver from any
node of a cluster, and the UI shows the same line. It also times each trial from Tune's start
to its end, for the orchestration-overhead figures of the summary.
"""

from __future__ import annotations

import logging
import time

from ray import tune

from itstudy.sweep.trainable import SweepContext, resolve_trial, run_name
from itstudy.sweep.trials import Trial
from itstudy.tracking import RunLogger, check_server, find_runs
from itstudy.training.reporter import PROGRESS_TAG

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 60.0
"""Seconds between two progress lines of a running trial: a few lines per trial in a demo's log."""


class Progress(tune.Callback):
    """Trials done / running / failed with their key metrics, printed and on the parent run."""

    def __init__(self, sweep: str, context: SweepContext, parent: RunLogger, total: int):
        self.sweep = sweep
        self.context = context
        self.parent = parent
        self.total = total
        self.status: dict[str, str] = {}
        self.trials: dict[str, Trial] = {}  # by Tune trial id: resolving applies the config, so once per trial
        self.began = time.monotonic()
        self.started: dict[str, float] = {}
        self.windows: dict[str, tuple[float, float]] = {}
        self.events = 0
        self.last_poll = time.monotonic()
        self.shown: dict[str, str] = {}  # by run name: the progress line printed last
        _LIVE_PROGRESS[sweep] = self

    def __reduce__(self):
        # `Tuner.restore` unpickles the saved callbacks: pickle the name, so a resumed sweep reports to this invocation's.
        return (_live_progress, (self.sweep,))

    def _trial(self, trial) -> Trial:
        if trial.trial_id not in self.trials:
            self.trials[trial.trial_id] = resolve_trial(trial.config, self.context)
        return self.trials[trial.trial_id]

    def _key(self, trial) -> str:
        return self._trial(trial).key

    def on_trial_start(self, iteration, trials, trial, **info):
        # Counted, not printed: the trial's progress lines say that it runs.
        self.started[self._key(trial)] = time.monotonic() - self.began
        self._update(trials, None, trial, "RUNNING")

    def on_trial_complete(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self._stop_clock(key)
        result = trial.last_result or {}
        figures = ", ".join(f"{name} {result[name]:.1f}" for name in ("exact_match", "rougeL") if name in result)
        earlier = " (finished in an earlier run)" if result.get("already_finished") else ""
        self._update(trials, f"finished {run_name(self._trial(trial))}: {figures}{earlier}", trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info):
        key = self._key(trial)
        self._stop_clock(key)
        self._update(trials, f"FAILED {run_name(self._trial(trial))}: see error.txt in its MLflow run", trial, "ERROR")

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last_poll >= PROGRESS_EVERY_S:
            self.last_poll = time.monotonic()
            self.show_running()

    def show_running(self) -> None:
        """One line per running child run whose progress moved since it was last printed."""
        try:
            check_server(self.parent.uri)  # in seconds: MLflow's own retries would hold Tune's loop for minutes
            children = {"mlflow.parentRunId": self.parent.run_id}
            running = find_runs(self.parent.uri, self.context.experiment_id, children, status="RUNNING")
        except Exception as error:  # the store is down: the trials keep their records; the view waits
            log.debug("progress not read from MLflow: %s", error)
            return
        for run in sorted(running, key=lambda run: run.info.run_name):
            line = run.data.tags.get(PROGRESS_TAG)
            if line and self.shown.get(run.info.run_name) != line:
                self.shown[run.info.run_name] = line
                print(f"[{self.sweep}]   {run.info.run_name}: {line}", flush=True)

    def _stop_clock(self, key: str) -> None:
        if key in self.started:
            self.windows[key] = (self.started.pop(key), time.monotonic() - self.began)

    def _update(self, trials, event: str | None, trial, status: str) -> None:
        # Tune sets a trial's status before or after the callback depending on the event (a starting
        # trial is still PENDING): take every trial's status from the list, the event's own from the event.
        for other in trials:
            self.status[self._key(other)] = other.status
        self.status[self._key(trial)] = status
        counts = {state: sum(value == state for value in self.status.values()) for state in ("TERMINATED", "RUNNING", "ERROR")}
        line = f"{counts['TERMINATED']}/{self.total} done, {counts['RUNNING']} running, {counts['ERROR']} failed"
        if event:
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
