"""Build a figure-search index for /v1/search: image embeddings + pmcid, fig_id, caption and a JPEG thumbnail.

    python jobs/build_index.py --checkpoint MODEL --data PAIRS --output INDEX [--set key=value ...]

MODEL is a model artifact directory (the one Serve answers /v1/search with: `search.model`); PAIRS is a pair Parquet
folder (e.g. an extraction's `test/`) and INDEX an output folder, each local or s3://. Ray Data embeds the figures
(GPU when the cluster has one); the manifest names the model by its weights' sha256, and Serve refuses an index built
by another model. Keys for --set: thumbnail_size, thumbnail_quality, embed.batch_size, embed.num_actors,
embed.cpus_per_actor.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from biomedclip.config import ConfigError, load_config
from biomedclip.model.checkpoint import CheckpointError
from biomedclip.search.build import IndexConfig, build_index


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="model artifact directory")
    parser.add_argument("--data", required=True, help="pair Parquet folder or s3:// URI")
    parser.add_argument("--output", required=True, help="index folder or s3:// URI")
    parser.add_argument("--config", type=Path, help="YAML with IndexConfig keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(IndexConfig, args.config, args.set)
        print(f"indexing {args.data} with {args.checkpoint}", flush=True)
        manifest = build_index(args.checkpoint, args.data, args.output, config)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{manifest['count']} figures indexed ({manifest['problem_count']} left out) -> {args.output}")
    for problem in manifest["problems"][:10]:
        print(f"  left out {problem['figure']}: {problem['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
