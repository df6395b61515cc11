"""A model artifact that retrieves without pretraining, for the search tests: random tiny towers (frozen) whose
projection heads are fitted to paired training figures by CCA (seconds with numpy, where training would take
minutes). The fitted heads map an image and its caption close together, so text-to-image search has something to find.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from biomedclip.model import ModelConfig, TextConfig, VisionConfig, build_model
from biomedclip.model.artifact import save_artifact
from biomedclip.text import Tokenizer

GELU_SCALE = 1e-3  # the text head's GELU is used in its linear range: GELU(a*z)*2/a ~ z for small a


def _cca(x: np.ndarray, y: np.ndarray, dim: int, ridge: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Projections (Dx x dim, Dy x dim) of centred x and y onto their canonical directions, weighted by the square
    root of each direction's correlation so that weak directions count less in cosine similarity."""
    def inverse_sqrt(c: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh(c + ridge * np.trace(c) / len(c) * np.eye(len(c)))
        return vectors @ np.diag(values ** -0.5) @ vectors.T

    wx, wy = inverse_sqrt(x.T @ x / len(x)), inverse_sqrt(y.T @ y / len(y))
    u, s, vt = np.linalg.svd(wx @ (x.T @ y / len(x)) @ wy)
    weights = np.sqrt(np.clip(s[:dim], 0, None))
    return (wx @ u[:, :dim]) * weights, (wy @ vt.T[:, :dim]) * weights


@torch.no_grad()
def fitted_artifact(pairs_dir: Path, directory: Path, seed: int = 0) -> Path:
    table = pq.read_table(pairs_dir).to_pydict()
    captions = table["caption"]
    tokenizer = Tokenizer.train(captions, vocab_size=300, context_length=77, min_frequency=1)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(embed_dim=64, vision=VisionConfig("vit-tiny", 224),
                                    text=TextConfig("bert-tiny", 77, vocab_size=tokenizer.vocab_size))).eval()
    from biomedclip.inference import Predictor

    predictor = Predictor(model, tokenizer)
    pixels = predictor.pixels([Image.open(io.BytesIO(data)).convert("RGB") for data in table["image"]])
    image_features = model.visual.trunk(pixels).numpy()
    text = model.text
    hidden = text.transformer(input_ids=(ids := predictor.tokens(captions)),
                              attention_mask=(ids != text.pad_token_id).long()).last_hidden_state[:, 0].numpy()
    # Centre both towers' features by shifting the bias of the LayerNorm each ends with.
    model.visual.trunk.norm.bias -= torch.from_numpy(image_features.mean(0))
    text.transformer.encoder.layer[-1].output.LayerNorm.bias -= torch.from_numpy(hidden.mean(0))
    image_head, text_head = _cca(image_features - image_features.mean(0), hidden - hidden.mean(0), dim=64)
    model.visual.head.proj.weight.copy_(torch.from_numpy(image_head.T))
    text.proj[0].weight.copy_(torch.eye(text.proj[0].weight.shape[0]) * GELU_SCALE)
    text.proj[2].weight.copy_(torch.from_numpy(text_head.T) * 2 / GELU_SCALE)
    model.logit_scale.fill_(np.log(50.0))
    return save_artifact(model, tokenizer, directory)
