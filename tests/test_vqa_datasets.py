"""VQA-RAD (both formats) and SLAKE loaders on the real files, with every quirk, bad record and missing image."""
import json
from collections import Counter

import pytest
from PIL import Image

from biomedclip.vqa.datasets import DatasetError, load_slake, load_vqa_dataset, load_vqa_rad
from tests.vqa_helpers import VQA_RAD_PUBLIC, linked_dataset, vqa_rad_dir, vqa_rad_public

TRAIN_PHRASES, TEST_PHRASES = {"freeform", "para"}, {"test_freeform", "test_para"}


def _key(record):
    return record.image.name, record.question, record.answer, record.answer_type


def test_vqa_rad_public_split_by_phrase_type(realdata):
    raw = vqa_rad_public(realdata)
    for split, phrases in (("train", TRAIN_PHRASES), ("test", TEST_PHRASES)):
        result = load_vqa_rad(vqa_rad_dir(realdata), split, "public")
        assert result.problems == []
        expected = sorted(str(r["qid"]) for r in raw if r["phrase_type"] in phrases)
        assert sorted(r.qid for r in result.records) == expected
    assert len(load_vqa_rad(vqa_rad_dir(realdata), "train").records) == 109  # auto picks the public file
    assert len(load_vqa_rad(vqa_rad_dir(realdata), "test").records) == 24


def test_vqa_rad_public_quirks(realdata):
    records = {r.qid: r for split in ("train", "test") for r in load_vqa_rad(vqa_rad_dir(realdata), split).records}
    assert records["0"].answer == "yes"  # the one string qid ("0", answer "Yes")
    assert [records[q].answer for q in ("1511", "1568", "1683", "2234", "2235")] == ["4", "2", "2", "12", "12"]
    assert records["2156"].answer_type == records["2157"].answer_type == "closed"  # "CLOSED " in the file
    assert records["2036"].question and records["2037"].answer == "the lungs"  # no question_rephrase key
    assert all(r.image.is_file() and r.image.parent.name == "images" for r in records.values())


def test_vqa_rad_split_files(realdata):
    raw = json.loads((vqa_rad_dir(realdata) / "trainset.subset.json").read_text())
    train = load_vqa_rad(vqa_rad_dir(realdata), "train", "splits")
    assert train.problems == [] and len(train.records) == len(raw) == 188
    by_qid = {r.qid: r for r in train.records}
    int_answers = {str(r["qid"]): str(r["answer"]) for r in raw if isinstance(r["answer"], int)}
    assert len(int_answers) == 10 and all(by_qid[q].answer == a for q, a in int_answers.items())
    spaced = [str(r["qid"]) for r in raw if r["answer_type"] == "CLOSED "]
    assert len(spaced) == 2 and all(by_qid[q].answer_type == "closed" for q in spaced)
    assert Counter(r["phrase_type"] for r in raw)["frame"] > 0  # frame questions are training data here


def test_vqa_rad_test_split_is_the_same_in_both_formats(realdata):
    public = load_vqa_rad(vqa_rad_dir(realdata), "test", "public").records
    splits = load_vqa_rad(vqa_rad_dir(realdata), "test", "splits").records
    assert Counter(map(_key, public)) == Counter(map(_key, splits))


def test_missing_image_is_reported_by_qid_and_skipped(realdata, tmp_path):
    missing = "synpic54610.jpg"
    data = linked_dataset(vqa_rad_dir(realdata), tmp_path / "rad", "images", leave_out=(missing,))
    expected = {str(r["qid"]) for r in vqa_rad_public(realdata) if r["image_name"] == missing
                and r["phrase_type"] in TRAIN_PHRASES}
    result = load_vqa_rad(data, "train")
    assert expected and {p.record_id for p in result.problems} == {f"qid {q}" for q in expected}
    assert all(missing in p.reason and p.source == VQA_RAD_PUBLIC for p in result.problems)
    assert len(result.records) == 109 - len(expected)
    assert all(r.image.name != missing for r in result.records)


