"""Hyperparameter sweep on Ray Tune: every trial is a full distributed pretraining run, ASHA stops weak ones early.

    python jobs/sweep.py --config jobs/configs/sweep_tiny.yaml --set data.path=demo_out/pairs
    python jobs/sweep.py --config jobs/configs/sweep_tiny.yaml --set data.path=demo_out/pairs \\
        --set scheduler.max_t=2 --set max_concurrent=2 --set train.epochs=4

`--set` takes sweep keys (scheduler.max_t=2, max_concurrent=2, ...) and pretraining keys (model.*, data.*, train.*,
run.*), which are added to the sweep's base_overrides. Rerunning the same command resumes an interrupted sweep:
finished trials are kept, unfinished ones continue from their last checkpoint. Joins a cluster (RAY_ADDRESS, or
`ray job submit -- python jobs/sweep.py ...`), else starts a local Ray with logical CPUs for max_concurrent trials.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from biomedclip import cli
from biomedclip.config import load_config

if TYPE_CHECKING:
    from biomedclip.tune.config import SweepConfig
    from biomedclip.tune.runner import SweepOutcome

PRETRAIN_SECTIONS = ("model.", "data.", "train.", "run.")


class SweepInterrupted(cli.RunFailed):
    """The sweep stopped with trials unfinished (e.g. Ctrl+C): rerunning resumes it."""


def arguments(parser: argparse.ArgumentParser) -> None:
    """Everything is in the sweep config (base_config, space, scheduler, ...)."""


def load_sweep(path: str | None, overrides: list[str]) -> SweepConfig:
    """The sweep config; `--set` keys of the pretraining sections go to its base_overrides."""
    from biomedclip.train.config import check_initialisation
    from biomedclip.tune.config import SweepConfig
    from biomedclip.tune.space import check_space, load_base

    if path is not None:
        cli.existing(path, "--config")
    pretrain = [item for item in overrides if item.startswith(PRETRAIN_SECTIONS)]
    sweep = load_config(SweepConfig, path, [item for item in overrides if item not in pretrain])
    sweep = dataclasses.replace(sweep, base_overrides=[*sweep.base_overrides, *pretrain])
    check_initialisation(check_space(sweep, load_base(sweep)))  # refuse a bad axis value before Ray starts
    return sweep


def run(args: argparse.Namespace) -> SweepOutcome:
    # Libraries are imported here, not at the top: --help and usage errors answer at once.
    from biomedclip.tune.resources import local_cpus
    from biomedclip.tune.runner import run_sweep
    from biomedclip.tune.space import load_base

    sweep = load_sweep(args.config, args.overrides)
    cli.start_ray(args, lambda machine_cpus: local_cpus(sweep, load_base(sweep), machine_cpus))
    outcome = run_sweep(sweep, progress=lambda line: print(line, flush=True))
    print(outcome.table_md.read_text(), flush=True)
    print(f"table: {outcome.table_md} and {outcome.table_csv}\nplot: {outcome.plot}")
    if outcome.best_config:
        print(f"best config: {outcome.best_config}\n  run it: python jobs/pretrain.py --config {outcome.best_config}")
    if outcome.unfinished:
        raise SweepInterrupted(f"sweep interrupted with {len(outcome.unfinished)} unfinished trials: rerun the same "
                               f"command to resume {outcome.experiment_path}")
    return outcome


JOB = cli.Job(__doc__, arguments, run, config_required=True)

if __name__ == "__main__":
    sys.exit(JOB.main())
