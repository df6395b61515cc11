"""Build a figure-search index for /v1/search: image embeddings + pmcid, fig_id, caption and a JPEG thumbnail.

    python jobs/build_index.py --checkpoint MODEL --data PAIRS --output INDEX [--set key=value ...]
    python jobs/build_index.py --checkpoint demo_out/pretrain/final --data demo_out/pairs/test --output demo_out/index

MODEL is a model artifact directory (the one Serve answers /v1/search with: `search.model`); PAIRS is a pair Parquet
folder (e.g. an extraction's `test/`) and INDEX an output folder, each local or s3://. Ray Data embeds the figures
(GPU when the cluster has one); the manifest names the model by its weights' sha256, and Serve refuses an index built
by another model. Keys for --set: thumbnail_size, thumbnail_quality, shard_rows, embed.batch_size, embed.num_actors,
embed.cpus_per_actor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biomedclip import cli


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="model artifact directory")
    parser.add_argument("--data", required=True, help="pair Parquet folder or s3:// URI")
    parser.add_argument("--output", required=True, help="index folder or s3:// URI")


def run(args: argparse.Namespace) -> dict:
    cli.existing(args.checkpoint, "--checkpoint")
    cli.existing(args.data, "--data")
    from biomedclip.search.build import IndexConfig, build_index

    config = cli.load(IndexConfig, args)
    cli.start_ray(args)
    manifest = build_index(args.checkpoint, args.data, args.output, config)
    for problem in manifest["problems"][:10]:
        print(f"left out {problem['figure']}: {problem['error']}", file=sys.stderr)
    cli.print_table([("figures indexed", manifest["count"]), ("left out", manifest["problem_count"]),
                     ("index", args.output)])
    return manifest


def user_errors() -> tuple[type[Exception], ...]:
    from biomedclip.model.checkpoint import CheckpointError

    return (CheckpointError,)


JOB = cli.Job(__doc__, arguments, run, user_errors=user_errors)

if __name__ == "__main__":
    sys.exit(JOB.main())
