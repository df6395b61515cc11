"""Builders shared by the VQA tests: the real VQA-RAD sample, a tiny BiomedCLIP, dataset folders with images left
out, and extraction-style Parquet rows of synthetic figures."""
from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

from biomedclip.model import BiomedCLIP, build_model
from biomedclip.text import Tokenizer
from biomedclip.vqa import FusionConfig
from tests.helpers import tiny_config, train_tokenizer

VQA_RAD_PUBLIC = "VQA_RAD_Dataset_Public.subset.json"


def vqa_rad_dir(realdata: Path) -> Path:
    return realdata / "vqa" / "vqa_rad"


def vqa_rad_public(realdata: Path) -> list[dict]:
    return json.loads((vqa_rad_dir(realdata) / VQA_RAD_PUBLIC).read_text())


def tiny_encoder(realdata: Path, seed: int = 0) -> tuple[BiomedCLIP, Tokenizer]:
    """A tiny random BiomedCLIP whose tokenizer is trained on the real VQA-RAD questions."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer([r["question"] for r in vqa_rad_public(realdata)])
    return build_model(tiny_config(tokenizer)).eval(), tokenizer


def tiny_fusion() -> FusionConfig:
    return FusionConfig(width=32, layers=1, heads=2, mlp_ratio=2.0, dropout=0.0)


def linked_dataset(source: Path, target: Path, image_dir: str, leave_out: tuple[str, ...] = ()) -> Path:
    """`target` with symlinks to the JSON files and images of `source`, minus the images named in `leave_out`."""
    (target / image_dir).mkdir(parents=True)
    for path in source.glob("*.json"):
        (target / path.name).symlink_to(path)
    for path in (source / image_dir).iterdir():
        if path.name not in leave_out:
            (target / image_dir / path.name).symlink_to(path)
    return target


def figure_jpeg(kind: str, count: int, colour: str = "white", seed: int = 0) -> bytes:
    """A figure drawn as its caption says: a grayscale 'radiograph' with `count` blobs, or a chart with `count` bars."""
    rng = random.Random(seed)
    if kind == "chart":
        image = Image.new("RGB", (96, 96), "white")
        draw = ImageDraw.Draw(image)
        for i in range(count):
            draw.rectangle([8 + i * 14, 90 - rng.randint(20, 80), 16 + i * 14, 90], fill=colour)
    else:
        image = Image.new("RGB", (96, 96), (20, 20, 20))
        draw = ImageDraw.Draw(image)
        for _ in range(count):
            x, y = rng.randint(10, 80), rng.randint(10, 80)
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def write_corpus_parquet(root: Path, split: str, rows: list[tuple[str, bytes]]) -> Path:
    """One extraction-style Parquet shard of (caption, image bytes) rows under `root/split/`."""
    n = len(rows)
    table = pa.table({
        "pmcid": [f"PMC{1000 + i}" for i in range(n)], "pmid": [str(i) for i in range(n)],
        "fig_id": [f"F{i}" for i in range(n)], "label": [f"Figure {i}" for i in range(n)],
        "caption": [caption for caption, _ in rows], "inline_refs": [[] for _ in range(n)],
        "image": pa.array([data for _, data in rows], pa.binary()),
        "width": [96] * n, "height": [96] * n, "orig_width": [96] * n, "orig_height": [96] * n,
        "license": ["CC BY"] * n, "split": [split] * n,
        "sha256": [hashlib.sha256(data).hexdigest() for _, data in rows], "doi": [""] * n,
    })
    (root / split).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / split / "part-00000.parquet")
    return root / split / "part-00000.parquet"


def synthetic_rows(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """Radiographs with 1-3 nodules and bar charts with 2-4 bars, captions stating what is drawn."""
    words = {1: "one", 2: "two", 3: "three", 4: "four"}
    rows = []
    for i in range(n):
        if i % 2:
            count = 2 + i % 3
            rows.append((f"Bar chart with {words[count]} blue bars.", figure_jpeg("chart", count, "blue", seed + i)))
        else:
            count = 1 + i % 3
            rows.append((f"Chest radiograph showing {count} round nodules.", figure_jpeg("xray", count, seed=seed + i)))
    return rows


MARKER_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (40, 60, 230)}


def write_colour_slake(root: Path, images: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    """A SLAKE-layout set (imgs/, train.json, test.json) of yes/no colour verification questions: each image holds
    one marker of a random colour, position and size on a noisy dark background, and is asked "is the marker <c>?"
    about its own colour (yes) and one other (no), so answers are balanced and need both image and question.
    `images`: images per split."""
    rng = random.Random(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    for split, count in images.items():
        entries = []
        for index in range(count):
            colour = rng.choice(sorted(MARKER_COLOURS))
            image = Image.new("RGB", (size, size), tuple(rng.randint(0, 50) for _ in range(3)))
            radius = rng.randint(size * 3 // 10, size * 9 // 20)  # a large marker: its colour dominates the image
            x, y = rng.randint(radius, size - radius), rng.randint(radius, size - radius)
            ImageDraw.Draw(image).ellipse([x - radius, y - radius, x + radius, y + radius],
                                          fill=MARKER_COLOURS[colour])
            name = f"{split}_{index}.png"
            image.save(root / "imgs" / name)
            other = rng.choice(sorted(set(MARKER_COLOURS) - {colour}))
            for asked, answer in rng.sample([(colour, "yes"), (other, "no")], 2):
                entries.append({"qid": len(entries), "img_name": name, "question": f"is the marker {asked}?",
                                "answer": answer, "answer_type": "CLOSED", "q_lang": "en"})
        (root / f"{split}.json").write_text(json.dumps(entries))
    return root
