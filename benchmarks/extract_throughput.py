"""Extraction throughput: figures/s of the whole Ray Data pipeline against the single-core decode+resize+encode rate
of the same images times the cores used. Their ratio is the pipeline's parallel efficiency (goal >= 0.8).

    python benchmarks/extract_throughput.py [--articles 1000] [--image-size 900 1500] [--cpus N] [--corpus DIR]

The corpus is the synthetic one at PMC-like figure sizes. The single-core rate is measured in this process just
before and just after the pipeline run (their mean is used), so both see similar machine load. Ray workers are
warmed up on a few articles first: a running cluster has its workers already started. On a shared machine the
wall-clock ratio also measures the scheduler's share; the CPU efficiency (CPU seconds of the decode work alone over
CPU seconds of the whole Ray session, from /proc) does not depend on other load.
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
from biomedclip.pmc.skips import Skipped
from biomedclip.pmc.sources import Source, SourceConfig
from biomedclip.samples.corpus import write_sample_corpus


def figure_images(corpus: Path) -> list[bytes]:
    """The image files the pipeline decodes: every figure's matched media file."""
    source = Source(SourceConfig(uri=str(corpus)))
    images = []
    for ref in source.list_refs():
        loaded = load_article(source, ref)
        images.extend(data for data in loaded.media.values() if isinstance(data, bytes))
    return images


def single_core(images: list[bytes], config: ImageConfig) -> tuple[float, float]:
    """(figures per wall second, CPU seconds per figure) of decode+resize+encode in this process."""
    start, cpu = time.perf_counter(), time.process_time()
    for data in images:
        try:
            normalize_image(data, config)
        except Skipped:
            pass
    return len(images) / (time.perf_counter() - start), (time.process_time() - cpu) / len(images)


def session_cpu_seconds(session: str) -> float:
    """CPU seconds used so far by this driver and this Ray session's processes: those naming the session on their
    command line (GCS, raylet, ...) and all their descendants (the workers retitle themselves). Linux /proc."""
    tick, parents, stats, roots = os.sysconf("SC_CLK_TCK"), {}, {}, set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if session.encode() in cmdline.read():
                    roots.add(pid)
        except OSError:
            continue
        parents[pid], stats[pid] = fields[1], (int(fields[11]) + int(fields[12])) / tick  # ppid, utime + stime

    def in_session(pid: str) -> bool:
        while pid in parents:
            if pid in roots:
                return True
            pid = parents[pid]
        return False

    return time.process_time() + sum(cpu for pid, cpu in stats.items() if in_session(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=1000,
                        help="enough that the phases' fixed start-up seconds do not dominate (~15%% at 300)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(900, 1500), metavar=("MIN", "MAX"))
    parser.add_argument("--articles-per-unit", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--corpus", help="keep the corpus here and reuse it on later runs (default: a temporary one)")
    args = parser.parse_args()

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        with tempfile.TemporaryDirectory() as workdir:
            report = measure(args, Path(workdir), Path(args.corpus) if args.corpus else Path(workdir) / "corpus")
    finally:
        ray.shutdown()
    print(report)


def measure(args: argparse.Namespace, work: Path, corpus: Path) -> str:
    if not (corpus / "sample_truth.jsonl").exists():
        size = f"{args.image_size[0]}-{args.image_size[1]} px"
        print(f"writing {args.articles} articles with {size} figures ...", flush=True)
        write_sample_corpus(corpus, args.articles, "s3", seed=0, image_size=tuple(args.image_size))
    write_sample_corpus(work / "warmup", 12, "s3", seed=1)
    images = figure_images(corpus)
    config = ExtractConfig(source=SourceConfig(uri=str(corpus)), output=str(work / "out"),
                           articles_per_unit=args.articles_per_unit)
    warmup = ExtractConfig(source=SourceConfig(uri=str(work / "warmup")), output=str(work / "warm"),
                           articles_per_unit=1)
    run_extraction(warmup)  # starts a worker process per core
    cores, session = int(ray.cluster_resources()["CPU"]), ray.get_runtime_context().get_session_name()
    (before, cpu_before), load = single_core(images, config.images), os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), session_cpu_seconds(session)
    manifest = run_extraction(config)
    seconds, cpu = time.perf_counter() - start, session_cpu_seconds(session) - cpu_start
    after, cpu_after = single_core(images, config.images)

    decoded, phases = manifest["pairs_extracted"], manifest["seconds"]
    pipeline, reference, reference_cpu = decoded / seconds, (before + after) / 2, (cpu_before + cpu_after) / 2
    return "\n".join([
        f"figures decoded by the pipeline : {decoded} ({len(images)} image files) in {seconds:.1f} s end to end",
        f"phases (s)                      : {phases}",
        f"stage phase alone               : {decoded / phases['stage']:.1f} figures/s, efficiency "
        f"{decoded / phases['stage'] / (reference * cores):.2f}",
        f"pipeline throughput             : {pipeline:.1f} figures/s on {cores} cores",
        f"single-core decode+resize+encode: {reference:.1f} figures/s (before {before:.1f}, after {after:.1f})",
        f"ideal ({cores} x single core)        : {reference * cores:.1f} figures/s",
        f"efficiency (pipeline / ideal)   : {pipeline / (reference * cores):.2f}   (goal >= 0.8)",
        f"CPU per figure                  : pipeline {cpu / decoded * 1000:.0f} ms (Ray session + driver), "
        f"decode+resize+encode alone {reference_cpu * 1000:.0f} ms -> CPU efficiency "
        f"{reference_cpu * decoded / cpu:.2f}",
        f"machine load average            : {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
    ])


if __name__ == "__main__":
    main()
