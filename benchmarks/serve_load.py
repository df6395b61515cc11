"""Load benchmark of the inference service on loopback: zero-shot requests at 1, 8 and 32 concurrent clients, with
dynamic batching on and off, both measured in the same run against the same model.

Two applications run side by side (batched: max_batch_size=B; unbatched: max_batch_size=1), one model replica
each. Each level is bounded by a request count and a time limit. Prints throughput, p50/p99 latency, the mean
batch the model ran and how busy the model replica was per level, the batched/unbatched throughput ratio at the
highest level (the figure; goal >= 3x on CPU), and exits non-zero if any request failed. Batching can only pay
where the model replica is the bottleneck (busy near 100%); when the HTTP proxy and ingress are, it cannot.

    .venv/bin/python benchmarks/serve_load.py [--model demo_out/model] [--requests 256] [--max-seconds 60]
"""
from __future__ import annotations

import argparse
import asyncio
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

    from biomedclip.serving import BatchingConfig, ReplicaConfig, ServingConfig
    from biomedclip.serving.app import build_app

    # The controller drops a proxy that is not ready within 5 s, which a busy machine can take.
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                controller_options={"runtime_env": {"env_vars": {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}}})
    targets = []
    for mode, batch_size in MODES.items():
        config = ServingConfig(
            models={"default": model_dir},
            batching=BatchingConfig(max_batch_size=batch_size or args.max_batch_size,
                                    batch_wait_timeout_s=args.batch_wait_s),
            clip=ReplicaConfig(num_cpus=0.5, max_ongoing_requests=128),
            ingress=ReplicaConfig(num_cpus=0.25, max_ongoing_requests=256))
        targets.append(serve.RunTarget(build_app(config), name=mode, route_prefix=f"/{mode}"))
    serve.run_many(targets)  # returns once both applications are running


async def run_level(url: str, images: list[bytes], clients: int, max_requests: int, max_seconds: float):
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            image = images[issued % len(images)]
            issued += 1
            start = time.perf_counter()
            try:
                response = await client.post(url, files={"image": ("scan.jpg", image, "image/jpeg")},
                                             data={"labels": LABELS})
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


def main() -> int:
    args = parse_args()
    import ray
    from ray import serve

    levels = [int(level) for level in args.levels.split(",")]
    images = test_images()
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = str(Path(args.model).resolve() if args.model else random_artifact(Path(scratch) / "m", args.vision))
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        try:
            start_apps(model_dir, args, port)
            base_url = f"http://127.0.0.1:{port}"
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
        finally:
            serve.shutdown()
            ray.shutdown()
    return report(results, levels, args)


def report(results: list[LevelResult], levels: list[int], args) -> int:
    by_key = {(r.mode, r.clients): r for r in results}
    top = max(levels)
    ratio = by_key["batched", top].throughput_rps / by_key["unbatched", top].throughput_rps
    total_errors = sum(r.errors for r in results)
    print(f"batched/unbatched throughput at {top} clients: {ratio:.2f}x (goal >= 3x on CPU); errors: {total_errors}")
    if args.output:
        Path(args.output).write_text(json.dumps({
            "results": [asdict(r) for r in results], "ratio_at_max_clients": round(ratio, 2), "errors": total_errors,
            "cpus": os.cpu_count(), "model": args.model or f"random {args.vision}",
            "max_batch_size": args.max_batch_size, "batch_wait_s": args.batch_wait_s,
        }, indent=2))
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())
