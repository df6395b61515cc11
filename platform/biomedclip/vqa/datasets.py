"""VQA-RAD and SLAKE loaders, tolerant of the quirks of the real release files.

Every loader returns a `LoadResult`: the good records plus one `LoadProblem` per skipped record (malformed record,
unknown phrase type, missing image), each naming the file and the record's id; problems are also logged as warnings.

VQA-RAD, original release (`VQA_RAD Dataset Public.json`, images in `VQA_RAD Image Folder/`):
  train = phrase_type freeform/para, test = test_freeform/test_para. qid is an int or a string, answers are strings
  or ints, `answer_type` may carry a trailing space, optional keys (question_rephrase) may be absent.
VQA-RAD, common split files (`trainset.json` / `testset.json`, images in `images/`).
SLAKE (`train.json` / `validate.json` / `test.json`, images in `imgs/xmlabN/source.jpg`), filtered by `q_lang`.
Where the exact name is absent, a single `<name stem>.*.json` (e.g. `trainset.subset.json`) is accepted.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from biomedclip.vqa.answers import AnswerError, normalize_answer

log = logging.getLogger(__name__)

DATASETS = ("vqa-rad", "slake")
LANGUAGES = ("en", "zh", "all")
VQA_RAD_FORMATS = ("auto", "public", "splits")
VQA_RAD_PUBLIC = ("VQA_RAD Dataset Public.json", "VQA_RAD_Dataset_Public.json")
VQA_RAD_PHRASE_TYPES = {"train": ("freeform", "para"), "test": ("test_freeform", "test_para")}
VQA_RAD_SPLIT_FILES = {"train": "trainset.json", "test": "testset.json"}
VQA_RAD_IMAGE_DIRS = ("VQA_RAD Image Folder", "images")
SLAKE_SPLITS = {"train": "train.json", "validate": "validate.json", "val": "validate.json", "test": "test.json"}
SLAKE_IMAGE_DIRS = ("imgs",)

AnswerType = Literal["open", "closed"]


@dataclass(frozen=True)
class VQARecord:
    qid: str
    image: Path
    question: str
    answer: str  # normalised
    answer_type: AnswerType
    lang: str = "en"


@dataclass(frozen=True)
class LoadProblem:
    source: str
    record_id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: record {self.record_id}: {self.reason}"


@dataclass
class LoadResult:
    records: list[VQARecord] = field(default_factory=list)
    problems: list[LoadProblem] = field(default_factory=list)


class DatasetError(ValueError):
    """The dataset as a whole cannot be read (missing file, not a JSON array, unknown split)."""


class RecordError(ValueError):
    """One record is malformed; it is skipped and reported."""


def load_vqa_dataset(name: str, data_dir: str | Path, split: str, *, lang: str = "en",
                     vqa_rad_format: str = "auto") -> LoadResult:
    """Loads one split of `vqa-rad` or `slake` from its dataset folder."""
    if name == "vqa-rad":
        return load_vqa_rad(data_dir, split, vqa_rad_format)
    if name == "slake":
        return load_slake(data_dir, split, lang)
    raise DatasetError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")


def load_vqa_rad(data_dir: str | Path, split: str, fmt: str = "auto") -> LoadResult:
    """`fmt`: public (the original release file), splits (trainset/testset.json), or auto (public when present)."""
    data_dir = Path(data_dir)
    if split not in VQA_RAD_PHRASE_TYPES:
        raise DatasetError(f"VQA-RAD split {split!r}: choose train or test")
    if fmt not in VQA_RAD_FORMATS:
        raise DatasetError(f"VQA-RAD format {fmt!r}: choose from {', '.join(VQA_RAD_FORMATS)}")
    image_dir = _first_dir(data_dir, VQA_RAD_IMAGE_DIRS)
    public = None if fmt == "splits" else _find_file(data_dir, VQA_RAD_PUBLIC, "VQA_RAD*Public*.json",
                                                     required=fmt == "public")
    if public is not None:
        phrase_types = VQA_RAD_PHRASE_TYPES[split]
        return _load(public, image_dir, lambda raw: _vqa_rad_record(raw, image_dir, phrase_types))
    path = _find_file(data_dir, (VQA_RAD_SPLIT_FILES[split],), f"{split}set.*.json", required=True)
    return _load(path, image_dir, lambda raw: _vqa_rad_record(raw, image_dir, None))


def load_slake(data_dir: str | Path, split: str, lang: str = "en") -> LoadResult:
    """`lang`: en, zh, or all (both)."""
    data_dir = Path(data_dir)
    if split not in SLAKE_SPLITS:
        raise DatasetError(f"SLAKE split {split!r}: choose from {', '.join(SLAKE_SPLITS)}")
    if lang not in LANGUAGES:
        raise DatasetError(f"SLAKE language {lang!r}: choose from {', '.join(LANGUAGES)}")
    name = SLAKE_SPLITS[split]
    path = _find_file(data_dir, (name,), f"{Path(name).stem}.*.json", required=True)
    image_dir = _first_dir(data_dir, SLAKE_IMAGE_DIRS)
    return _load(path, image_dir, lambda raw: _slake_record(raw, image_dir, lang))


def _load(path: Path, image_dir: Path, parse: Callable[[dict], VQARecord | None]) -> LoadResult:
    """Parses every entry; None from `parse` means "not in this split"; errors and missing images become problems."""
    result = LoadResult()
    for index, raw in enumerate(_read_array(path)):
        record_id = _record_id(raw, index)
        try:
            if not isinstance(raw, dict):
                raise RecordError(f"expected an object, got {type(raw).__name__}")
            record = parse(raw)
        except RecordError as err:
            result.problems.append(LoadProblem(path.name, record_id, str(err)))
            continue
        if record is None:
            continue
        if not record.image.is_file():
            result.problems.append(LoadProblem(path.name, record_id, f"image not found: {record.image}"))
            continue
        result.records.append(record)
    for problem in result.problems:
        log.warning("skipped %s", problem)
    log.info("%s: %d records loaded, %d skipped (images from %s)", path, len(result.records),
             len(result.problems), image_dir)
    return result


def _vqa_rad_record(raw: dict, image_dir: Path, phrase_types: tuple[str, ...] | None) -> VQARecord | None:
    if phrase_types is not None:
        phrase_type = _text(raw, "phrase_type")
        if phrase_type not in VQA_RAD_PHRASE_TYPES["train"] + VQA_RAD_PHRASE_TYPES["test"]:
            raise RecordError(f"phrase_type: unknown value {phrase_type!r}")
        if phrase_type not in phrase_types:
            return None
    return VQARecord(
        qid=_qid(raw),
        image=image_dir / _relative_path(raw, "image_name"),
        question=_text(raw, "question"),
        answer=_answer(raw),
        answer_type=_answer_type(raw),
    )


def _slake_record(raw: dict, image_dir: Path, lang: str) -> VQARecord | None:
    q_lang = _text(raw, "q_lang")
    if lang != "all" and q_lang != lang:
        return None
    return VQARecord(
        qid=_qid(raw),
        image=image_dir / _relative_path(raw, "img_name"),
        question=_text(raw, "question"),
        answer=_answer(raw),
        answer_type=_answer_type(raw),
        lang=q_lang,
    )


def _record_id(raw: object, index: int) -> str:
    qid = raw.get("qid") if isinstance(raw, dict) else None
    return f"qid {qid}" if isinstance(qid, (str, int)) and not isinstance(qid, bool) else f"#{index} (no qid)"


def _qid(raw: dict) -> str:
    qid = raw.get("qid")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
        raise RecordError(f"qid: expected an int or a string, got {qid!r}")
    return str(qid).strip()


def _text(raw: dict, key: str) -> str:
    if key not in raw:
        raise RecordError(f"{key}: missing")
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _relative_path(raw: dict, key: str) -> Path:
    path = Path(_text(raw, key))
    if path.is_absolute() or ".." in path.parts:
        raise RecordError(f"{key}: {str(path)!r} must be a path inside the image folder")
    return path


def _answer(raw: dict) -> str:
    if "answer" not in raw:
        raise RecordError("answer: missing")
    try:
        return normalize_answer(raw["answer"])
    except AnswerError as err:
        raise RecordError(f"answer: {err}") from err


def _answer_type(raw: dict) -> AnswerType:
    value = _text(raw, "answer_type").lower()
    if value not in ("open", "closed"):
        raise RecordError(f"answer_type: expected OPEN or CLOSED, got {raw['answer_type']!r}")
    return value


def _read_array(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot read as JSON: {err}") from err
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    return data


def _find_file(data_dir: Path, names: tuple[str, ...], pattern: str, required: bool) -> Path | None:
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir}: dataset folder not found")
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
    matches = sorted(data_dir.glob(pattern))
    if len(matches) > 1:
        raise DatasetError(f"{data_dir}: several files match {pattern}: {', '.join(m.name for m in matches)}")
    if not matches and required:
        raise DatasetError(f"{data_dir}: none of {', '.join(names)} (or {pattern}) found")
    return matches[0] if matches else None


def _first_dir(data_dir: Path, names: tuple[str, ...]) -> Path:
    """The dataset's image folder: the first of `names` that exists, else the dataset folder itself."""
    return next((data_dir / name for name in names if (data_dir / name).is_dir()), data_dir)
