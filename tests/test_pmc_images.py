"""Image normalisation: allow-list, bomb guard, RGB conversion, draft decoding, resize, JPEG re-encoding."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from biomedclip.pmc.images import ImageConfig, normalize_image
from biomedclip.pmc.skips import Skipped

CONFIG = ImageConfig()


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def decoded(result) -> Image.Image:
    img = Image.open(io.BytesIO(result.jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    return img


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_large_jpeg_uses_draft_decoding_and_keeps_original_size():
    data = encode(Image.fromarray(noise(2400, 3200)), "JPEG", quality=90)
    reference = Image.open(io.BytesIO(data))
    assert reference.draft(None, (680, 512)) is not None  # libjpeg can decode this one at reduced scale
    result = normalize_image(data, CONFIG)
    assert (result.orig_width, result.orig_height) == (3200, 2400)
    assert (result.width, result.height) == (683, 512) == decoded(result).size


def test_small_images_are_not_upscaled():
    result = normalize_image(encode(Image.fromarray(noise(100, 300)), "PNG"), CONFIG)
    assert (result.width, result.height, result.orig_width, result.orig_height) == (300, 100, 300, 100)


@pytest.mark.parametrize("mode, fmt, colour, expected", [
    ("CMYK", "JPEG", (0, 255, 255, 0), (255, 0, 0)),  # magenta + yellow = red
    ("CMYK", "TIFF", (255, 0, 0, 0), (0, 255, 255)),  # cyan
    ("RGBA", "PNG", (0, 0, 255, 0), (255, 255, 255)),  # transparent -> white background
    ("RGBA", "PNG", (0, 0, 255, 255), (0, 0, 255)),
    ("LA", "PNG", (10, 255), (10, 10, 10)),
    ("L", "GIF", 200, (200, 200, 200)),
    ("1", "TIFF", 1, (255, 255, 255)),
])
def test_colour_modes_become_rgb(mode, fmt, colour, expected):
    result = normalize_image(encode(Image.new(mode, (64, 48), colour), fmt), CONFIG)
    pixel = decoded(result).getpixel((32, 24))
    assert np.abs(np.subtract(pixel, expected)).max() <= 6, pixel


def test_palette_transparency_is_composited_on_white():
    img = Image.new("P", (64, 64), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(0, (0, 0, 32, 64))  # left half uses the transparent index 0
    out = decoded(normalize_image(encode(img, "GIF", transparency=0), CONFIG))
    assert np.abs(np.subtract(out.getpixel((8, 32)), (255, 255, 255))).max() <= 6
    assert np.abs(np.subtract(out.getpixel((56, 32)), (255, 0, 0))).max() <= 6


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_are_rescaled_over_their_range(fmt):
    ramp = np.tile(np.linspace(0, 4095, 256).astype(np.uint16), (32, 1))  # 12-bit data in a 16-bit container
    out = np.asarray(decoded(normalize_image(encode(Image.fromarray(ramp), fmt), CONFIG)).convert("L"), dtype=int)
    assert out[:, :8].mean() < 10 and out[:, -8:].mean() > 245


def test_sha256_is_of_decoded_pixels_so_lossless_twins_match():
    pixels = noise(80, 120, seed=3)
    png = normalize_image(encode(Image.fromarray(pixels), "PNG"), CONFIG)
    tiff = normalize_image(encode(Image.fromarray(pixels), "TIFF"), CONFIG)
    assert png.sha256 == tiff.sha256 == hashlib.sha256(b"120x80:" + pixels.tobytes()).hexdigest()
    other = normalize_image(encode(Image.fromarray(noise(80, 120, seed=4)), "PNG"), CONFIG)
    assert other.sha256 != png.sha256


def test_jpeg_quality_is_95():
    pixels = noise(64, 64)
    result = normalize_image(encode(Image.fromarray(pixels), "PNG"), CONFIG)
    assert result.jpeg == encode(Image.fromarray(pixels), "JPEG", quality=95)


def corrupted(data: bytes, start: int, end: int) -> bytes:
    flipped = bytearray(data)
    for i in range(start, end):
        flipped[i] ^= 0xFF
    return bytes(flipped)


BAD_IMAGES = {
    "zero_bytes": (b"", "empty_image"),
    "text_named_jpg": (b"Figure 1 could not be converted.\n", "not_an_image"),
    "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "unsupported_format"),
    "dos_eps": (b"\xc5\xd0\xd3\xc6" + b"\x00" * 40, "unsupported_format"),
    "pdf": (b"%PDF-1.4\n1 0 obj\n", "unsupported_format"),
    "bmp": (encode(Image.new("RGB", (8, 8)), "BMP"), "unsupported_format"),
    "truncated_jpeg": (encode(Image.fromarray(noise(400, 400)), "JPEG")[:3000], "truncated_image"),
    "truncated_png": (encode(Image.fromarray(noise(200, 200)), "PNG")[:2000], "truncated_image"),
    "corrupt_png_header": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "not_an_image"),
    "corrupt_png_data": (corrupted(encode(Image.fromarray(noise(200, 200)), "PNG"), 200, 260), "corrupt_image"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_are_refused_with_their_reason(case):
    data, reason = BAD_IMAGES[case]
    with pytest.raises(Skipped) as err:
        normalize_image(data, CONFIG)
    assert err.value.reason == reason, err.value.detail


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encode(Image.new("1", (12_000, 12_000)), "PNG")  # 144 Mpx declared in a ~20 KB file
    assert len(bomb) < 100_000
    with pytest.raises(Skipped) as err:
        normalize_image(bomb, CONFIG)
    assert err.value.reason == "decompression_bomb"
    small_limit = ImageConfig(max_pixels=1000)
    with pytest.raises(Skipped) as err:
        normalize_image(encode(Image.new("RGB", (40, 30)), "PNG"), small_limit)
    assert err.value.reason == "decompression_bomb"


def test_byte_limit_and_format_allow_list_are_configurable():
    png = encode(Image.new("RGB", (40, 30)), "PNG")
    with pytest.raises(Skipped) as err:
        normalize_image(png, ImageConfig(max_bytes=len(png) - 1))
    assert err.value.reason == "image_too_large"
    with pytest.raises(Skipped) as err:
        normalize_image(png, ImageConfig(formats=("JPEG",)))
    assert err.value.reason == "not_an_image"
    with pytest.raises(ValueError):
        ImageConfig(formats=("EPS",))
