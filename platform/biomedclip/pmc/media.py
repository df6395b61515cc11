"""Graphic hrefs matched to media files by stem: hrefs often carry no extension, and packages hold several
renderings of one figure (e.g. a .jpg and a .gif thumbnail, or a .tif master)."""
from __future__ import annotations

import posixpath
from collections.abc import Iterable

# Preferred first; anything else with the same stem comes last so that the image stage can name its format.
PREFERENCE = ("jpg", "jpeg", "png", "gif", "tif", "tiff")
MEDIA_EXTENSIONS = frozenset(PREFERENCE) | {"eps", "ps", "pdf", "bmp", "svg", "webp", "jp2", "psd"}


def basename(path: str) -> str:
    return posixpath.basename(path.split("?", 1)[0].replace("\\", "/"))


def split_ext(name: str) -> tuple[str, str]:
    """('fig1', 'jpg') for 'fig1.JPG'; an unknown suffix stays part of the stem ('pone.0000217.g001', '')."""
    stem, dot, ext = name.rpartition(".")
    if dot and stem and ext.lower() in MEDIA_EXTENSIONS:
        return stem, ext.lower()
    return name, ""


def match_media(href: str, names: Iterable[str]) -> str | None:
    """The media file for a graphic href: same stem (case-insensitive), best extension first."""
    stem = split_ext(basename(href))[0].lower()
    candidates = []
    for name in names:
        name_stem, ext = split_ext(basename(name))
        if name_stem.lower() == stem:
            rank = PREFERENCE.index(ext) if ext in PREFERENCE else len(PREFERENCE)
            candidates.append((rank, name))
    return min(candidates)[1] if candidates else None
