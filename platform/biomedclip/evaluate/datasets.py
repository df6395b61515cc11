"""Labelled image datasets in their published formats, listed up front and read one image at a time.

Every dataset has `samples` (name + label string), `problems` (what was skipped while listing, by name) and
`load_image(index) -> RGB PIL image`. Names are what a report shows: a file path, `file.h5#index`, a patient id.
Formats:
- folder: `root/<label>/<image files>` (LC25000 `lung_image_sets/{lung_aca,lung_n,lung_scc}`, TCGA-TIL
  `{til-negative,til-positive}`); files with other suffixes (e.g. classmap.txt) are ignored.
- pcam: `camelyonpatch_level_2_split_<split>_x.h5` (key x: N x 96 x 96 x 3 uint8) with its `_y.h5` (key y:
  N x 1 x 1 x 1); labels "0"/"1".
- rsna: `stage_2_train_labels.csv` (or the Kaggle .csv.zip): one row per box, so a patient's label is "1" when any
  of its rows has Target 1; images `<image_dir>/<patientId>.dcm` (default image_dir: stage_2_train_images/ beside
  the CSV).
- csv: a CSV with `path` and `label` columns; relative paths are relative to the CSV's folder.
"""
from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from biomedclip.evaluate.dicom import read_dicom_rgb
from biomedclip.io import is_local

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm"}
PCAM_PREFIX = "camelyonpatch_level_2_split_"
PCAM_IMAGE_SHAPE = (96, 96, 3)
RSNA_COLUMNS = ("patientId", "Target")
RSNA_IMAGE_DIR = "stage_2_train_images"


class DatasetError(ValueError):
    """A dataset that cannot be read at all (as opposed to single bad examples, which are skipped)."""


@dataclass(frozen=True)
class Sample:
    name: str
    label: str


@dataclass(frozen=True)
class Problem:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass(frozen=True)
class DataConfig:
    format: Literal["auto", "folder", "pcam", "rsna", "csv", "parquet"] = "auto"
    split: str = "test"  # PCam split when --data is a folder; Parquet split folder
    rsna_image_dir: str | None = None  # default: stage_2_train_images/ beside the label CSV


def read_image_file(path: Path) -> Image.Image:
    if path.suffix.lower() == ".dcm":
        return read_dicom_rgb(path)
    with Image.open(path) as image:
        return image.convert("RGB")


class FileDataset:
    """Samples whose names are image paths."""

    def __init__(self, samples: list[Sample], problems: list[Problem]):
        self.samples, self.problems = samples, problems

    def load_image(self, index: int) -> Image.Image:
        return read_image_file(Path(self.samples[index].name))


