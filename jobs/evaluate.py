"""Evaluate a checkpoint: cross-modal retrieval, zero-shot classification or a linear probe -> JSON report + PNGs.

    python jobs/evaluate.py --checkpoint demo_out/pretrain/final --task retrieval --data demo_out/pairs/test
    python jobs/evaluate.py --checkpoint demo_out/pretrain/final --task zeroshot --data demo_out/pairs/test \\
        --config jobs/configs/evaluate_demo.yaml
    python jobs/evaluate.py --checkpoint MODEL --task linear-probe --data lung_folders/ --test-data lung_test/

--checkpoint is a model artifact directory (ours or an open_clip BiomedCLIP one). --data is a Parquet split
(retrieval, and zero-shot with a caption-keyword task) or a labelled dataset: class folders, PCam .h5, RSNA label
CSV, path,label CSV. --checkpoint, a Parquet --data and --output may be s3:// (or any pyarrow filesystem) URIs, e.g.
`--checkpoint s3://bucket/runs/x/final --data s3://bucket/pairs --output s3://bucket/runs/x/eval`; S3-compatible
servers are reached through $AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import argparse
import sys

from biomedclip import cli

TASKS = ("retrieval", "zeroshot", "linear-probe")


def arguments(parser: argparse.ArgumentParser) -> None:
    # strings, not Paths: a Path would fold s3://bucket into s3:/bucket
    parser.add_argument("--checkpoint", required=True, help="model artifact directory (folder or URI)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--data", required=True, help="Parquet split (folder or URI) or labelled dataset")
    parser.add_argument("--test-data", help="linear probe: test set (none: a stratified hold-out)")
    parser.add_argument("--output", default="eval_out", help="folder or URI for the report and plots")


def run(args: argparse.Namespace) -> dict:
    for option, path in (("--checkpoint", args.checkpoint), ("--data", args.data), ("--test-data", args.test_data)):
        if path is not None:
            cli.existing(path, option)
    # Libraries are imported here, not at the top: --help and usage errors answer at once.
    from biomedclip.evaluate import EvaluateConfig, run_linear_probe, run_retrieval, run_zeroshot
    from biomedclip.evaluate.report import summary

    config = cli.load(EvaluateConfig, args)
    cli.location(args.output, "--output")
    cli.start_ray(args)
    if args.task == "retrieval":
        report = run_retrieval(args.checkpoint, args.data, config, args.output)
    elif args.task == "zeroshot":
        report = run_zeroshot(args.checkpoint, args.data, config=config, output_dir=args.output)
    else:
        report = run_linear_probe(args.checkpoint, args.data, args.test_data, config, args.output)
    print(summary(report))
    print(f"report written to {args.output}/")
    return report


def user_errors() -> tuple[type[Exception], ...]:
    from biomedclip.evaluate.datasets import DatasetError
    from biomedclip.model.checkpoint import CheckpointError

    return DatasetError, CheckpointError


JOB = cli.Job(__doc__, arguments, run, user_errors=user_errors)

if __name__ == "__main__":
    sys.exit(JOB.main())
