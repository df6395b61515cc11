"""Turns PubMed Central articles into figure-caption pairs (Parquet shards + manifest + stats) on Ray Data.

    python jobs/extract.py --source demo_out/corpus --output demo_out/pairs
    python jobs/extract.py --source s3://pmc-oa-opendata --output s3://bucket/pairs --limit 10000 \\
        --config jobs/configs/extract_paper.yaml

--source: a directory or s3://bucket[/prefix] in the PMC Cloud Service layout, of .tar.gz packages, or of article
folders. --output: a directory or s3://bucket/prefix. Run it again on the same output to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING

from biomedclip import cli
from biomedclip.config import ConfigError

if TYPE_CHECKING:
    from biomedclip.data.extract import ExtractConfig

SUMMARY_KEYS = ("articles_seen", "unreadable_share", "figures_found", "pairs_written", "skipped")


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="source directory or s3:// URL (config: source.uri)")
    parser.add_argument("--output", help="output directory or s3:// URL (config: output)")
    parser.add_argument("--limit", type=int, help="only the first N articles of the listing (config: limit)")
    parser.add_argument("--layout", choices=["auto", "s3", "tar", "folders"],
                        help="source layout (config: source.layout; auto detects it)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL for the source and an s3:// output")
    parser.add_argument("--signed", action="store_true", help="sign S3 source requests (default: anonymous)")


def build_config(args: argparse.Namespace) -> ExtractConfig:
    """The config file and --set, then the command-line flags on top (typed values, not re-read as YAML)."""
    from biomedclip.data.extract import ExtractConfig

    config = cli.load(ExtractConfig, args)
    source = config.source
    if args.source:
        source = dataclasses.replace(source, uri=args.source)
    if args.layout:
        source = dataclasses.replace(source, layout=args.layout)
    if args.s3_endpoint:
        source = dataclasses.replace(source, s3_endpoint=args.s3_endpoint)
        config = dataclasses.replace(config, output_s3_endpoint=args.s3_endpoint)
    if args.signed:
        source = dataclasses.replace(source, anonymous=False)
    changes = {"source": source}
    if args.output:
        changes["output"] = args.output
    if args.limit is not None:
        changes["limit"] = args.limit
    return dataclasses.replace(config, **changes)


def run(args: argparse.Namespace) -> dict:
    if args.source:
        cli.existing(args.source, "--source")
    try:
        config = build_config(args)
    except ConfigError:
        raise
    except ValueError as err:  # a flag's value refused by ExtractConfig's checks
        raise ConfigError(str(err)) from err
    from biomedclip.data.extract import ExtractFailed, run_extraction

    cli.start_ray(args)
    try:
        manifest = run_extraction(config)
    except ExtractFailed as err:  # the run ended without doing its work: exit 1, with the reason
        raise cli.RunFailed(str(err)) from err
    cli.print_table([(key, manifest[key]) for key in SUMMARY_KEYS] + [("output", config.output)])
    return manifest


def user_errors() -> tuple[type[Exception], ...]:
    from biomedclip.data.extract import ExtractError

    return (ExtractError,)


JOB = cli.Job(__doc__, arguments, run, user_errors=user_errors)

if __name__ == "__main__":
    sys.exit(JOB.main())
