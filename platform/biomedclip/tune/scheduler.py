"""ASHA that keeps its rungs when an interrupted sweep is resumed.

Tune does not save a scheduler's state with the experiment, so after a resume ASHA would compare the remaining
trials only with each other: the first to reach a rung would always go on. Tune adds every restored trial to the
scheduler again; this subclass then replays the trial's recorded results (its result.json) into the rungs.
"""
from __future__ import annotations

import json
from pathlib import PurePosixPath

from ray.air.constants import EXPR_RESULT_FILE
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler


def recorded_results(trial: Trial) -> list[dict]:
    """The results Tune wrote for `trial` in an earlier run of the sweep; none for a new trial."""
    storage = getattr(trial, "storage", None)
    if storage is None or not storage.trial_dir_name:  # a new trial: no folder yet
        return []
    path = str(PurePosixPath(storage.trial_fs_path) / EXPR_RESULT_FILE)
    try:
        with storage.storage_filesystem.open_input_stream(path) as stream:
            lines = stream.readall().decode().splitlines()
    except (FileNotFoundError, OSError):
        return []
    return [json.loads(line) for line in lines if line.strip()]


class ResumableASHA(ASHAScheduler):
    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        bracket = self._trial_info[trial.trial_id]
        for result in recorded_results(trial):
            if self._time_attr in result and self._metric in result:
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[self._metric])
