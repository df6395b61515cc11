"""Extraction throughput: figures/s of the whole Ray Data pipeline against the single-core decode+resize+encode rate
of the same images times the cores used. Their ratio is the pipeline's parallel efficiency (goal >= 0.8).

    python benchmarks/extract_throughput.py [--articles 240] [--image-size 900 1500] [--cpus N] [--workdir DIR]

The corpus is the synthetic one at PMC-like figure sizes. The single-core rate is measured in this process just
before and just after the pipeline run (their mean is used), so both see the same machine load. Ray workers are
warmed up on a few articles first: a running cluster has its workers already started.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray

from biomedclip.data.extract import ExtractConfig, run_extraction
from biomedclip.pmc.images import ImageConfig, normalize_image
from biomedclip.pmc.pairs import load_article
from biomedclip.pmc.sample_corpus import write_sample_corpus
from biomedclip.pmc.skips import Skipped
from biomedclip.pmc.sources import Source, SourceConfig


def figure_images(corpus: Path) -> list[bytes]:
    """The image files the pipeline decodes: every figure's matched media file."""
    source = Source(SourceConfig(uri=str(corpus)))
    images = []
    for ref in source.list_refs():
        loaded = load_article(source, ref)
        images.extend(data for data in loaded.media.values() if isinstance(data, bytes))
    return images


def single_core_rate(images: list[bytes], config: ImageConfig) -> float:
    start = time.perf_counter()
    for data in images:
        try:
            normalize_image(data, config)
        except Skipped:
            pass
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=240)
    parser.add_argument("--image-size", type=int, nargs=2, default=(900, 1500), metavar=("MIN", "MAX"))
    parser.add_argument("--articles-per-unit", type=int, default=6)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--workdir", help="where to write the corpus and outputs (default: a temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        work = Path(workdir)
        print(f"writing {args.articles} articles with {args.image_size[0]}-{args.image_size[1]} px figures ...", flush=True)
        write_sample_corpus(work / "corpus", args.articles, "s3", seed=0, image_size=tuple(args.image_size))
        write_sample_corpus(work / "warmup", 4, "s3", seed=1)
        images = figure_images(work / "corpus")
        config = ExtractConfig(source=SourceConfig(uri=str(work / "corpus")), output=str(work / "out"),
                               articles_per_unit=args.articles_per_unit)

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        try:
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
            run_extraction(ExtractConfig(source=SourceConfig(uri=str(work / "warmup")), output=str(work / "warm")))
            cores = int(ray.cluster_resources()["CPU"])
            before = single_core_rate(images, config.images)
            start = time.perf_counter()
            manifest = run_extraction(config)
            seconds = time.perf_counter() - start
            after = single_core_rate(images, config.images)
        finally:
            ray.shutdown()

    decoded = manifest["pairs_extracted"]
    pipeline = decoded / seconds
    reference = (before + after) / 2
    print(f"figures decoded by the pipeline : {decoded} ({len(images)} image files) in {seconds:.1f} s end to end")
    print(f"pipeline throughput             : {pipeline:.1f} figures/s on {cores} cores")
    print(f"single-core decode+resize+encode: {reference:.1f} figures/s (before {before:.1f}, after {after:.1f})")
    print(f"ideal ({cores} x single core)        : {reference * cores:.1f} figures/s")
    print(f"efficiency (pipeline / ideal)   : {pipeline / (reference * cores):.2f}   (goal >= 0.8)")


if __name__ == "__main__":
    main()
