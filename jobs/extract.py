"""Turns PubMed Central articles into figure-caption pairs (Parquet shards + manifest + stats) on Ray Data.

    python jobs/extract.py --source SRC --output DST [--limit N] [--config jobs/configs/extract.yaml] [--set k=v ...]

SRC: a directory or s3://bucket[/prefix] in the PMC Cloud Service layout, of .tar.gz packages, or of article folders.
DST: a directory or s3://bucket/prefix. Run it again on the same DST to resume.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

import ray

from biomedclip.config import ConfigError, load_config
from biomedclip.data.extract import ExtractConfig, ExtractError, ExtractFailed, run_extraction


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="source directory or s3:// URL (config: source.uri)")
    parser.add_argument("--output", help="output directory or s3:// URL (config: output)")
    parser.add_argument("--limit", type=int, help="only the first N articles of the listing")
    parser.add_argument("--layout", choices=["auto", "s3", "tar", "folders"], help="source layout (default: detect)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL for the source and an s3:// output")
    parser.add_argument("--signed", action="store_true", help="sign S3 source requests (default: anonymous)")
    parser.add_argument("--config", help="YAML config (an ExtractConfig)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted config override")
    parser.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS or a new local one)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray instance")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> ExtractConfig:
    config = load_config(ExtractConfig, args.config, args.set)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = build_config(args)
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, num_cpus=None if address else args.num_cpus, include_dashboard=False)
    try:
        manifest = run_extraction(config)
    except ExtractError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ExtractFailed as err:
        print(f"extraction failed: {err}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    summary = {k: manifest[k] for k in ("articles_seen", "unreadable_share", "figures_found", "pairs_written",
                                        "skipped", "shards")}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
