"""Writes a synthetic PMC corpus (JATS XML + figures grounded in their captions) in a real PMC layout.

    python jobs/make_sample_corpus.py --output DIR [--articles N] [--layout s3|tar|folders] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import sys

from biomedclip.samples.corpus import write_sample_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--articles", type=int, default=300)
    parser.add_argument("--layout", choices=["s3", "tar", "folders"], default="s3",
                        help="s3: the PMC Cloud Service layout (as local files); tar: OA packages; folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 256), metavar=("MIN", "MAX"),
                        help="range of the figures' width and height in pixels")
    args = parser.parse_args(argv)
    summary = write_sample_corpus(args.output, args.articles, args.layout, args.seed, tuple(args.image_size))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
