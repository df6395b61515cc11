"""Checks on request contents: image bytes (size, format, truncation, decompression bombs), labels and texts."""
from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from biomedclip.serving.config import LimitsConfig
from biomedclip.serving.errors import RequestError
from biomedclip.text.whitespace import WHITESPACE  # the request schemas' patterns use the same set


def decode_image(data: bytes, limits: LimitsConfig, field: str = "image") -> Image.Image:
    """Decodes one uploaded image to RGB, refusing it (4xx naming `field`) when it is not a usable image."""
    if len(data) > limits.max_image_bytes:
        raise RequestError(413, field, f"{len(data)} bytes is over the limit of {limits.max_image_bytes} bytes")
    if not data:
        raise RequestError(422, field, "empty upload")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            _check_pixels(image, limits, field)
            image.load()
            return image if image.mode == "RGB" else image.convert("RGB")
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(422, field,
                           "not an image in a format the server reads (PNG, JPEG, GIF, TIFF, BMP, WebP)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise RequestError(422, field, f"refused as a possible decompression bomb: {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise RequestError(422, field, f"truncated or corrupt image data ({err})") from err


def _check_pixels(image: Image.Image, limits: LimitsConfig, field: str) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise RequestError(422, field, f"image has no pixels ({width}x{height})")
    if width * height > limits.max_image_pixels:
        raise RequestError(422, field, f"{width}x{height} pixels is over the limit of {limits.max_image_pixels} "
                                       "pixels (refused as a possible decompression bomb)")


def decode_base64(text: str, limits: LimitsConfig, field: str) -> bytes:
    """Base64 (optionally a data: URL) to bytes, refusing payloads whose decoded size is over the byte limit."""
    if not isinstance(text, str) or not text.strip():
        raise RequestError(422, field, "empty base64 string")
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    if len(payload) * 3 // 4 > limits.max_image_bytes + 2:
        raise RequestError(413, field, f"about {len(payload) * 3 // 4} bytes decoded is over the limit of "
                                       f"{limits.max_image_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise RequestError(422, field, f"not valid base64 ({err})") from err


def check_texts(texts: list[str], field: str, limits: LimitsConfig, max_count: int, min_count: int = 1,
                unique: bool = False) -> list[str]:
    """Stripped texts, each non-empty and within the length limit, their count within [min_count, max_count]."""
    if len(texts) < min_count:
        raise RequestError(422, field, f"none given (need at least {min_count})" if not texts
                           else f"{len(texts)} given, need at least {min_count}")
    if len(texts) > max_count:
        raise RequestError(422, field, f"{len(texts)} given, the limit is {max_count}")
    cleaned = [check_text(text, f"{field}[{i}]", limits) for i, text in enumerate(texts)]
    if unique and len(set(texts)) != len(texts):  # as given, like the schema's uniqueItems
        duplicate = next(t for t in texts if texts.count(t) > 1)
        raise RequestError(422, field, f"{duplicate!r} is given more than once")
    return cleaned


def check_text(text: str, field: str, limits: LimitsConfig) -> str:
    if not isinstance(text, str):
        raise RequestError(422, field, f"expected text, got {type(text).__name__}")
    if len(text) > limits.max_text_chars:  # before stripping, like the schema's maxLength
        raise RequestError(422, field, f"{len(text)} characters is over the limit of {limits.max_text_chars}")
    if not text.isprintable() and any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise RequestError(422, field, "not valid Unicode (a lone surrogate)")
    text = text.strip(WHITESPACE)
    if not text:
        raise RequestError(422, field, "empty text")
    return text


def check_templates(templates: list[str], limits: LimitsConfig) -> list[str]:
    templates = check_texts(templates, "templates", limits, limits.max_templates, unique=True)
    missing = next((t for t in templates if "{}" not in t), None)
    if missing is not None:
        raise RequestError(422, "templates", f"{missing!r} has no '{{}}' where the label goes")
    return templates
