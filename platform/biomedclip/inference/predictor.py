"""One loaded BiomedCLIP on one device: preprocessing, image and text embeddings, prompt ensembling and zero-shot
probabilities. Every consumer calls it, so a batch evaluation and `/v1/zero-shot` agree on behaviour, not just weights.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from biomedclip.model.artifact import load_artifact
from biomedclip.model.clip import MAX_LOGIT_SCALE, BiomedCLIP
from biomedclip.model.transforms import eval_transform
from biomedclip.text import Tokenizer

# The cap the model's own clamp applies after every step (log 100), as a temperature.
MAX_TEMPERATURE = round(math.exp(MAX_LOGIT_SCALE), 6)


def fill_template(template: str, label: str) -> str:
    """A prompt from a template holding one `{}` (plain substitution: other braces in the template stay as written)."""
    return template.replace("{}", label)


class Predictor:
    def __init__(self, model: BiomedCLIP, tokenizer: Tokenizer, device: str | torch.device = "cpu", model_id: str = ""):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.transform = eval_transform(model.config.vision.image_size)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu", model_id: str = "") -> Predictor:
        """A predictor for a model artifact (ours or an open_clip BiomedCLIP directory)."""
        return cls(*load_artifact(directory), device=device, model_id=model_id)

    @property
    def embed_dim(self) -> int:
        return self.model.config.embed_dim

    @property
    def logit_scale(self) -> float:
        """The learned temperature, capped at 100 as in CLIP."""
        return min(float(self.model.logit_scale.detach().exp()), MAX_TEMPERATURE)

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The eval preprocessing of decoded images, stacked on this device."""
        return torch.from_numpy(np.stack([self.transform(image) for image in images])).to(self.device)

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings, N x D float32."""
        return self.encode_pixels(self.pixels(images))

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """L2-normalised embeddings of images already through `transform` (N x 3 x H x W)."""
        return self.model.encode_image(pixels.to(self.device)).float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, N x D float32."""
        return self.model.encode_text(self.tokens(texts)).float().cpu().numpy()

    def label_features(self, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """C x D: per label, the normalised mean of its prompts' normalised embeddings (CLIP's prompt ensembling)."""
        prompts = [fill_template(template, label) for label in labels for template in templates]
        features = torch.from_numpy(self.encode_texts(prompts)).view(len(labels), len(templates), -1).mean(dim=1)
        return F.normalize(features, dim=-1).numpy()

    def zero_shot(self, image_features: np.ndarray, label_features: np.ndarray) -> np.ndarray:
        """N x C probabilities: softmax over labels of logit_scale * cosine similarity."""
        logits = self.logit_scale * torch.as_tensor(image_features, dtype=torch.float32) @ torch.as_tensor(
            label_features, dtype=torch.float32).T
        return logits.softmax(dim=-1).numpy()

    def describe(self) -> dict:
        config = self.model.config
        return {"id": self.model_id, "embed_dim": config.embed_dim, "vision": config.vision.preset,
                "image_size": config.vision.image_size, "text": config.text.preset,
                "context_length": config.text.context_length, "device": str(self.device)}


def rank_labels(probabilities: np.ndarray, labels: Sequence[str]) -> list[dict]:
    """One image's label probabilities as [{"label", "probability"}], highest first (ties keep label order)."""
    order = np.argsort(-probabilities, kind="stable")
    return [{"label": labels[i], "probability": float(probabilities[i])} for i in order]
