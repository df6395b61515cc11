"""Image preprocessing, identical to BiomedCLIP's (open_clip's torchvision pipeline): bicubic shortest-side resize,
centre crop, RGB, CLIP mean/std, giving float32 arrays of shape [3, H, W]. Training uses a random resized crop
instead of the resize + crop.

PIL and numpy only: Ray Data's preprocessing tasks import this module, and a fresh worker process would otherwise
spend several seconds importing torch and torchvision before its first image, every epoch.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TRAIN_CROP_SCALE = (0.9, 1.0)
TRAIN_CROP_RATIO = (3 / 4, 4 / 3)
_MEAN = np.asarray(OPENAI_MEAN, np.float32).reshape(3, 1, 1)
_STD = np.asarray(OPENAI_STD, np.float32).reshape(3, 1, 1)


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def normalize(image: Image.Image) -> np.ndarray:
    """RGB, scaled to [0, 1], then standardised with CLIP's mean/std (torchvision's ToTensor + Normalize)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    scaled = np.asarray(rgb, dtype=np.uint8).astype(np.float32) / np.float32(255)
    return (scaled.transpose(2, 0, 1) - _MEAN) / _STD


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    short, long = sorted((width, height))
    new_short, new_long = size, int(size * long / short)
    target = (new_short, new_long) if width <= height else (new_long, new_short)
    return image if target == image.size else image.resize(target, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def eval_transform(image_size: int):
    """PIL image -> float32 [3, image_size, image_size], as open_clip's evaluation preprocess."""
    return lambda image: normalize(center_crop(resize_shorter_side(image, image_size), image_size))


def random_crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a crop covering TRAIN_CROP_SCALE of the area with an aspect ratio in
    TRAIN_CROP_RATIO (log-uniform); after ten misses, the largest centred crop within the ratio range."""
    area = width * height
    log_ratio = np.log(TRAIN_CROP_RATIO)
    for _ in range(10):
        target_area = area * rng.uniform(*TRAIN_CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    w, h = width, height
    if ratio < TRAIN_CROP_RATIO[0]:
        h = int(round(width / TRAIN_CROP_RATIO[0]))
    elif ratio > TRAIN_CROP_RATIO[1]:
        w = int(round(height * TRAIN_CROP_RATIO[1]))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_transform(image_size: int, rng: np.random.Generator | None = None):
    """PIL image -> float32 [3, image_size, image_size] of a random resized crop (a new crop on every call)."""
    rng = rng or np.random.default_rng()

    def transform(image: Image.Image) -> np.ndarray:
        cropped = image.crop(random_crop_box(*image.size, rng))
        return normalize(cropped.resize((image_size, image_size), Image.Resampling.BICUBIC))

    return transform
