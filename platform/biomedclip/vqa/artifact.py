"""The VQA artifact (one directory, loaded the same way by jobs and by Serve) and the predictor that serves it.

Layout:
  encoder/           the BiomedCLIP encoders and tokenizer, in the core artifact format (`save_artifact`:
                     model.safetensors with open_clip names + tokenizer/)
  head.safetensors   the projections, fusion transformer and classifier (state-dict names without "encoder.")
  answers.json       the answer vocabulary: {"answers": [...]}, class index = position
  vqa_config.json    {"format_version": 1, "fusion": {...}, "num_answers": N}
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from biomedclip.config import from_dict
from biomedclip.inference import Predictor
from biomedclip.io import local_copy
from biomedclip.model.artifact import load_artifact, save_artifact
from biomedclip.model.checkpoint import CheckpointError
from biomedclip.text import Tokenizer
from biomedclip.text.whitespace import is_blank
from biomedclip.vqa.answers import AnswerVocab, is_closed_answer
from biomedclip.vqa.model import FusionConfig, VQAModel

ENCODER_DIR = "encoder"
HEAD_WEIGHTS = "head.safetensors"
ANSWERS = "answers.json"
CONFIG = "vqa_config.json"
FORMAT_VERSION = 1
ENCODER_PREFIX = "encoder."


def save_vqa_artifact(model: VQAModel, tokenizer: Tokenizer, vocab: AnswerVocab, directory: str | Path) -> Path:
    if len(vocab) != model.num_answers:
        raise ValueError(f"vocabulary has {len(vocab)} answers but the classifier has {model.num_answers}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_artifact(model.encoder, tokenizer, directory / ENCODER_DIR)
    head = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()
            if not name.startswith(ENCODER_PREFIX)}
    save_file(head, str(directory / HEAD_WEIGHTS))
    vocab.save(directory / ANSWERS)
    config = {"format_version": FORMAT_VERSION, "fusion": asdict(model.fusion_config), "num_answers": len(vocab)}
    (directory / CONFIG).write_text(json.dumps(config, indent=2))
    return directory


def load_vqa_artifact(location: str | Path, s3_endpoint: str | None = None) -> tuple[VQAModel, Tokenizer, AnswerVocab]:
    """(model in eval mode, tokenizer, vocabulary) from a folder or a URI (s3://..., copied once per node into the
    verified cache of `biomedclip.io.local_copy`); raises CheckpointError naming the file that is wrong."""
    directory = local_copy(str(location), s3_endpoint)
    for name in (CONFIG, HEAD_WEIGHTS, ANSWERS, ENCODER_DIR):
        if not (directory / name).exists():
            raise CheckpointError(f"{directory}: not a VQA artifact ({name} missing)")
    config = json.loads((directory / CONFIG).read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{directory / CONFIG}: unsupported format_version {config.get('format_version')!r}")
    vocab = AnswerVocab.load(directory / ANSWERS)
    if len(vocab) != config["num_answers"]:
        raise CheckpointError(f"{directory / ANSWERS}: {len(vocab)} answers, config says {config['num_answers']}")
    encoder, tokenizer = load_artifact(directory / ENCODER_DIR)
    model = VQAModel(encoder, from_dict(FusionConfig, config["fusion"], "fusion"), len(vocab))
    missing, unexpected = model.load_state_dict(load_file(str(directory / HEAD_WEIGHTS)), strict=False)
    missing = [name for name in missing if not name.startswith(ENCODER_PREFIX)]
    if missing or unexpected:
        raise CheckpointError(f"{directory / HEAD_WEIGHTS}: does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return model.eval(), tokenizer, vocab


class VQAPredictor:
    """Answers questions about images: the contract the Serve VQA endpoint calls.

    `answer_type` is "closed" when the predicted answer is a yes/no answer (see `biomedclip.vqa.answers`), else
    "open"; `confidence` is the softmax probability of the predicted answer.
    """

    def __init__(self, model: VQAModel, tokenizer: Tokenizer, vocab: AnswerVocab, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.inputs = Predictor(model.encoder, tokenizer, device)  # the shared preprocessing and tokenisation
        self.vocab = vocab

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inputs.tokenizer

    @torch.inference_mode()
    def logits(self, images: list[Image.Image], questions: list[str]) -> torch.Tensor:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        if any(not isinstance(q, str) or is_blank(q) for q in questions):
            raise ValueError("every question must be a non-empty string")
        return self.model(self.inputs.pixels(images), self.inputs.tokens(questions)).float().cpu()

    def predict(self, images: list[Image.Image], questions: list[str]) -> list[dict]:
        if not images and not questions:
            return []
        probabilities = self.logits(images, questions).softmax(dim=-1)
        confidence, index = probabilities.max(dim=-1)
        answers = [self.vocab.answers[i] for i in index.tolist()]
        return [{"answer": answer, "confidence": float(conf),
                 "answer_type": "closed" if is_closed_answer(answer) else "open"}
                for answer, conf in zip(answers, confidence.tolist())]


def load_vqa_predictor(location: str | Path, device: str | torch.device = "cpu",
                       s3_endpoint: str | None = None) -> VQAPredictor:
    return VQAPredictor(*load_vqa_artifact(location, s3_endpoint), device=device)
