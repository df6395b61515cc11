"""A user's own image-caption pairs (CSV or JSONL with `image_path` and `caption`) as pair shards: the one pair
schema (`PAIR_SCHEMA`) split into `train/`, `val/` and `test/` Parquet files that pretraining and fine-tuning read.

Images go through the extraction's normalisation (allow-listed formats, RGB, shorter side reduced, JPEG). Optional
columns: `group` (pairs of one group, e.g. a patient or an article, stay in one split; default: the image path) and
`license`. A row that cannot be used is left out and reported with its line and reason; the others are written.
Plain Python (no Ray): a few hundred thousand pairs convert on one machine.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from biomedclip.pmc.images import ImageConfig, normalize_image
from biomedclip.pmc.schema import PAIR_SCHEMA
from biomedclip.pmc.skips import Skipped
from biomedclip.pmc.split import SPLITS, SplitConfig, assign_split

REQUIRED_COLUMNS = ("image_path", "caption")


class PairsInputError(ValueError):
    """The input file as a whole cannot be read (format, header); the message names the file and what is wrong."""


@dataclass
class ConversionReport:
    written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (line, reason, detail)

    def reasons(self) -> Counter:
        return Counter(reason for _, reason, _ in self.skipped)


def read_records(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of a .csv (header row) or .jsonl file, checked for the required columns."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise PairsInputError(f"{path}: the header lacks {', '.join(missing)} (has {reader.fieldnames})")
            return [(reader.line_num, row) for row in reader]
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise PairsInputError(f"{path}:{number}: not valid JSON ({err})") from err
            if not isinstance(record, dict):
                raise PairsInputError(f"{path}:{number}: expected an object with {', '.join(REQUIRED_COLUMNS)}")
            records.append((number, record))
        return records
    raise PairsInputError(f"{path}: expected a .csv or .jsonl file")


def pair_row(record: dict, base: Path, split: SplitConfig, image: ImageConfig, default_license: str) -> dict:
    """One PAIR_SCHEMA row; raises Skipped naming the field that is wrong."""
    caption = str(record.get("caption") or "").strip()
    if not caption:
        raise Skipped("caption_too_short", "caption is empty")
    relative = str(record.get("image_path") or "").strip()
    if not relative:
        raise Skipped("missing_image", "image_path is empty")
    image_file = (base / relative).resolve()
    if not image_file.is_file():
        raise Skipped("missing_image", f"image_path {relative}: no such file {image_file}")
    normalized = normalize_image(image_file.read_bytes(), image)
    group = str(record.get("group") or relative)
    return {
        "pmcid": group, "pmid": None, "fig_id": relative, "label": None, "caption": caption, "inline_refs": "",
        "image": normalized.jpeg, "width": normalized.width, "height": normalized.height,
        "orig_width": normalized.orig_width, "orig_height": normalized.orig_height,
        "license": str(record.get("license") or default_license), "split": assign_split(group, split),
        "sha256": normalized.sha256, "doi": None,
    }


def convert_pairs(source: str | Path, output: str | Path, split: SplitConfig | None = None,
                  rows_per_file: int = 1000, image: ImageConfig | None = None,
                  default_license: str = "unknown") -> ConversionReport:
    """Writes `output/{train,val,test}/part-NNNNN.parquet` (default split 90% train, 10% val); image paths are
    relative to the input file's folder."""
    source, output = Path(source), Path(output)
    split, image = split or SplitConfig(0.9, 0.1, 0.0), image or ImageConfig()
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file: must be positive, got {rows_per_file}")
    report = ConversionReport()
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for number, record in read_records(source):
        try:
            row = pair_row(record, source.parent, split, image, default_license)
        except Skipped as skip:
            report.skipped.append((number, skip.reason, skip.detail))
            continue
        rows[row["split"]].append(row)
    for name, split_rows in rows.items():
        for part, start in enumerate(range(0, len(split_rows), rows_per_file)):
            (output / name).mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(split_rows[start:start + rows_per_file], schema=PAIR_SCHEMA)
            pq.write_table(table, output / name / f"part-{part:05d}.parquet")
        report.written[name] = len(split_rows)
    return report
