"""A VQA set derived from the extracted sample corpus, for the demo: questions whose answers the figures show.

Input: the extraction job's Parquet shards `<root>/{train,val,test}/*.parquet` (columns caption, image = JPEG bytes,
...). The sample corpus draws its figures from their captions, so what the caption states is visible:
  - modality: the earliest modality phrase in the caption ("radiograph" -> x-ray, "H&E" -> histology, "bar chart" ->
    chart, ...) gives "what modality is this image?" (open), "is this a chart?" and "is this a radiology image?"
    (closed, yes/no);
  - counts: "<number> [up to three words] <object>" ("three bright round nodules") gives "how many nodules are
    shown?" (open);
  - colours: "<colour> [one word] <object>" ("green fluorescent cells") gives "what color are the cells?" (open);
  - trends: "curves rising|falling" gives "are the curves rising or falling?" (closed: a choice of two).
The set is written in VQA-RAD's split-file layout (images/, trainset.json from train, testset.json from val + test),
so `load_vqa_rad(..., fmt="splits")` and the fine-tuning job read it like any VQA-RAD folder. Rows without a caption or
with an undecodable image are reported and skipped; rows with nothing to ask about are counted.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

MODALITIES = (  # (answer, caption pattern)
    ("chart", r"\b(?:bar |line |pie |scatter )?(?:chart|plot|graph|histogram)s?\b"),
    ("x-ray", r"\b(?:radiograph\w*|x-ray|xray|roentgenogram)\b"),
    ("ct", r"\b(?:ct|computed tomography)\b"),
    ("mri", r"\b(?:mri|magnetic resonance)\b"),
    ("ultrasound", r"\b(?:ultrasound|sonograph\w*|ultrasonograph\w*)\b"),
    ("histology", r"(?:\bh&e\b|\bhaematoxylin|\bhematoxylin|\bhistolog\w*|\bstained (?:tissue )?section)"),
    ("fluorescence", r"\b(?:immuno)?fluorescen\w*"),
    ("microscopy", r"\b(?:micrograph\w*|microscopy)\b"),
)
RADIOLOGY = frozenset({"x-ray", "ct", "mri", "ultrasound"})
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
           "ten": 10, "eleven": 11, "twelve": 12}
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "magenta", "cyan", "white", "black",
           "brown", "gray", "grey")
OBJECTS = (r"nodules?|lesions?|masses|mass|cysts?|cells?|nuclei|glands?|spots?|dots?|foci|bars?|curves?|lines?|"
           r"circles?|squares?|triangles?|shapes?|colonies|colony|blobs?|points?|peaks?|vessels?|stones?|"
           r"calcifications?")
_COUNT = re.compile(rf"\b(?P<number>\d+|{'|'.join(NUMBERS)})\s+(?:[a-z-]+\s+){{0,3}}?(?P<object>{OBJECTS})\b")
_COLOUR = re.compile(rf"\b(?P<colour>{'|'.join(COLOURS)})\s+(?:[a-z-]+\s+)?(?P<object>{OBJECTS})\b")
_TREND = re.compile(r"\b(?:curves?|lines?)\s+(?P<trend>rising|falling)\b")
TRAIN_SPLITS, TEST_SPLITS = ("train",), ("val", "test")


@dataclass(frozen=True)
class Question:
    question: str
    answer: str
    answer_type: str  # OPEN / CLOSED, as VQA-RAD writes it


@dataclass
class SyntheticVQASummary:
    train_questions: int = 0
    test_questions: int = 0
    images: int = 0
    rows_without_questions: int = 0
    problems: list[str] = field(default_factory=list)


def modality_of(caption: str) -> str | None:
    """The modality whose phrase comes first in the caption, or None."""
    text = caption.lower()
    found = [(match.start(), answer) for answer, pattern in MODALITIES if (match := re.search(pattern, text))]
    return min(found)[1] if found else None


def derive_questions(caption: str) -> list[Question]:
    text = caption.lower()
    questions = []
    modality = modality_of(text)
    if modality is not None:
        questions += [
            Question("what modality is this image?", modality, "OPEN"),
            Question("is this a chart?", "yes" if modality == "chart" else "no", "CLOSED"),
            Question("is this a radiology image?", "yes" if modality in RADIOLOGY else "no", "CLOSED"),
        ]
    asked = set()
    for match in _COUNT.finditer(text):
        noun = _plural_of(match["object"])
        if ("count", noun) not in asked:
            asked.add(("count", noun))
            number = match["number"]
            questions.append(Question(f"how many {noun} are shown?", str(NUMBERS.get(number, number)), "OPEN"))
    for match in _COLOUR.finditer(text):
        noun = match["object"]
        if ("colour", noun) not in asked:
            asked.add(("colour", noun))
            verb = "are" if _is_plural(noun) else "is"
            questions.append(Question(f"what color {verb} the {noun}?", match["colour"], "OPEN"))
    if modality == "chart" and (match := _TREND.search(text)):
        questions.append(Question("are the curves rising or falling?", match["trend"], "CLOSED"))
    return questions


def _is_plural(noun: str) -> bool:
    return noun in ("nuclei", "foci") or (noun.endswith("s") and noun != "mass")


def _plural_of(noun: str) -> str:
    """The plural used in count questions ("one nodule" is asked as "how many nodules")."""
    if _is_plural(noun):
        return noun
    return {"mass": "masses", "colony": "colonies"}.get(noun, noun + "s")


def write_vqa_set(parquet_root: str | Path, output_dir: str | Path) -> SyntheticVQASummary:
    """Writes images/ + trainset.json + testset.json under `output_dir` from the corpus at `parquet_root`."""
    parquet_root, output_dir = Path(parquet_root), Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    summary = SyntheticVQASummary()
    sets: dict[str, list[dict]] = {"train": [], "test": []}
    for split_dir in sorted(p for p in parquet_root.iterdir() if p.is_dir() and p.name in TRAIN_SPLITS + TEST_SPLITS):
        target = "train" if split_dir.name in TRAIN_SPLITS else "test"
        for path in sorted(split_dir.glob("*.parquet")):
            for index, row in enumerate(pq.read_table(path, columns=["caption", "image"]).to_pylist()):
                _add_row(row, f"{path.relative_to(parquet_root)} row {index}", output_dir, sets[target], summary)
    if not sets["train"] or not sets["test"]:
        raise ValueError(f"{parquet_root}: the corpus yields {len(sets['train'])} train and {len(sets['test'])} "
                         "held-out questions; both splits need some")
    for name, records in sets.items():
        (output_dir / f"{name}set.json").write_text(json.dumps(records, indent=1))
    summary.train_questions, summary.test_questions = len(sets["train"]), len(sets["test"])
    log.info("synthetic VQA: %s", summary)
    return summary


def _add_row(row: dict, where: str, output_dir: Path, records: list[dict], summary: SyntheticVQASummary) -> None:
    caption, data = row.get("caption"), row.get("image")
    problem = _row_problem(caption, data)
    if problem:
        summary.problems.append(f"{where}: {problem}")
        log.warning("skipped %s: %s", where, problem)
        return
    questions = derive_questions(caption)
    if not questions:
        summary.rows_without_questions += 1
        return
    image_name = f"{hashlib.sha256(data).hexdigest()[:20]}.jpg"
    if not (output_dir / "images" / image_name).exists():
        (output_dir / "images" / image_name).write_bytes(data)
        summary.images += 1
    for q in questions:
        records.append({"qid": len(records), "image_name": image_name, "answer": q.answer,
                        "answer_type": q.answer_type, "question": q.question, "phrase_type": "synthetic"})


def _row_problem(caption: object, data: object) -> str | None:
    if not isinstance(caption, str) or not caption.strip():
        return "no caption"
    if not isinstance(data, bytes) or not data:
        return "no image bytes"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return f"image does not decode: {err}"
    return None
