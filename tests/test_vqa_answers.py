"""Answer normalisation, the vocabulary and the closed-answer rule."""
import pytest

from biomedclip.vqa.answers import AnswerError, AnswerVocab, is_closed_answer, normalize_answer
from tests.vqa_helpers import vqa_rad_public


@pytest.mark.parametrize("raw, expected", [
    (2, "2"), ("2", "2"), (2.0, "2"), ("2.0", "2"), (" 02 ", "2"), (12, "12"), (2.5, "2.5"), ("2.50", "2.5"),
    ("Yes", "yes"), ("YES ", "yes"), ("  Right   Lower\tLobe ", "right lower lobe"), ("5 cm", "5 cm"),
    ("不是", "不是"), ("X光", "x光"),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("raw", [None, True, ["yes"], {"yes": 1}, "", "   "])
def test_normalize_answer_refuses_non_answers(raw):
    with pytest.raises(AnswerError):
        normalize_answer(raw)


def test_closed_rule_is_yes_no_in_both_languages():
    assert all(is_closed_answer(a) for a in ("Yes", " no", "是", "不是", "否"))
    assert not any(is_closed_answer(a) for a in ("maybe", "axial", "2", "left"))


def test_vocab_order_index_and_unseen_answers():
    vocab = AnswerVocab.from_answers(["No", "yes", "YES", 2, "2.0", "axial", "no", "yes"])
    assert vocab.answers == ["yes", "2", "no", "axial"]  # by frequency, ties alphabetical
    assert vocab.index("Yes ") == 0 and vocab.index(2.0) == 1
    assert vocab.index("coronal") is None and "coronal" not in vocab


def test_vocab_round_trip(tmp_path):
    vocab = AnswerVocab.from_answers(["yes", "不是", "x光", "no"])
    assert AnswerVocab.load(vocab.save(tmp_path / "answers.json")).answers == vocab.answers


def test_vocab_of_real_answers_merges_case_and_int_answers(realdata):
    raw = [r["answer"] for r in vqa_rad_public(realdata)]
    assert {type(a) for a in raw} == {str, int}
    vocab = AnswerVocab.from_answers(raw)
    oracle = {str(a).strip().lower() for a in raw}  # enough for this file: no spacing or float quirks
    assert set(vocab.answers) == oracle
    assert "Yes" in raw and "yes" in raw and vocab.answers[:2] == ["yes", "no"]
