"""Preprocessing without torch: the training crop's geometry, and Ray Data's preprocessing module importing no torch
(its equality with open_clip's evaluation preprocess is tested on real images in test_model_open_clip)."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from biomedclip.model.transforms import (
    OPENAI_MEAN,
    OPENAI_STD,
    TRAIN_CROP_RATIO,
    TRAIN_CROP_SCALE,
    random_crop_box,
    train_transform,
)


@pytest.mark.parametrize("width,height", [(640, 480), (224, 224), (500, 400)])
def test_sampled_crops_keep_the_paper_scale_and_ratio(width, height):
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = random_crop_box(width, height, rng)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        assert TRAIN_CROP_SCALE[0] * 0.98 <= w * h / (width * height) <= TRAIN_CROP_SCALE[1]  # 2%: rounded sides
        assert TRAIN_CROP_RATIO[0] * 0.98 <= w / h <= TRAIN_CROP_RATIO[1] * 1.02


@pytest.mark.parametrize("width,height,box", [(300, 900, (0, 250, 300, 650)), (1000, 20, (486, 0, 513, 20))])
def test_images_too_narrow_for_any_sample_get_the_centred_crop_at_the_ratio_limit(width, height, box):
    assert random_crop_box(width, height, np.random.default_rng(0)) == box


def test_train_transform_is_seeded_varies_per_call_and_is_normalised():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    first = train_transform(64, np.random.default_rng(7))
    second = train_transform(64, np.random.default_rng(7))
    a, b = first(image), second(image)
    assert a.shape == (3, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, first(image))  # a new crop on every call
    lowest = (0 - np.asarray(OPENAI_MEAN)) / np.asarray(OPENAI_STD)
    highest = (1 - np.asarray(OPENAI_MEAN)) / np.asarray(OPENAI_STD)
    assert (a.min(axis=(1, 2)) >= lowest - 1e-5).all() and (a.max(axis=(1, 2)) <= highest + 1e-5).all()


def test_training_crop_equals_torchvisions_resized_crop_of_the_same_box():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    left, top, right, bottom = random_crop_box(*image.size, np.random.default_rng(3))
    ours = train_transform(96, np.random.default_rng(3))(image)
    cropped = F.resized_crop(image, top, left, bottom - top, right - left, [96, 96], InterpolationMode.BICUBIC)
    theirs = F.normalize(F.to_tensor(cropped), OPENAI_MEAN, OPENAI_STD).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_greyscale_and_palette_images_become_three_channels():
    for mode in ("L", "P", "RGBA", "I;16"):
        image = Image.new(mode, (50, 80))
        assert train_transform(32)(image).shape == (3, 32, 32)


def test_ray_data_preprocessing_imports_no_torch():
    code = "import sys, biomedclip.data.train_input; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('torch', 'torchvision', 'timm', 'transformers')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