def test_malformed_records_are_reported_by_id_and_skipped(realdata, tmp_path):
    good = next(r for r in vqa_rad_public(realdata) if r["phrase_type"] == "freeform")
    bad = [
        {**good, "qid": 9001, "question": None},
        {k: v for k, v in good.items() if k != "answer"} | {"qid": 9002},
        {**good, "qid": 9003, "answer": ["yes"]},
        {**good, "qid": 9004, "answer_type": "MAYBE"},
        {**good, "qid": 9005, "phrase_type": "frame"},
        {**good, "qid": 9006, "image_name": "../secret.jpg"},
        {k: v for k, v in good.items() if k != "qid"},
        "not a record",
    ]
    data = linked_dataset(vqa_rad_dir(realdata), tmp_path / "rad", "images")
    (data / VQA_RAD_PUBLIC).unlink()
    (data / "VQA_RAD Dataset Public.json").write_text(json.dumps([good] + bad))
    result = load_vqa_rad(data, "train")
    assert [r.qid for r in result.records] == [str(good["qid"])]
    reasons = {p.record_id: p.reason for p in result.problems}
    assert list(reasons) == ["qid 9001", "qid 9002", "qid 9003", "qid 9004", "qid 9005", "qid 9006",
                             "#7 (no qid)", "#8 (no qid)"]
    assert reasons["qid 9001"].startswith("question") and reasons["qid 9002"] == "answer: missing"
    assert reasons["qid 9003"].startswith("answer") and "MAYBE" in reasons["qid 9004"]
    assert "frame" in reasons["qid 9005"] and "image_name" in reasons["qid 9006"]
    assert reasons["#7 (no qid)"].startswith("qid") and "object" in reasons["#8 (no qid)"]


def test_unreadable_dataset_files_raise_with_the_path(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_vqa_rad(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="trainset.json"):
        load_vqa_rad(tmp_path, "train")
    (tmp_path / "trainset.json").write_text('{"qid": 1}')
    with pytest.raises(DatasetError, match="JSON array"):
        load_vqa_rad(tmp_path, "train")
    with pytest.raises(DatasetError, match="split"):
        load_vqa_rad(tmp_path, "validate")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_vqa_dataset("pathvqa", tmp_path, "train")


@pytest.fixture()
def slake_dir(realdata, tmp_path):
    """The real SLAKE records with stand-in images (no SLAKE image is public here) for all but image 297."""
    source = realdata / "vqa" / "slake"
    for path in source.glob("*.json"):
        (tmp_path / path.name).symlink_to(path)
        for name in {r["img_name"] for r in json.loads(path.read_text())} - {"xmlab297/source.jpg"}:
            (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (32, 32), 128).save(tmp_path / "imgs" / name)
    return tmp_path


@pytest.mark.parametrize("split, lang", [("train", "en"), ("train", "zh"), ("train", "all"), ("validate", "zh"),
                                         ("val", "en"), ("test", "zh"), ("test", "en")])
def test_slake_languages_and_splits(slake_dir, split, lang):
    name = {"train": "train", "validate": "validate", "val": "validate", "test": "test"}[split]
    raw = json.loads((slake_dir / f"{name}.subset.json").read_text(encoding="utf-8"))
    expected = [r for r in raw if lang in ("all", r["q_lang"]) and r["img_id"] != 297]
    result = load_slake(slake_dir, split, lang)
    assert [r.qid for r in result.records] == [str(r["qid"]) for r in expected]
    assert [r.answer for r in result.records] == [r["answer"].strip().lower() for r in expected]
    assert all(r.lang == (lang if lang != "all" else r.lang) and r.image.is_file() for r in result.records)
    assert {p.reason.split(": ")[0] for p in result.problems} <= {"image not found"}


def test_slake_counts_chinese_and_missing_images(slake_dir):
    assert [len(load_slake(slake_dir, "train", lang).records) for lang in ("en", "zh")] == [56 - 15, 79 - 15]
    zh = load_slake(slake_dir, "validate", "zh").records
    assert len(zh) == 42 and zh[0].question == "这是CT图像吗?" and zh[0].answer == "不是"
    assert zh[0].answer_type == "closed" and zh[0].image == slake_dir / "imgs" / "xmlab312" / "source.jpg"
    train = load_slake(slake_dir, "train", "all")
    assert len(train.problems) == 30 and all("xmlab297" in p.reason for p in train.problems)


def test_slake_without_images_skips_every_record(realdata):
    result = load_slake(realdata / "vqa" / "slake", "train", "all")
    assert result.records == [] and len(result.problems) == 135
    with pytest.raises(DatasetError, match="language"):
        load_slake(realdata / "vqa" / "slake", "train", "fr")
