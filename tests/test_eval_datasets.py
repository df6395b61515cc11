"""Dataset loaders on the real formats: LC25000 folders, RSNA label CSVs and DICOMs, PCam HDF5, generic CSV."""
import csv
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from biomedclip.evaluate.datasets import (
    DataConfig,
    DatasetError,
    PCamDataset,
    csv_dataset,
    detect_format,
    folder_dataset,
    open_dataset,
    rsna_labels,
)
from biomedclip.evaluate.dicom import read_dicom_rgb

LUNG = Path("classification/lc25000/lung_colon_image_set/lung_image_sets")
RSNA = Path("classification/rsna_pneumonia")
XRAY = "images/xray/dicom/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"
XRAY_DICOM, XRAY_DECODED = Path(XRAY + ".dcm"), Path(XRAY + ".derived.png")  # PNG: pydicom decode, no window


def write_pcam(directory: Path, split: str, patches: np.ndarray, labels: np.ndarray) -> Path:
    """The published PCam layout: x (N, 96, 96, 3) uint8 and y (N, 1, 1, 1) uint8, in two files."""
    x_path = directory / f"camelyonpatch_level_2_split_{split}_x.h5"
    with h5py.File(x_path, "w") as f:
        f.create_dataset("x", data=patches, dtype="uint8", chunks=(1, *patches.shape[1:]), compression="gzip")
    with h5py.File(directory / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
        f.create_dataset("y", data=labels.reshape(-1, 1, 1, 1).astype(np.uint8))
    return x_path


def montage_patches(realdata: Path, count: int) -> np.ndarray:
    """Real 96-px PCam patches cut from the README montage (16 x 4 cells of 100 px)."""
    montage = np.asarray(Image.open(realdata / "classification/pcam/pcam_examples_montage.jpg").convert("RGB"))
    cells = [montage[r * 100 + 2:r * 100 + 98, c * 100 + 2:c * 100 + 98] for r in range(4) for c in range(16)]
    return np.stack(cells[:count])


def test_lc25000_lung_folder_layout(realdata):
    root = realdata / LUNG
    assert detect_format(root) == "folder"
    dataset = folder_dataset(root)
    labels = [s.label for s in dataset.samples]
    assert sorted(set(labels)) == ["lung_aca", "lung_n", "lung_scc"]
    assert all(labels.count(label) == 4 for label in set(labels))
    assert Path(dataset.samples[0].name).name == "lungaca1.jpeg"
    image = dataset.load_image(0)
    assert image.mode == "RGB" and image.size == (224, 224)
    assert dataset.problems == []


def test_folder_ignores_other_files_and_needs_class_folders(realdata, tmp_path):
    (tmp_path / "til-positive").mkdir()
    shutil.copy(realdata / LUNG / "lung_n" / "lungn1.jpeg", tmp_path / "til-positive" / "a.jpeg")
    (tmp_path / "til-positive" / "classmap.txt").write_text("til-negative\ntil-positive\n")
    dataset = folder_dataset(tmp_path)
    assert [Path(s.name).name for s in dataset.samples] == ["a.jpeg"]
    with pytest.raises(DatasetError, match="one sub-folder per class"):
        folder_dataset(tmp_path / "til-positive")
    with pytest.raises(DatasetError, match=r"no image files in the class folders \(lung_image_sets\)"):
        folder_dataset(realdata / LUNG.parent)  # one level too high


def test_rsna_head_gives_one_label_per_patient(realdata):
    path = realdata / RSNA / "stage_2_train_labels.head100.csv"
    assert detect_format(path) == "rsna"
    labels, problems = rsna_labels(path)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    expected = {}
    for row in rows:  # oracle: a patient is positive when any of its rows is
        expected[row["patientId"]] = max(expected.get(row["patientId"], 0), int(row["Target"]))
    assert labels == {patient: str(target) for patient, target in expected.items()}
    assert len(labels) < len(rows)  # positive patients have several box rows
    assert problems == []


def test_rsna_full_zipped_csv_matches_the_published_counts(realdata):
    labels, problems = rsna_labels(realdata / RSNA / "kaggle_stage_2_train_labels.csv.zip")
    assert len(labels) == 26_684
    assert sum(v == "1" for v in labels.values()) == 6_012
    assert problems == []


def test_rsna_dataset_reads_dicoms_and_reports_missing_patients(realdata, tmp_path):
    csv_path = tmp_path / "stage_2_train_labels.csv"
    shutil.copy(realdata / RSNA / "stage_2_train_labels.head100.csv", csv_path)
    labels, _ = rsna_labels(csv_path)
    negative = next(p for p, v in labels.items() if v == "0")
    positive = next(p for p, v in labels.items() if v == "1")
    images = tmp_path / "stage_2_train_images"
    images.mkdir()
    for patient in (negative, positive):  # the SIIM DICOM has RSNA's exact format (CR, JPEG baseline, 1024 px)
        shutil.copy(realdata / XRAY_DICOM, images / f"{patient}.dcm")
    dataset = open_dataset(csv_path)
    assert sorted((Path(s.name).stem, s.label) for s in dataset.samples) == sorted([(negative, "0"), (positive, "1")])
    assert len(dataset.problems) == len(labels) - 2
    assert all("not found" in p.reason for p in dataset.problems)
    assert {p.name for p in dataset.problems} == set(labels) - {negative, positive}
    rgb = np.asarray(dataset.load_image(0))
    decoded = np.asarray(Image.open(realdata / XRAY_DECODED))
    assert rgb.shape == (1024, 1024, 3)
    np.testing.assert_array_equal(rgb[..., 1], decoded)


def test_rsna_bad_rows_are_reported_by_line(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("patientId,x,y,width,height,Target\nabc,,,,,0\ndef,,,,,maybe\n")
    labels, problems = rsna_labels(path)
    assert labels == {"abc": "0"}
    assert [p.name for p in problems] == [f"{path}:3"] and "maybe" in problems[0].reason
    (tmp_path / "other.csv").write_text("patient,Target\n")
    with pytest.raises(DatasetError, match="patientId"):
        rsna_labels(tmp_path / "other.csv")


def test_rsna_zip_with_several_csvs_is_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "labels.csv.zip", "w") as archive:
        archive.writestr("a.csv", "patientId,Target\n")
        archive.writestr("b.csv", "patientId,Target\n")
    with pytest.raises(DatasetError, match="exactly one .csv"):
        rsna_labels(tmp_path / "labels.csv.zip")


@pytest.mark.parametrize("name, window, derived", [
    ("images/ct/CT_small.dcm", (40, 400), "images/ct/CT_small.derived_W400L40.png"),
    ("images/mri/MR_small.dcm", None, "images/mri/MR_small.derived_W1600L600.png"),  # the file's own window
    (XRAY_DICOM, None, XRAY_DECODED),
])
def test_dicom_to_rgb_matches_the_reference_conversions(realdata, name, window, derived):
    rgb = np.asarray(read_dicom_rgb(realdata / name, window))
    reference = np.asarray(Image.open(realdata / derived).convert("L"))
    assert rgb.dtype == np.uint8 and rgb.shape == reference.shape + (3,)
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    np.testing.assert_array_equal(rgb[..., 0], reference)


def test_pcam_hdf5_round_trip(realdata, tmp_path):
    patches = montage_patches(realdata, 10)
    labels = np.array([0, 1] * 5)
    write_pcam(tmp_path, "test", patches, labels)
    write_pcam(tmp_path, "valid", patches[:4], labels[:4])
    assert detect_format(tmp_path) == "pcam"
    dataset = open_dataset(tmp_path)
    assert [s.label for s in dataset.samples] == [str(v) for v in labels]
    assert dataset.samples[3].name == "camelyonpatch_level_2_split_test_x.h5#3"
    np.testing.assert_array_equal(np.asarray(dataset.load_image(3)), patches[3])
    restored = pickle.loads(pickle.dumps(dataset))  # travels to Ray workers after a read
    np.testing.assert_array_equal(np.asarray(restored.load_image(9)), patches[9])
    assert len(open_dataset(tmp_path, DataConfig(split="valid")).samples) == 4
    assert len(open_dataset(tmp_path / "camelyonpatch_level_2_split_valid_x.h5").samples) == 4


def test_pcam_wrong_shapes_and_gzipped_files_are_refused(realdata, tmp_path):
    write_pcam(tmp_path, "test", montage_patches(realdata, 4)[:, :64, :64], np.zeros(4))
    with pytest.raises(DatasetError, match="96 x 96 x 3"):
        PCamDataset(tmp_path / "camelyonpatch_level_2_split_test_x.h5")
    with pytest.raises(DatasetError, match="gunzipped"):
        PCamDataset(tmp_path / "camelyonpatch_level_2_split_train_x.h5.gz")


def test_generic_csv_reports_missing_files_and_empty_labels(realdata, tmp_path):
    shutil.copy(realdata / LUNG / "lung_aca" / "lungaca2.jpeg", tmp_path / "a.jpeg")
    path = tmp_path / "labels.csv"
    path.write_text(
        "path,label\n"
        "a.jpeg,lung_aca\n"
        f"{realdata / 'images/ct/CT_small.dcm'},ct\n"
        "gone.png,lung_n\n"
        "a.jpeg,\n"
    )
    assert detect_format(path) == "csv"
    dataset = csv_dataset(path)
    assert [(Path(s.name).name, s.label) for s in dataset.samples] == [("a.jpeg", "lung_aca"), ("CT_small.dcm", "ct")]
    assert dataset.load_image(1).size == (128, 128)
    assert [str(p) for p in dataset.problems] == [
        f"{tmp_path / 'gone.png'}: file not found (listed at {path}:4)",
        f"{path}:5: empty path or label",
    ]


def test_unknown_csv_headers_are_refused_by_name(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("file,class\n")
    with pytest.raises(DatasetError, match=r"x.csv: header \['file', 'class'\]"):
        detect_format(path)
