"""DICOM to an 8-bit RGB image, the way a radiologist's viewer shows it.

Steps: stored values -> modality LUT (RescaleSlope/Intercept, e.g. CT Hounsfield units) -> window (the one given,
else the file's first WindowCenter/WindowWidth) mapped linearly onto 0..255 -> MONOCHROME1 inverted -> grey copied
to three channels. Without a window, 8-bit data is kept as stored and deeper data is min-max scaled.
Compressed pixel data (e.g. RSNA's JPEG baseline) is decoded by pydicom through Pillow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut


def read_dicom_rgb(path: str | Path, window: tuple[float, float] | None = None) -> Image.Image:
    """`window` = (centre, width) overrides the file's own window."""
    dataset = pydicom.dcmread(str(path))
    pixels = dataset.pixel_array
    if dataset.get("SamplesPerPixel", 1) == 3:  # colour: pydicom already returns RGB
        return Image.fromarray(pixels if pixels.dtype == np.uint8 else _to_uint8(pixels.astype(np.float64)))
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    window = window or _file_window(dataset)
    if window is not None:
        grey = _apply_window(values, *window)
    elif pixels.dtype == np.uint8:
        grey = pixels
    else:
        grey = _to_uint8(values)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":  # 0 means white
        grey = 255 - grey
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))


def _file_window(dataset) -> tuple[float, float] | None:
    centre, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if centre is None or width is None:
        return None
    return _first(centre), _first(width)


def _first(value) -> float:
    """Windows may hold several values (one per preset); the first is the default."""
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def _apply_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    scaled = (values - (centre - width / 2)) / width * 255
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, dtype=np.uint8)
    return ((values - low) / (high - low) * 255).astype(np.uint8)
