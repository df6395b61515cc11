"""Answer normalisation and the answer vocabulary (VQA as classification over the training set's answers).

Normalisation: case folded, whitespace trimmed and collapsed, numbers written one way (2, "2", 2.0, "2.0" -> "2";
2.5 -> "2.5"). The vocabulary holds every normalised training answer; a test answer outside it has no class and so
always counts as wrong.

Closed answers (the rule behind a predicted `answer_type`): an answer is closed when it is a yes/no answer, in English
("yes", "no") or in SLAKE's Chinese ("是", "不是", "否"). Everything else is open.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path

CLOSED_ANSWERS = frozenset({"yes", "no", "是", "不是", "否"})
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_WHITESPACE = re.compile(r"\s+")


class AnswerError(ValueError):
    pass


def normalize_answer(value: object) -> str:
    """The canonical string form of an answer given as str, int or float; raises AnswerError for anything else."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise AnswerError(f"answer must be a string or a number, got {type(value).__name__} {value!r}")
    text = _WHITESPACE.sub(" ", str(value)).strip().lower()
    if not text:
        raise AnswerError("answer is empty")
    return _canonical_number(text) if _NUMBER.fullmatch(text) else text


def _canonical_number(text: str) -> str:
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def is_closed_answer(answer: str) -> bool:
    return normalize_answer(answer) in CLOSED_ANSWERS


class AnswerVocab:
    """Normalised answers in a fixed order (most frequent first, ties alphabetical); class index = position."""

    def __init__(self, answers: list[str]):
        if len(set(answers)) != len(answers):
            raise AnswerError("answer vocabulary has duplicates")
        self.answers = list(answers)
        self._index = {answer: i for i, answer in enumerate(self.answers)}

    @classmethod
    def from_answers(cls, answers: Iterable[object]) -> AnswerVocab:
        counts = Counter(normalize_answer(a) for a in answers)
        return cls(sorted(counts, key=lambda answer: (-counts[answer], answer)))

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: object) -> bool:
        return self.index(answer) is not None

    def index(self, answer: object) -> int | None:
        """Class index of an answer, or None when training never saw it."""
        return self._index.get(normalize_answer(answer))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"answers": self.answers}, ensure_ascii=False, indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> AnswerVocab:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("answers"), list):
            raise AnswerError(f"{path}: expected {{\"answers\": [...]}}")
        return cls(data["answers"])
