"""Starts the inference application on a local Ray (loopback) and sends one request to each endpoint.

    python jobs/serve_demo.py --model demo_out/pretrain/final --vqa demo_out/vqa/model --image-dir demo_out/pairs/test
    python jobs/serve_demo.py --model MODEL --image-dir PARQUET_SPLIT --port 8100

For a long-running service use `serve run serve/config.yaml` instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from biomedclip import cli

if TYPE_CHECKING:
    import httpx

LABELS = ["radiograph", "H&E histology", "fluorescence microscopy", "chart"]


def first_figure(split_dir: Path) -> tuple[bytes, str]:
    import pyarrow.parquet as pq

    shards = sorted(split_dir.glob("*.parquet"))
    if not shards:
        raise cli.UsageError(f"--image-dir {split_dir}: no Parquet shards in it")
    shard = shards[0]
    row = pq.read_table(shard, columns=["image", "caption"]).slice(0, 1).to_pylist()[0]
    return row["image"], row["caption"]


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--vqa", type=Path, help="VQA artifact directory (none: /v1/vqa answers 404)")
    parser.add_argument("--image-dir", type=Path, required=True, help="a Parquet split to take one figure from")
    parser.add_argument("--port", type=cli.positive_int, default=8000, help="HTTP port on 127.0.0.1")


def run(args: argparse.Namespace) -> dict[str, int]:
    for option, path in (("--model", args.model), ("--vqa", args.vqa), ("--image-dir", args.image_dir)):
        if path is not None:
            cli.existing(path, option)
    # Libraries are imported here, not at the top: --help and usage errors answer at once.
    import httpx
    from ray import serve

    from biomedclip.serving.app import build_app_from_args

    image, caption = first_figure(args.image_dir)
    app_args = {"models": {"default": str(args.model.resolve())}, "default_model": "default",
                "vqa_artifact": str(args.vqa.resolve()) if args.vqa else None}
    cli.start_ray(args)
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
    finally:
        serve.shutdown()
    cli.print_table([(name, response.status_code, _brief(response)) for name, response in answers.items()],
                    header=("request", "status", "answer"))
    failed = [name for name, response in answers.items() if not response.is_success]
    if failed:
        raise cli.RunFailed(f"{', '.join(failed)} did not succeed")
    return {name: response.status_code for name, response in answers.items()}


def _brief(response: httpx.Response, width: int = 90) -> str:
    text = json.dumps(response.json())
    return text if len(text) <= width else text[: width - 3] + "..."


JOB = cli.Job(__doc__, arguments, run, config=False)

if __name__ == "__main__":
    sys.exit(JOB.main())
