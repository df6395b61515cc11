"""Evaluate a checkpoint: cross-modal retrieval, zero-shot classification or a linear probe -> JSON report + PNGs.

    python jobs/evaluate.py --checkpoint CKPT --task retrieval|zeroshot|linear-probe --data PATH
                            [--test-data PATH] [--config jobs/configs/evaluate.yaml] [--set key=value ...]
                            [--output DIR]

CKPT is a model artifact directory (ours or an open_clip BiomedCLIP one). --data is a Parquet split (retrieval, and
zero-shot with a caption-keyword task) or a labelled dataset: class folders, PCam .h5, RSNA label CSV, path,label CSV.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biomedclip.config import ConfigError, load_config
from biomedclip.evaluate import EvaluateConfig, run_linear_probe, run_retrieval, run_zeroshot
from biomedclip.evaluate.datasets import DatasetError
from biomedclip.evaluate.report import summary
from biomedclip.model.checkpoint import CheckpointError

TASKS = ("retrieval", "zeroshot", "linear-probe")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="model artifact directory")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--test-data", type=Path, help="linear probe: test set (default: a stratified hold-out)")
    parser.add_argument("--config", type=Path, help="YAML with the EvaluateConfig sections")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--output", type=Path, default=Path("eval_out"))
    return parser.parse_args(argv)


def run(args: argparse.Namespace, config: EvaluateConfig) -> dict:
    if args.task == "retrieval":
        return run_retrieval(args.checkpoint, args.data, config, args.output)
    if args.task == "zeroshot":
        return run_zeroshot(args.checkpoint, args.data, config=config, output_dir=args.output)
    return run_linear_probe(args.checkpoint, args.data, args.test_data, config, args.output)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(EvaluateConfig, args.config, args.set)
        print(f"evaluating {args.checkpoint} ({args.task}) on {args.data}", flush=True)
        report = run(args, config)
    except (ConfigError, DatasetError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary(report))
    print(f"report written to {args.output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
