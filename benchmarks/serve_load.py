"""Load benchmark of the inference service on loopback.

1. Batching: zero-shot requests at 1, 8 and 32 concurrent clients, with dynamic batching on and off, both measured in
   the same run against the same model.
2. Endpoints: req/s and p50/p99 latency per endpoint (zero-shot, a zero-shot batch, HF zero-shot, /v1/embed,
   /v1/embeddings, /v1/search by text and by image) at --endpoint-clients, search over synthetic indexes of
   --index-sizes unit vectors (100k by default; add 1000000 for the 1M figure).

Two applications run side by side (batched: max_batch_size=B; unbatched: max_batch_size=1), one model replica
each. Each level is bounded by a request count and a time limit. Prints throughput, p50/p99 latency, the mean
batch the model ran and how busy the model replica was per level, the batched/unbatched throughput ratio at the
highest level (the figure; goal >= 3x on CPU), and exits non-zero if any request failed. Batching can only pay
where the model replica is the bottleneck (busy near 100%); when the HTTP proxy and ingress are, it cannot.

    .venv/bin/python benchmarks/serve_load.py [--model demo_out/model] [--requests 256] [--max-seconds 60]
                                              [--index-sizes 100000,1000000] [--skip-batching]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

for name, value in {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                    "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
                    "RAY_TMPDIR": str(Path(__file__).resolve().parent.parent / ".ray_tmp")}.items():
    os.environ.setdefault(name, value)

LABELS = ["chest x-ray", "brain mri", "liver histology", "abdominal ct", "skin lesion"]
MODES = {"batched": None, "unbatched": 1}  # max_batch_size; None: the --max-batch-size argument
BENCH_DEPLOYMENTS = {"ClipModel": {"max_ongoing_requests": 128, "ray_actor_options": {"num_cpus": 0.5}},
                     "Ingress": {"max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.25}},
                     "SearchIndex": {"ray_actor_options": {"num_cpus": 0.25}}}
SHARD_ROWS = 100_000


@dataclass
class LevelResult:
    mode: str
    clients: int
    requests: int
    errors: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    mean_batch: float  # images per forward on the model replica
    model_busy: float  # the model replica's CPU time / wall time: near 1 when the model is the bottleneck


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model artifact directory (default: a random model, see --vision)")
    parser.add_argument("--vision", default="vit-tiny", help="vision preset of the random model (vit-small, ...)")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=256, help="requests per level (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="time limit per level")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-wait-s", type=float, default=0.01)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count())
    parser.add_argument("--skip-batching", action="store_true", help="only the per-endpoint figures")
    parser.add_argument("--index-sizes", default="100000", help="synthetic search index sizes, comma-separated")
    parser.add_argument("--endpoint-clients", type=int, default=8)
    parser.add_argument("--endpoint-requests", type=int, default=200, help="requests per endpoint (upper bound)")
    parser.add_argument("--output", help="write the results as JSON here")
    return parser.parse_args()


def random_artifact(directory: Path, vision: str) -> Path:
    import torch

    from biomedclip.model import ModelConfig, TextConfig, VisionConfig, build_model
    from biomedclip.model.artifact import save_artifact
    from biomedclip.text import Tokenizer

    tokenizer = Tokenizer.train([f"{label} of a patient" for label in LABELS] * 4, vocab_size=200,
                                context_length=77, min_frequency=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(embed_dim=64, vision=VisionConfig(vision, 224),
                                    text=TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size)))
    return save_artifact(model, tokenizer, directory)


def test_images(count: int = 8) -> list[bytes]:
    from PIL import Image

    images = []
    for seed in range(count):
        pixels = np.random.default_rng(seed).integers(0, 255, (224, 224, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_apps(model_dir: str, args: argparse.Namespace, port: int) -> None:
    from ray import serve

    from biomedclip.serving import BatchingConfig, ServingConfig
    from biomedclip.serving.app import build_app

    # The controller drops a proxy that is not ready within 5 s, which a busy machine can take.
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                controller_options={"runtime_env": {"env_vars": {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}}})
    targets = []
    for mode, batch_size in MODES.items():
        config = ServingConfig(
            models={"default": model_dir},
            batching=BatchingConfig(max_batch_size=batch_size or args.max_batch_size,
                                    batch_wait_timeout_s=args.batch_wait_s))
        targets.append(serve.RunTarget(build_app(config, deployments=BENCH_DEPLOYMENTS), name=mode,
                                       route_prefix=f"/{mode}"))
    serve.run_many(targets)  # returns once both applications are running


async def run_level(url: str, images: list[bytes], clients: int, max_requests: int, max_seconds: float,
                    request=None):
    """Sends up to max_requests requests from `clients` concurrent clients; `request(i)` gives the i-th request's
    httpx keyword arguments (default: a zero-shot multipart form)."""
    import httpx

    request = request or (lambda i: {"files": {"image": ("scan.jpg", images[i % len(images)], "image/jpeg")},
                                     "data": {"labels": LABELS}})
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            kwargs = request(issued)
            issued += 1
            start = time.perf_counter()
            try:
                response = await client.post(url, **kwargs)
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        seconds = time.perf_counter() - start
    return latencies, errors, seconds


def model_stats(mode: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle("ClipModel", mode).stats.remote().result()


def measure(base_url: str, mode: str, clients: int, images: list[bytes], args) -> LevelResult:
    before = model_stats(mode)
    latencies, errors, seconds = asyncio.run(run_level(f"{base_url}/{mode}/v1/zero-shot", images, clients,
                                                      args.requests, args.max_seconds))
    after = model_stats(mode)
    for error in errors[:3]:
        print(f"  error ({mode}, {clients} clients): {error}", flush=True)
    batches = {size: n - before["batch_sizes"].get(size, 0) for size, n in after["batch_sizes"].items()}
    mean_batch = sum(size * n for size, n in batches.items()) / max(1, sum(batches.values()))
    ms = np.asarray(latencies) * 1000
    return LevelResult(mode, clients, len(latencies), len(errors), round(seconds, 2),
                       round(len(latencies) / seconds, 2), round(float(np.percentile(ms, 50)), 1),
                       round(float(np.percentile(ms, 99)), 1), round(mean_batch, 2),
                       round((after["cpu_seconds"] - before["cpu_seconds"]) / seconds, 2))


def synthetic_index(directory: Path, rows: int, model_dir: str, embed_dim: int) -> str:
    """An index of `rows` random unit vectors with the bench model's fingerprint (no thumbnails)."""
    import pyarrow.parquet as pq

    from biomedclip.model.artifact import artifact_fingerprint
    from biomedclip.search.index import SHARDS, index_table, write_manifest

    rng = np.random.default_rng(rows)
    (directory / SHARDS).mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, rows, SHARD_ROWS)):
        count = min(SHARD_ROWS, rows - start)
        vectors = rng.standard_normal((count, embed_dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"PMC{start + i}" for i in range(count)]
        pq.write_table(index_table(ids, ["F1"] * count, [f"synthetic figure {start + i}" for i in range(count)],
                                   [b""] * count, vectors), directory / SHARDS / f"part-{part:05d}.parquet")
    write_manifest(str(directory), artifact_fingerprint(model_dir), model_dir, embed_dim, "synthetic", [], 0)
    return str(directory)


def endpoint_requests(images: list[bytes]) -> dict[str, tuple[str, object]]:
    """Per endpoint: (path, i -> httpx keyword arguments)."""
    b64 = [base64.b64encode(image).decode() for image in images]
    texts = [f"{label} of patient {i}" for i in range(16) for label in LABELS]
    return {
        "zero-shot": ("/v1/zero-shot", lambda i: {"json": {"image_base64": b64[i % len(b64)], "labels": LABELS}}),
        "zero-shot batch of 4": ("/v1/zero-shot", lambda i: {"json": {
            "images_base64": [b64[(i + k) % len(b64)] for k in range(4)], "labels": LABELS}}),
        "zero-shot (HF shape)": ("/v1/zero-shot", lambda i: {"json": {
            "inputs": b64[i % len(b64)], "parameters": {"candidate_labels": LABELS}}}),
        "embed image+text": ("/v1/embed", lambda i: {"json": {"images_base64": [b64[i % len(b64)]],
                                                              "texts": [texts[i % len(texts)]]}}),
        "embeddings (OpenAI shape)": ("/v1/embeddings", lambda i: {"json": {"input": texts[i % len(texts)]}}),
        "search by text": ("/v1/search", lambda i: {"json": {"text": texts[i % len(texts)], "top_k": 10}}),
        "search by image": ("/v1/search", lambda i: {"json": {"image_base64": b64[i % len(b64)], "top_k": 10}}),
    }


def measure_endpoints(base_url: str, model_dir: str, images: list[bytes], args, scratch: Path) -> list[dict]:
    from ray import serve

    from biomedclip.inference import Predictor
    from biomedclip.serving import SearchConfig, ServingConfig
    from biomedclip.serving.app import build_app

    embed_dim = Predictor.load(model_dir).embed_dim
    results = []
    sizes = [int(size) for size in args.index_sizes.split(",")]
    for size in sizes:
        started = time.perf_counter()
        index = synthetic_index(scratch / f"index-{size}", size, model_dir, embed_dim)
        name = f"search{size}"
        config = ServingConfig(models={"default": model_dir}, search=SearchConfig(index=index, max_top_k=50))
        serve.run(build_app(config, deployments=BENCH_DEPLOYMENTS), name=name, route_prefix=f"/{name}")
        print(f"index of {size} vectors written and served in {time.perf_counter() - started:.0f} s", flush=True)
        for endpoint, (path, request) in endpoint_requests(images).items():
            if not endpoint.startswith("search") and size != sizes[0]:
                continue  # the other endpoints do not depend on the index: measured once
            url = f"{base_url}/{name}{path}"
            asyncio.run(run_level(url, images, 2, 4, 60, request))  # warm-up
            latencies, errors, seconds = asyncio.run(run_level(url, images, args.endpoint_clients,
                                                               args.endpoint_requests, args.max_seconds, request))
            for error in errors[:3]:
                print(f"  error ({endpoint}): {error}", flush=True)
            ms = np.asarray(latencies) * 1000
            row = {"endpoint": endpoint, "index_size": size if endpoint.startswith("search") else None,
                   "clients": args.endpoint_clients, "requests": len(latencies), "errors": len(errors),
                   "throughput_rps": round(len(latencies) / seconds, 2),
                   "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}
            results.append(row)
            where = f" ({size:,} vectors)" if row["index_size"] else ""
            print(f"{endpoint + where:>38}: {row['throughput_rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f} ms  "
                  f"p99 {row['p99_ms']:7.1f} ms  ({row['requests']} requests, {row['errors']} errors)", flush=True)
        serve.delete(name)
    return results


def main() -> int:
    args = parse_args()
    import ray
    from ray import serve

    levels = [int(level) for level in args.levels.split(",")]
    images = test_images()
    port = free_port()
    results, endpoints = [], []
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = str(Path(args.model).resolve() if args.model else random_artifact(Path(scratch) / "m", args.vision))
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            base_url = f"http://127.0.0.1:{port}"
            if not args.skip_batching:
                start_apps(model_dir, args, port)
                results = measure_batching(base_url, images, levels, args)
            else:
                serve.start(http_options={"host": "127.0.0.1", "port": port}, controller_options={
                    "runtime_env": {"env_vars": {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}}})
            endpoints = measure_endpoints(base_url, model_dir, images, args, Path(scratch))
        finally:
            serve.shutdown()
            ray.shutdown()
    return report(results, endpoints, levels, args)


def measure_batching(base_url: str, images: list[bytes], levels: list[int], args) -> list[LevelResult]:
    for mode in MODES:  # warm-up: model loaded, prompt embeddings cached
        measure(base_url, mode, 4, images, argparse.Namespace(requests=16, max_seconds=60))
    results = []
    for clients in levels:
        for mode in MODES:
            result = measure(base_url, mode, clients, images, args)
            results.append(result)
            print(f"{mode:>9} {clients:>3} clients: {result.throughput_rps:7.1f} req/s  "
                  f"p50 {result.p50_ms:7.1f} ms  p99 {result.p99_ms:7.1f} ms  "
                  f"batch {result.mean_batch:4.1f}  model busy {result.model_busy:4.0%}  "
                  f"({result.requests} requests, {result.errors} errors, {result.seconds} s)", flush=True)
    return results


def report(results: list[LevelResult], endpoints: list[dict], levels: list[int], args) -> int:
    total_errors = sum(r.errors for r in results) + sum(row["errors"] for row in endpoints)
    ratio = None
    if results:
        by_key = {(r.mode, r.clients): r for r in results}
        top = max(levels)
        ratio = by_key["batched", top].throughput_rps / by_key["unbatched", top].throughput_rps
        print(f"batched/unbatched throughput at {top} clients: {ratio:.2f}x (goal >= 3x on CPU)")
    print(f"errors: {total_errors} (0 required)")
    if args.output:
        Path(args.output).write_text(json.dumps({
            "results": [asdict(r) for r in results], "endpoints": endpoints,
            "ratio_at_max_clients": ratio and round(ratio, 2), "errors": total_errors,
            "cpus": os.cpu_count(), "model": args.model or f"random {args.vision}",
            "max_batch_size": args.max_batch_size, "batch_wait_s": args.batch_wait_s,
        }, indent=2))
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