def folder_dataset(root: str | Path) -> FileDataset:
    root = Path(root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not class_dirs:
        raise DatasetError(f"{root}: expected one sub-folder per class")
    samples = [Sample(str(path), folder.name) for folder in class_dirs for path in sorted(folder.iterdir())
               if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        names = ", ".join(folder.name for folder in class_dirs)
        raise DatasetError(f"{root}: no image files in the class folders ({names}); is this one level too high?")
    return FileDataset(samples, [])


def csv_dataset(csv_path: str | Path) -> FileDataset:
    csv_path = Path(csv_path)
    rows = _read_csv(csv_path, required=("path", "label"))
    samples, problems = [], []
    for line, row in rows:
        path = csv_path.parent / row["path"].strip()
        label = row["label"].strip()
        name = f"{csv_path}:{line}"
        if not row["path"].strip() or not label:
            problems.append(Problem(name, "empty path or label"))
        elif not path.is_file():
            problems.append(Problem(str(path), f"file not found (listed at {name})"))
        else:
            samples.append(Sample(str(path), label))
    return FileDataset(samples, problems)


def rsna_labels(csv_path: str | Path) -> tuple[dict[str, str], list[Problem]]:
    """patientId -> "1" if any of the patient's rows has Target 1, else "0"."""
    csv_path = Path(csv_path)
    labels: dict[str, str] = {}
    problems = []
    for line, row in _read_csv(csv_path, required=RSNA_COLUMNS):
        patient, target = row["patientId"].strip(), row["Target"].strip()
        if not patient or target not in ("0", "1"):
            problems.append(Problem(f"{csv_path}:{line}", f"patientId {patient!r} / Target {target!r} is not valid"))
            continue
        labels[patient] = max(labels.get(patient, "0"), target)
    return labels, problems


def rsna_dataset(csv_path: str | Path, image_dir: str | Path | None = None) -> FileDataset:
    csv_path = Path(csv_path)
    image_dir = Path(image_dir) if image_dir else csv_path.parent / RSNA_IMAGE_DIR
    labels, problems = rsna_labels(csv_path)
    samples = []
    for patient, label in labels.items():
        path = image_dir / f"{patient}.dcm"
        if path.is_file():
            samples.append(Sample(str(path), label))
        else:
            problems.append(Problem(patient, f"image {path} not found"))
    return FileDataset(samples, problems)


class PCamDataset:
    """One PCam split; the HDF5 files are opened lazily in whichever process reads images."""

    def __init__(self, x_path: str | Path):
        self.x_path = Path(x_path)
        self.y_path = self.x_path.with_name(self.x_path.name.replace("_x.h5", "_y.h5"))
        labels = self._read_labels()
        self.samples = [Sample(f"{self.x_path.name}#{i}", str(int(v))) for i, v in enumerate(labels)]
        self.problems: list[Problem] = []
        self._images = None

    def _read_labels(self) -> np.ndarray:
        import h5py

        for path in (self.x_path, self.y_path):
            if path.suffix == ".gz" or not path.is_file():
                raise DatasetError(f"{path}: not found (PCam files must be gunzipped .h5)")
        with h5py.File(self.x_path, "r") as fx, h5py.File(self.y_path, "r") as fy:
            if "x" not in fx or "y" not in fy:
                raise DatasetError(f"{self.x_path.name}/{self.y_path.name}: expected datasets 'x' and 'y'")
            x_shape, y = fx["x"].shape, fy["y"][:]
        if tuple(x_shape[1:]) != PCAM_IMAGE_SHAPE or y.shape[1:] != (1, 1, 1) or len(y) != x_shape[0]:
            raise DatasetError(f"{self.x_path.name}: x {x_shape} / y {y.shape} are not N x 96 x 96 x 3 / N x 1 x 1 x 1")
        return y.reshape(-1)

    def load_image(self, index: int) -> Image.Image:
        if self._images is None:
            import h5py

            self._images = h5py.File(self.x_path, "r")["x"]
        return Image.fromarray(self._images[index])

    def __getstate__(self) -> dict:  # an open HDF5 handle does not travel to Ray workers
        return {**self.__dict__, "_images": None}


def pcam_x_path(path: str | Path, split: str) -> Path:
    path = Path(path)
    return path if path.is_file() else path / f"{PCAM_PREFIX}{split}_x.h5"


def open_dataset(path: str | Path, config: DataConfig | None = None, data_format: str | None = None):
    """The dataset at `path`; the format comes from `data_format`, else `config.format`, else the path's contents."""
    config = config or DataConfig()
    if not is_local(str(path)):
        raise DatasetError(f"{path}: labelled datasets are read from a local folder or file (only Parquet splits may "
                           "be on s3:// or another URI)")
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: not found")
    data_format = data_format or config.format
    if data_format == "auto":
        data_format = detect_format(path, config.split)
    if data_format == "folder":
        return folder_dataset(path)
    if data_format == "pcam":
        return PCamDataset(pcam_x_path(path, config.split))
    if data_format == "rsna":
        return rsna_dataset(path, config.rsna_image_dir)
    if data_format == "csv":
        return csv_dataset(path)
    raise DatasetError(f"{path}: format {data_format!r} is not an image-classification dataset")


def detect_format(path: Path, split: str = "test") -> str:
    if path.is_dir():
        if (path / f"{PCAM_PREFIX}{split}_x.h5").is_file():
            return "pcam"
        return "parquet" if any(path.glob("**/*.parquet")) else "folder"
    if path.name.endswith("_x.h5"):
        return "pcam"
    if path.name.endswith((".csv", ".csv.zip")):
        header = _csv_header(path)
        if all(column in header for column in RSNA_COLUMNS):
            return "rsna"
        if {"path", "label"} <= set(header):
            return "csv"
        raise DatasetError(f"{path}: header {header} has neither patientId,Target (RSNA) nor path,label columns")
    raise DatasetError(f"{path}: cannot tell the dataset format; set data.format")


def _open_text(path: Path) -> io.TextIOBase:
    """A CSV file, or the single CSV inside a .zip (as Kaggle ships stage_2_train_labels.csv)."""
    if path.suffix != ".zip":
        return path.open(newline="", encoding="utf-8")
    with zipfile.ZipFile(path) as archive:
        members = [name for name in archive.namelist() if name.endswith(".csv")]
        if len(members) != 1:
            raise DatasetError(f"{path}: expected exactly one .csv inside, found {members}")
        return io.StringIO(archive.read(members[0]).decode("utf-8"), newline="")


def _csv_header(path: Path) -> list[str]:
    with _open_text(path) as handle:
        return next(csv.reader(handle), [])


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs; a missing required column fails the whole file."""
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (header: {reader.fieldnames})")
        return [(reader.line_num, {k: v or "" for k, v in row.items()}) for row in reader]
