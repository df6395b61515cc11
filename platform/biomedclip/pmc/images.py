"""Figure images normalised for training: an allow-list of formats, a decompression-bomb guard, RGB, the shorter side
reduced to a maximum (JPEG draft decoding does most of the reduction for free), re-encoded as JPEG.

Pillow only ever tries the allow-listed decoders, so EPS/PDF never reach Ghostscript.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from biomedclip.pmc.skips import Skipped

# Formats Pillow must never be asked to open, named so the manifest says what was refused.
_SIGNATURES = (
    (b"%!PS", "EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"), (b"BM", "BMP"), (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"), (b"\xffO\xffQ", "JPEG2000"), (b"<svg", "SVG"), (b"<?xml", "SVG"),
)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class ImageConfig:
    max_side: int = 512  # the shorter side is reduced to this
    jpeg_quality: int = 95
    max_pixels: int = 89_478_485  # Pillow's default decompression-bomb threshold
    max_bytes: int = 64 * 2**20
    formats: tuple[str, ...] = ("JPEG", "PNG", "GIF", "TIFF")

    def __post_init__(self):
        if self.max_side < 1 or not 1 <= self.jpeg_quality <= 100 or self.max_pixels < 1:
            raise ValueError("max_side >= 1, 1 <= jpeg_quality <= 100 and max_pixels >= 1 are required")
        unknown = set(self.formats) - {"JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP"}
        if unknown:
            raise ValueError(f"formats {sorted(unknown)} may not be allow-listed")


@dataclass(frozen=True)
class NormalizedImage:
    jpeg: bytes
    width: int
    height: int
    orig_width: int
    orig_height: int
    sha256: str  # of the decoded, resized RGB pixels and their size
    rgb: Image.Image | None = field(default=None, compare=False, repr=False)  # the pixels encoded


def normalize_image(data: bytes, config: ImageConfig) -> NormalizedImage:
    """Decodes, converts and re-encodes one figure image; raises Skipped with the reason it was refused."""
    if not data:
        raise Skipped("empty_image", "the file has zero bytes")
    if len(data) > config.max_bytes:
        raise Skipped("image_too_large", f"{len(data)} bytes, more than {config.max_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below against config.max_pixels
        img = _open(data, config)
        orig_width, orig_height = img.size
        if orig_width * orig_height > config.max_pixels:
            raise Skipped("decompression_bomb", f"{orig_width}x{orig_height} pixels, more than {config.max_pixels}")
        _draft(img, config.max_side)
        _load(img)
        rgb = _resize(to_rgb(img), config.max_side)
    return encode_rgb(rgb, orig_width, orig_height, config)


def encode_rgb(rgb: Image.Image, orig_width: int, orig_height: int, config: ImageConfig) -> NormalizedImage:
    """An RGB image (already decoded, e.g. a panel cut from a figure) reduced to `max_side` and encoded."""
    rgb = _resize(rgb, config.max_side)
    pixels = rgb.tobytes()
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + pixels).hexdigest()
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=config.jpeg_quality)
    return NormalizedImage(out.getvalue(), rgb.width, rgb.height, orig_width, orig_height, digest, rgb)


def _open(data: bytes, config: ImageConfig) -> Image.Image:
    head = data[:64].lstrip()
    for signature, name in _SIGNATURES:
        if head.startswith(signature) and name not in config.formats:
            raise Skipped("unsupported_format", f"{name} is not in the allow-list {list(config.formats)}")
    try:
        img = Image.open(io.BytesIO(data), formats=list(config.formats))
    except Image.DecompressionBombError as err:
        raise Skipped("decompression_bomb", str(err)) from None
    except UnidentifiedImageError:
        raise Skipped("not_an_image", f"not a {'/'.join(config.formats)} image (starts with {data[:8]!r})") from None
    except Exception as err:  # noqa: BLE001 - plugins raise many types on bad headers
        raise Skipped("corrupt_image", f"bad header: {type(err).__name__}: {err}") from None
    if img.format not in config.formats:
        raise Skipped("unsupported_format", f"{img.format} is not in the allow-list")
    return img


def _draft(img: Image.Image, max_side: int) -> None:
    """Lets libjpeg decode at 1/2, 1/4 or 1/8 scale while the shorter side stays >= max_side."""
    width, height = img.size
    if img.format == "JPEG" and min(width, height) > max_side:
        scale = max_side / min(width, height)
        img.draft(None, (max(1, int(width * scale)), max(1, int(height * scale))))


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except Image.DecompressionBombError as err:
        raise Skipped("decompression_bomb", str(err)) from None
    except OSError as err:
        reason = "truncated_image" if "truncated" in str(err) else "corrupt_image"
        raise Skipped(reason, f"{type(err).__name__}: {err}") from None
    except Exception as err:  # noqa: BLE001 - decoders raise ValueError, SyntaxError, struct.error, ...
        raise Skipped("corrupt_image", f"{type(err).__name__}: {err}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: alpha composited on white, palette transparency honoured, 16-bit/float rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _rescale_to_l(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _rescale_to_l(img: Image.Image) -> Image.Image:
    """Maps the image's own value range onto 0-255 (12-bit data in 16-bit containers would otherwise be black)."""
    values = np.asarray(img, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _resize(img: Image.Image, max_side: int) -> Image.Image:
    width, height = img.size
    shorter = min(width, height)
    if shorter <= max_side:
        return img
    scale = max_side / shorter
    size = (max_side, max(1, round(height * scale))) if width == shorter else (max(1, round(width * scale)), max_side)
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
