"""Starts the inference application on a local Ray (loopback) and sends one request to each endpoint.

    python jobs/serve_demo.py --model ARTIFACT [--vqa VQA_ARTIFACT] --image-dir PARQUET_SPLIT [--port 8000]

For a long-running service use `serve run serve/config.yaml` instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import ray
from ray import serve

from biomedclip.serving.app import build_app_from_args

LABELS = ["radiograph", "H&E histology", "fluorescence microscopy", "chart"]


def first_figure(split_dir: Path) -> tuple[bytes, str]:
    shard = sorted(split_dir.glob("*.parquet"))[0]
    row = pq.read_table(shard, columns=["image", "caption"]).slice(0, 1).to_pylist()[0]
    return row["image"], row["caption"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--vqa", type=Path, help="VQA artifact directory")
    parser.add_argument("--image-dir", type=Path, required=True, help="a Parquet split to take one figure from")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    image, caption = first_figure(args.image_dir)
    app_args = {"models": {"default": str(args.model.resolve())}, "default_model": "default",
                "vqa_artifact": str(args.vqa.resolve()) if args.vqa else None}
    ray.init(include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        serve.run(build_app_from_args(app_args, base_dir=Path.cwd()), name="biomedclip", route_prefix="/")
        base = f"http://127.0.0.1:{args.port}"
        print(f"serving at {base}; figure caption: {caption[:100]!r}")
        files = {"image": ("figure.jpg", image, "image/jpeg")}
        with httpx.Client(base_url=base, timeout=120) as client:
            answers = {
                "GET /healthz": client.get("/healthz"),
                "POST /v1/zero-shot": client.post("/v1/zero-shot", files=files, data={"labels": LABELS}),
                "POST /v1/vqa": client.post("/v1/vqa", files=files, data={"question": "what modality is this?"}),
                "POST /v1/embed": client.post("/v1/embed", json={"texts": [caption]}),
            }
        failed = False
        for name, response in answers.items():
            print(f"{name} -> {response.status_code} {json.dumps(response.json())[:400]}")
            failed |= not response.is_success
        return 1 if failed else 0
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
