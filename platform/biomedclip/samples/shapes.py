"""A small grounded image-caption corpus (a shape whose colour, kind and size the caption names) in the extraction
job's Parquet layout.

For tests and benchmarks of training: a model that learns colour and shape can retrieve the right caption, so
Recall@1 rising above chance shows learning. Written as `<out>/{train,val}/part-00000.parquet`.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from biomedclip.pmc.schema import PAIR_SCHEMA

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 30),
           "purple": (140, 40, 170), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")
SIZE = 96


def _draw(colour: str, shape: str, size: str, rng: np.random.Generator) -> bytes:
    image = Image.new("RGB", (SIZE, SIZE), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    radius = int(rng.integers(16, 24)) if size == "small" else int(rng.integers(32, 42))
    cx, cy = (int(v) for v in rng.integers(radius + 2, SIZE - radius - 1, size=2))
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _rows(split: str, count: int, rng: np.random.Generator) -> pa.Table:
    rows = []
    for index in range(count):
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        size = ("small", "large")[int(rng.integers(2))]
        image = _draw(colour, shape, size, rng)
        rows.append({
            "pmcid": f"PMC{(9 if split == 'train' else 8) * 1_000_000 + index}", "pmid": None,
            "fig_id": f"{split}-F{index}", "label": f"Figure {index + 1}",
            "caption": f"Figure {index + 1}. A {size} {colour} {shape} on a light background.",
            "inline_refs": "", "image": image, "width": SIZE, "height": SIZE, "orig_width": SIZE,
            "orig_height": SIZE, "license": "CC BY", "split": split, "sha256": hashlib.sha256(image).hexdigest(),
            "doi": None,
        })
    return pa.Table.from_pylist(rows, schema=PAIR_SCHEMA)


def write_shapes_corpus(out_dir: str | Path, train: int = 256, val: int = 48, seed: int = 0,
                        rows_per_file: int = 64) -> Path:
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        table = _rows(split, count, rng)
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for part, start in enumerate(range(0, count, rows_per_file)):
            pq.write_table(table.slice(start, rows_per_file), out_dir / split / f"part-{part:05d}.parquet")
    return out_dir
