"""Convert your own image-caption pairs (CSV or JSONL with image_path, caption) into the pair shards that
pretraining and fine-tuning read.

    python jobs/make_pairs.py --input pairs.csv --output DIR [--val 0.1] [--test 0.0] [--rows-per-file 1000]

Image paths are relative to the input file's folder. Optional columns: group (pairs of one group stay in one split)
and license. Rows that cannot be used are listed with their line and reason; the rest are written.
"""

from __future__ import annotations

import argparse
import sys

from biomedclip import cli


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help=".csv (with a header row) or .jsonl")
    parser.add_argument("--output", required=True, help="directory to write train/, val/ and test/ into")
    parser.add_argument("--val", type=float, default=0.1, help="fraction of groups for validation")
    parser.add_argument("--test", type=float, default=0.0, help="fraction of groups for testing")
    parser.add_argument("--rows-per-file", type=cli.positive_int, default=1000, help="pairs per Parquet shard")
    parser.add_argument("--license", default="unknown", help="licence of rows without a license column")


def run(args: argparse.Namespace):
    cli.existing(args.input, "--input")
    from biomedclip.data.user_pairs import convert_pairs
    from biomedclip.pmc.split import SplitConfig

    try:
        split = SplitConfig(train=1.0 - args.val - args.test, val=args.val, test=args.test)
    except ValueError as err:
        raise cli.UsageError(f"--val/--test: {err}") from err
    report = convert_pairs(args.input, args.output, split, args.rows_per_file, default_license=args.license)
    for line, reason, detail in report.skipped:
        print(f"skipped line {line}: {reason}: {detail}", file=sys.stderr)
    cli.print_table([("pairs written", report.written), ("skipped", dict(report.reasons()) or 0),
                     ("output", args.output)])
    return report


def user_errors() -> tuple[type[Exception], ...]:
    from biomedclip.data.user_pairs import PairsInputError

    return (PairsInputError,)


JOB = cli.Job(__doc__, arguments, run, config=False, ray=False, user_errors=user_errors)

if __name__ == "__main__":
    sys.exit(JOB.main())
