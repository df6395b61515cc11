"""One line per trial event, so that a person can follow a sweep between Tune's periodic status tables."""
from __future__ import annotations

from ray import tune

from biomedclip.tune.driver import EPOCHS, SAMPLES_PER_S


class SweepProgress(tune.Callback):
    """Prints (in the process that runs the sweep) when a trial starts, each epoch's metric, and how it ended.
    Prints directly: Tune stores its callbacks with the experiment, and a resumed sweep runs in a new process."""

    def __init__(self, axes: list[str], metric: str, max_t: int):
        self.axes, self.metric, self.max_t = axes, metric, max_t

    def _values(self, trial) -> str:
        return ", ".join(f"{key}={trial.config.get(key)}" for key in self.axes)

    def on_trial_start(self, iteration, trials, trial, **info):
        print(f"trial {trial.trial_id} started ({self._values(trial)})", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric not in result:
            return
        speed = f", {result[SAMPLES_PER_S]:.1f} pairs/s" if SAMPLES_PER_S in result else ""
        print(f"trial {trial.trial_id} epoch {result[EPOCHS]}/{self.max_t}: {self.metric} {result[self.metric]:.4f}"
              f"{speed}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get(EPOCHS, 0)
        ended = "completed" if epochs >= self.max_t else "stopped early by ASHA"
        print(f"trial {trial.trial_id} {ended} after {epochs} epochs ({self._values(trial)})", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"trial {trial.trial_id} failed ({self._values(trial)}): see {trial.path}/error.txt", flush=True)
