"""Writes a synthetic PMC corpus (JATS XML + figures grounded in their captions) in a real PMC layout.

    python jobs/make_sample_corpus.py --output demo_out/corpus
    python jobs/make_sample_corpus.py --output corpus_tar --articles 50 --layout tar --seed 3
"""

from __future__ import annotations

import argparse
import sys

from biomedclip import cli


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--articles", type=cli.positive_int, default=300, help="number of articles")
    parser.add_argument("--layout", choices=["s3", "tar", "folders"], default="s3",
                        help="s3: the PMC Cloud Service layout (as local files); tar: OA packages; folders")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same corpus")
    parser.add_argument("--image-size", type=int, nargs=2, default=(160, 256), metavar=("MIN", "MAX"),
                        help="range of the figures' width and height in pixels")


def run(args: argparse.Namespace) -> dict:
    from biomedclip.samples.corpus import write_sample_corpus

    summary = write_sample_corpus(args.output, args.articles, args.layout, args.seed, tuple(args.image_size))
    cli.print_table(list(summary.items()))
    return summary


JOB = cli.Job(__doc__, arguments, run, config=False, ray=False)

if __name__ == "__main__":
    sys.exit(JOB.main())
