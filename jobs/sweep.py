"""Hyperparameter sweep on Ray Tune: every trial is a full distributed pretraining run, ASHA stops weak ones early.

    python jobs/sweep.py --config jobs/configs/sweep_tiny.yaml --set data.path=demo_out/corpus [--set key=value ...]

`--set` takes sweep keys (scheduler.max_t=2, max_concurrent=2, ...) and pretraining keys (model.*, data.*, train.*,
run.*), which are added to the sweep's base_overrides. Rerunning the same command resumes an interrupted sweep:
finished trials are kept, unfinished ones continue from their last checkpoint. Joins a cluster (RAY_ADDRESS, or
`ray job submit -- python jobs/sweep.py ...`), else starts a local Ray with logical CPUs for max_concurrent trials.
"""
from __future__ import annotations

import argparse
import sys

from biomedclip.config import ConfigError, load_config
from biomedclip.ray_runtime import connect_or_start
from biomedclip.train.config import check_initialisation
from biomedclip.tune.config import SweepConfig
from biomedclip.tune.resources import local_cpus
from biomedclip.tune.runner import run_sweep
from biomedclip.tune.space import check_space, load_base

PRETRAIN_SECTIONS = ("model.", "data.", "train.", "run.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="sweep YAML (base_config, space, scheduler, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep value, or a pretraining value of the base config (repeatable)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="logical CPUs of a local Ray (default: the machine's, at least max_concurrent trials')")
    return parser.parse_args(argv)


def load_sweep(path: str, overrides: list[str]) -> SweepConfig:
    pretrain = [item for item in overrides if item.startswith(PRETRAIN_SECTIONS)]
    sweep = load_config(SweepConfig, path, [item for item in overrides if item not in pretrain])
    sweep.base_overrides += pretrain
    check_initialisation(check_space(sweep, load_base(sweep)))  # refuse a bad axis value before Ray starts
    return sweep


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    try:
        sweep = load_sweep(args.config, args.overrides)
        connect_or_start(lambda machine_cpus: local_cpus(sweep, load_base(sweep), machine_cpus), args.num_cpus)
        outcome = run_sweep(sweep, progress=lambda line: print(line, flush=True))
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    print(outcome.table_md.read_text(), flush=True)
    print(f"table: {outcome.table_md} and {outcome.table_csv}\nplot: {outcome.plot}")
    if outcome.best_config:
        print(f"best config: {outcome.best_config}\n  run it: python jobs/pretrain.py --config {outcome.best_config}")
    if outcome.unfinished:
        sys.exit(f"sweep interrupted with {len(outcome.unfinished)} unfinished trials: rerun the same command "
                 f"to resume {outcome.experiment_path}")
    return outcome


if __name__ == "__main__":
    main()
