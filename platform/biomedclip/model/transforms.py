"""Image preprocessing, identical to BiomedCLIP's: bicubic shortest-side resize + centre crop, RGB, CLIP mean/std.

Training uses RandomResizedCrop instead of the resize + crop.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_CROP_SCALE = (0.9, 1.0)


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def eval_transform(image_size: int) -> T.Compose:
    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(OPENAI_MEAN, OPENAI_STD),
    ])


def train_transform(image_size: int) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=TRAIN_CROP_SCALE, interpolation=T.InterpolationMode.BICUBIC),
        _to_rgb,
        T.ToTensor(),
        T.Normalize(OPENAI_MEAN, OPENAI_STD),
    ])


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels_from_bytes(images: list[bytes] | np.ndarray, transform) -> torch.Tensor:
    """Decodes encoded images and stacks them as a float tensor of shape (N, 3, H, W)."""
    return torch.stack([transform(decode_image(bytes(data))) for data in images])
