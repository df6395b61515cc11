"""One loaded BiomedCLIP artifact on one device: preprocessing, embeddings and zero-shot ranking. Knows no Ray."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from biomedclip.model.artifact import load_artifact
from biomedclip.model.transforms import eval_transform


class ClipEngine:
    def __init__(self, model_id: str, directory: str | Path, device: str = "cpu"):
        model, tokenizer = load_artifact(directory)
        self.model_id = model_id
        self.directory = str(directory)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.transform = eval_transform(model.config.vision.image_size)
        self.logit_scale = float(model.logit_scale.detach().exp().clamp(max=100.0))

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """Normalised image embeddings (N, D) float32 for decoded RGB images."""
        pixels = torch.from_numpy(np.stack([self.transform(image) for image in images])).to(self.device)
        return self.model.encode_image(pixels).float().cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Normalised text embeddings (N, D) float32."""
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float().cpu().numpy()

    def label_features(self, labels: list[str], templates: list[str]) -> np.ndarray:
        """One embedding per label: the normalised mean over its prompts (CLIP's prompt ensembling)."""
        prompts = [template.replace("{}", label) for label in labels for template in templates]
        features = torch.from_numpy(self.encode_texts(prompts)).view(len(labels), len(templates), -1).mean(dim=1)
        return F.normalize(features, dim=-1).numpy()

    def describe(self) -> dict:
        config = self.model.config
        return {"id": self.model_id, "embed_dim": config.embed_dim, "vision": config.vision.preset,
                "image_size": config.vision.image_size, "text": config.text.preset,
                "context_length": config.text.context_length, "device": str(self.device)}


def rank_labels(image_features: np.ndarray, label_features: np.ndarray, logit_scale: float,
                labels: list[str]) -> list[dict]:
    """Labels sorted by softmax probability of (scale * cosine similarity), highest first."""
    logits = logit_scale * (label_features @ image_features)
    probs = torch.softmax(torch.from_numpy(logits.astype(np.float64)), dim=0).numpy()
    order = np.argsort(-probs, kind="stable")
    return [{"label": labels[i], "probability": float(probs[i])} for i in order]
