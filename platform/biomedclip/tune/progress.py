"""A bar of the sweep's trials (finished / planned, with an ETA) and one line when a trial starts or ends."""

from __future__ import annotations

from ray import tune
from tqdm import tqdm

from biomedclip.progress import bar
from biomedclip.tune.driver import EPOCHS, SAMPLES_PER_S


class SweepProgress(tune.Callback):
    """Draws in the process that runs the sweep. Tune stores its callbacks with the experiment and a resumed sweep
    runs in a new process, so the bar is made on first use and never pickled."""

    def __init__(self, axes: list[str], metric: str, max_t: int):
        self.axes, self.metric, self.max_t = axes, metric, max_t
        self._bar: tqdm | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bar": None}

    def _values(self, trial) -> str:
        return ", ".join(f"{key}={trial.config.get(key)}" for key in self.axes)

    def _trials_bar(self, trials) -> tqdm:
        if self._bar is None:
            self._bar = bar(desc="trials", unit="trial")
        self._bar.total = len(trials)
        self._bar.n = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
        self._bar.refresh()
        return self._bar

    def _line(self, trials, text: str) -> None:
        self._trials_bar(trials).write(text)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trials, f"trial {trial.trial_id} started ({self._values(trial)})")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric not in result:
            return
        speed = f", {result[SAMPLES_PER_S]:.1f} pairs/s" if SAMPLES_PER_S in result else ""
        self._trials_bar(trials).set_postfix_str(
            f"{trial.trial_id} epoch {result[EPOCHS]}/{self.max_t}: {self.metric} {result[self.metric]:.4f}{speed}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = (trial.last_result or {}).get(EPOCHS, 0)
        ended = "completed" if epochs >= self.max_t else "stopped early by ASHA"
        score = (trial.last_result or {}).get(self.metric)
        metric = f": {self.metric} {score:.4f}" if score is not None else ""
        self._line(trials, f"trial {trial.trial_id} {ended} after {epochs} epochs ({self._values(trial)}){metric}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, f"trial {trial.trial_id} failed ({self._values(trial)}): see {trial.path}/error.txt")

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._trials_bar(trials).close()
            self._bar = None
