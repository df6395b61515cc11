"""Overall, open and closed accuracy (reported separately, as in the paper).

Counts, not ratios, are what workers exchange: summing counts across shards gives the exact accuracy of the whole set.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from biomedclip.vqa.answers import normalize_answer

ANSWER_TYPES = ("open", "closed")


@dataclass
class AccuracyCounts:
    open_correct: int = 0
    open_total: int = 0
    closed_correct: int = 0
    closed_total: int = 0

    def add(self, correct: bool, answer_type: str) -> None:
        if answer_type not in ANSWER_TYPES:
            raise ValueError(f"answer_type must be open or closed, got {answer_type!r}")
        setattr(self, f"{answer_type}_correct", getattr(self, f"{answer_type}_correct") + int(correct))
        setattr(self, f"{answer_type}_total", getattr(self, f"{answer_type}_total") + 1)

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.open_correct, self.open_total, self.closed_correct, self.closed_total],
                            dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> AccuracyCounts:
        return cls(*(int(round(v)) for v in values.tolist()))

    def to_metrics(self) -> dict[str, float | int | None]:
        """Accuracies in [0, 1] (None where a type has no question) and the counts behind them."""
        total = self.open_total + self.closed_total
        return {
            "accuracy": _ratio(self.open_correct + self.closed_correct, total),
            "open_accuracy": _ratio(self.open_correct, self.open_total),
            "closed_accuracy": _ratio(self.closed_correct, self.closed_total),
            "n": total, "n_open": self.open_total, "n_closed": self.closed_total,
        }


def accuracy_counts(predicted: Sequence[str], expected: Sequence[str], answer_types: Sequence[str]) -> AccuracyCounts:
    """Exact match of normalised answers; `answer_types` are the questions' own types (open/closed)."""
    if not len(predicted) == len(expected) == len(answer_types):
        raise ValueError(f"lengths differ: {len(predicted)} predictions, {len(expected)} answers, "
                         f"{len(answer_types)} answer types")
    counts = AccuracyCounts()
    for guess, truth, answer_type in zip(predicted, expected, answer_types):
        counts.add(normalize_answer(guess) == normalize_answer(truth), answer_type)
    return counts


def _ratio(correct: int, total: int) -> float | None:
    return correct / total if total else None
