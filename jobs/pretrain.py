"""Pretrain BiomedCLIP on Ray Train from the extraction job's Parquet shards.

    python jobs/pretrain.py --config jobs/configs/tiny.yaml --set data.path=demo_out/corpus [--set key=value ...]

Runs on a local Ray or joins a cluster (RAY_ADDRESS, or `ray job submit -- python jobs/pretrain.py ...`). Rerunning
the same command with the same run.name and storage resumes from the last checkpoint.
"""
from __future__ import annotations

import argparse
import math
import sys

from biomedclip.config import ConfigError, load_config
from biomedclip.ray_runtime import connect_or_start
from biomedclip.train.config import PretrainConfig, check_initialisation
from biomedclip.train.trainer import run_pretraining, workers_cpus


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (model, data, train, run sections)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    parser.add_argument("--num-cpus", type=int, help="logical CPUs of a local Ray (default: enough for the workers "
                                                         "plus one for data loading, at least the machine's cores)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
        check_initialisation(cfg)  # before Ray starts
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    if not cfg.data.path:
        sys.exit("config error: data.path: set it to the extraction output (a directory or s3://bucket/prefix)")
    needed = math.ceil(workers_cpus(cfg)) + 1  # the workers, and one CPU for Ray Data
    connect_or_start(lambda machine_cpus: max(machine_cpus, needed), args.num_cpus)
    outcome = run_pretraining(cfg, progress=lambda line: print(line, flush=True))
    metrics = outcome.result.metrics or {}
    print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    if outcome.result.checkpoint is not None:
        print(f"last checkpoint: {outcome.result.checkpoint.path}")
    return outcome


if __name__ == "__main__":
    main()
