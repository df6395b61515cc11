"""Runs a sweep on the connected Ray cluster: checks, then a new Tune experiment or the resumption of an
interrupted one with the same name (finished trials are kept, unfinished ones continue), then the results."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune

from biomedclip.data.train_input import filesystem_for
from biomedclip.tune import results
from biomedclip.tune.config import SweepConfig
from biomedclip.tune.driver import EPOCHS, TrialSetup, run_trial
from biomedclip.tune.progress import SweepProgress
from biomedclip.tune.resources import DRIVER_CPUS, plan_concurrency
from biomedclip.tune.scheduler import ResumableASHA
from biomedclip.tune.space import absolute_local_paths, check_space, load_base, param_space


@dataclass
class SweepOutcome:
    experiment_path: str
    records: list[results.TrialRecord]
    table_csv: Path
    table_md: Path
    plot: Path
    best_config: Path | None  # None when no trial reported the metric
    concurrency: int

    @property
    def unfinished(self) -> list[results.TrialRecord]:
        return [r for r in self.records if r.outcome == "unfinished"]


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _storage(sweep: SweepConfig) -> tuple[str, object, str]:
    """(Tune's storage path, filesystem or None, the experiment's URI as trials address it)."""
    root = sweep.storage_path if sweep.storage_path.startswith("s3://") else str(Path(sweep.storage_path).resolve())
    filesystem, path = filesystem_for(root, sweep.s3_endpoint)
    return path, filesystem, f"{root.rstrip('/')}/{sweep.name}"


def _tuner(sweep: SweepConfig, base: dict, concurrency: int, max_t: int, progress: Callable[[str], None]) -> tune.Tuner:
    storage_path, filesystem, experiment_uri = _storage(sweep)
    setup = TrialSetup(absolute_local_paths(base), experiment_uri, sweep.s3_endpoint)
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"CPU": DRIVER_CPUS})
    experiment_path = f"{storage_path}/{sweep.name}"
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem):
        progress(f"resuming the sweep in {experiment_uri} (its stored search space and scheduler are used)")
        return tune.Tuner.restore(experiment_path, trainable, resume_errored=True, storage_filesystem=filesystem)
    scheduler = ResumableASHA(time_attr=EPOCHS, metric=sweep.scheduler.metric, mode=sweep.scheduler.mode,
                              max_t=max_t, grace_period=sweep.scheduler.grace_period,
                              reduction_factor=sweep.scheduler.reduction_factor)
    return tune.Tuner(
        trainable, param_space=param_space(sweep),
        tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=sweep.num_samples,
                                    max_concurrent_trials=concurrency, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=sweep.name, storage_path=storage_path, storage_filesystem=filesystem,
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=0,
                                  callbacks=[SweepProgress(list(sweep.axes()), sweep.scheduler.metric, max_t)]))


def results_dir(sweep: SweepConfig) -> Path:
    return Path(sweep.results_dir or Path(sweep.storage_path) / sweep.name).resolve()


def run_sweep(sweep: SweepConfig, progress: Callable[[str], None] = print) -> SweepOutcome:
    """Checks the space and the cluster before any trial starts (ConfigError naming the key), then tunes."""
    base = load_base(sweep)
    base_cfg = check_space(sweep, base)
    max_t = sweep.scheduler.max_t or base_cfg.train.epochs
    concurrency = plan_concurrency(sweep, base, ray.cluster_resources())
    progress(f"sweep {sweep.name}: up to {concurrency} trials at once, ASHA on {sweep.scheduler.metric} "
             f"({sweep.scheduler.mode}), {max_t} epochs at most")
    tuner = _tuner(sweep, base, concurrency, max_t, progress)
    grid = tuner.fit()
    axes = list(sweep.axes())
    records = results.collect_trials(grid.experiment_path, grid.filesystem, axes, sweep.scheduler.metric,
                                     sweep.scheduler.mode, max_t)
    out = results_dir(sweep)
    out.mkdir(parents=True, exist_ok=True)
    table_csv, table_md = results.write_table(records, axes, sweep.scheduler.metric, out)
    plot = results.plot_by_axis(records, axes, sweep.scheduler.metric, out / results.PLOT_PNG)
    scored = [r for r in records if r.best is not None]
    best = (results.write_best_config(scored[0], base, sweep.scheduler.metric, sweep.name, out / results.BEST_YAML)
            if scored else None)
    return SweepOutcome(grid.experiment_path, records, table_csv, table_md, plot, best, concurrency)
