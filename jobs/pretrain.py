"""Pretrain BiomedCLIP on Ray Train from the extraction job's Parquet shards.

    python jobs/pretrain.py --config jobs/configs/tiny.yaml --set data.path=demo_out/pairs
    python jobs/pretrain.py --config jobs/configs/paper.yaml --set data.path=s3://bucket/pairs \\
        --set run.output_dir=s3://bucket/runs/paper --set run.num_workers=8

Runs on a local Ray or joins a cluster (RAY_ADDRESS, or `ray job submit -- python jobs/pretrain.py ...`).
run.output_dir (a folder, s3:// or any pyarrow URI) receives tokenizer/, final/, open_clip/, tensorboard/, curves.png
and, unless run.storage_path says otherwise, checkpoints/. Rerunning the same command with the same run.name and
storage resumes from the last checkpoint, with the run's tokenizer, on any cluster.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING

from biomedclip import cli

if TYPE_CHECKING:
    from biomedclip.train.trainer import PretrainResult


def arguments(parser: argparse.ArgumentParser) -> None:
    """Everything is in the config (model, data, train and run sections)."""


def run(args: argparse.Namespace) -> PretrainResult:
    # Libraries are imported here, not at the top: --help and usage errors answer at once.
    from biomedclip.train.config import PretrainConfig, check_initialisation
    from biomedclip.train.trainer import output_location, run_pretraining, workers_cpus

    cfg = cli.load(PretrainConfig, args)
    check_initialisation(cfg)  # before Ray starts
    output_location(cfg)  # refuses a URI scheme pyarrow cannot open
    if not cfg.data.path:
        raise cli.UsageError("data.path: set it to the extraction output (a directory or s3://bucket/prefix)")
    cli.existing(cfg.data.path, "data.path")
    needed = math.ceil(workers_cpus(cfg)) + 1  # the workers, and one CPU for Ray Data
    cli.start_ray(args, lambda machine_cpus: max(machine_cpus, needed))
    outcome = run_pretraining(cfg, progress=lambda line: print(line, flush=True))
    metrics = outcome.result.metrics or {}
    rows = [(key, f"{value:.4g}") for key, value in metrics.items() if key.startswith("val/") or key == "train/loss"]
    rows.append(("checkpoint", outcome.result.checkpoint.path if outcome.result.checkpoint else "none"))
    if outcome.artifact_dir:
        rows += [("model", outcome.artifact_dir), ("open_clip", outcome.open_clip_dir)]
    cli.print_table(rows)
    return outcome


JOB = cli.Job(__doc__, arguments, run, config_required=True)

if __name__ == "__main__":
    sys.exit(JOB.main())
