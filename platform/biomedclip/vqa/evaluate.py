"""Scoring a saved VQA model (through its predictor, as Serve would) on loaded records."""
from __future__ import annotations

from PIL import Image

from biomedclip.vqa.artifact import VQAPredictor
from biomedclip.vqa.datasets import VQARecord
from biomedclip.vqa.metrics import AccuracyCounts, accuracy_counts


def evaluate_predictor(predictor: VQAPredictor, records: list[VQARecord],
                       batch_size: int = 32) -> tuple[AccuracyCounts, list[dict]]:
    """Accuracy counts and one row per record (qid, question, answer, prediction, confidence)."""
    rows = []
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        images = [_open_rgb(record.image) for record in batch]
        for record, prediction in zip(batch, predictor.predict(images, [r.question for r in batch])):
            rows.append({"qid": record.qid, "image": record.image.name, "question": record.question,
                         "answer": record.answer, "answer_type": record.answer_type,
                         "predicted": prediction["answer"], "confidence": prediction["confidence"]})
    counts = accuracy_counts([r["predicted"] for r in rows], [r["answer"] for r in rows],
                             [r["answer_type"] for r in rows])
    return counts, rows


def _open_rgb(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
