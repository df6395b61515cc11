"""Retrieval at scale: time and peak memory of exact chunked ranking for N random pairs, to extrapolate to the paper's
725,739-pair test set.

    python benchmarks/retrieval_scale.py                          # N = 10k, 50k, 100k; D = 512; chunk 4096; CPU
    python benchmarks/retrieval_scale.py --sizes 10000 --device cuda

Each N runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own. "extra" is the peak during
ranking minus the peak before it (embeddings already in memory): it must stay near the chunk's blocks, never N^2.
Work grows as N^2 * D, so time(726k) ~ time(N) * (726k / N)^2. "CPU s" (all threads) is less sensitive than wall
time to other load on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

PAPER_TEST_PAIRS = 725_739
MIB = 2**20


def measure(n: int, dim: int, chunk: int, device: str) -> dict:
    """Runs in the child process: ranks N random pairs and reports seconds and memory."""
    from biomedclip.evaluate.retrieval import paired_ranks, retrieval_metrics

    generator = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)
    texts = torch.nn.functional.normalize(images + 2.0 * torch.randn(n, dim, generator=generator), dim=1)
    images, texts = images.to(device), texts.to(device)
    paired_ranks(images[:64], texts[:64], chunk_size=64, device=device)  # warm-up, with blocks too small to count
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started, cpu_started = time.perf_counter(), time.process_time()
    ranks = paired_ranks(images, texts, chunk_size=chunk, device=device)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"n": n, "dim": dim, "chunk": chunk, "device": device, "seconds": seconds, "cpu_seconds": cpu_seconds,
              "peak_rss_mib": after / MIB, "extra_rss_mib": (after - before) / MIB,
              "r_at_1": retrieval_metrics(ranks)["image_to_text"]["R@1"]}
    if device.startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / MIB
    return result


def run_child(n: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", str(n), "--dim", str(args.dim), "--chunk", str(args.chunk),
               "--device", args.device]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--dim", type=int, default=512, help="embedding size (the paper's model: 512)")
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.dim, args.chunk, args.device)))
        return
    print(f"exact chunked retrieval, D={args.dim}, chunk={args.chunk}, device={args.device}, "
          f"torch threads={torch.get_num_threads()}")
    block_mib = args.chunk**2 * 4 / MIB
    print(f"{'N':>8} {'seconds':>9} {'CPU s':>9} {'pairs/s':>10} {'peak RSS MiB':>13} {'extra MiB':>10} "
          f"{'N^2 fp32 MiB':>13}")
    for n in args.sizes:
        r = run_child(n, args)
        print(f"{n:>8} {r['seconds']:>9.2f} {r['cpu_seconds']:>9.2f} {n * n / r['seconds']:>10.3g} "
              f"{r['peak_rss_mib']:>13.0f} {r['extra_rss_mib']:>10.0f} {n * n * 4 / MIB:>13.0f}", flush=True)
        bound = 3 * block_mib + n * 64 / MIB + 64  # block, mask, counts (9 bytes/entry) + O(N) vectors + slack
        if r["extra_rss_mib"] > bound:
            raise SystemExit(f"extra memory {r['extra_rss_mib']:.0f} MiB exceeds the chunk bound {bound:.0f} MiB")
        scale = (PAPER_TEST_PAIRS / n) ** 2
        embeddings_mib = 2 * PAPER_TEST_PAIRS * args.dim * 4 / MIB
        print(f"{'':>8} -> {PAPER_TEST_PAIRS:,} pairs: ~{r['seconds'] * scale / 3600:.1f} h wall, "
              f"~{r['cpu_seconds'] * scale / 3600:.1f} CPU-h; embeddings {embeddings_mib:.0f} MiB"
              f" + blocks ~{2.25 * block_mib:.0f} MiB")


if __name__ == "__main__":
    main()
