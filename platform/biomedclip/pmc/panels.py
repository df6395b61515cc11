"""Compound figures cut into panels, classically: recursive XY-cut on the decoded pixels.

A gutter is a run of lines (rows or columns) of one uniform colour, light or dark, that crosses a region from side to
side. A region is cut at the middle of its interior gutters along one axis, and each piece is cut again, so the
leaves come out in reading order (top to bottom, left to right). A gutter only counts where a panel edge runs along
it (one of the lines beside it is mostly not the gutter's colour): the empty space between the cells of one
microscopy image is uniform too, but nothing edges it. Pieces smaller than a share of the figure, or too elongated,
are merged back into a neighbour. Panel letters are read by OCR only where the `tesseract` binary is installed.
Pure functions of numpy arrays; numpy and PIL only.
"""

from __future__ import annotations

import io
import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (pixels, end exclusive)


@dataclass(frozen=True)
class PanelConfig:
    tolerance: int = 16  # a pixel differs from a colour by more than this on some channel (0-255)
    outlier_share: float = 0.002  # a uniform line may have this share of differing pixels (JPEG specks)
    min_gutter: int = 2  # pixels
    min_margin: int = 3  # a uniform border run thinner than this is a frame or axis line, kept as content
    min_panel_share: float = 0.15  # a panel's content spans at least this share of the figure along the cut
    min_panel_px: int = 24
    max_aspect: float = 6.0  # longer over shorter side of a panel's content
    min_edge_share: float = 0.5  # of the line beside a gutter (on one side at least) that is not the gutter colour
    max_depth: int = 4  # nested cuts
    max_panels: int = 26  # more leaves than letters: not panels (e.g. a table as an image)
    ocr: bool = True  # read panel letters where `tesseract` is installed

    def __post_init__(self):
        if not 0 <= self.tolerance <= 255 or not 0 <= self.outlier_share < 1 or not 0 <= self.min_edge_share <= 1:
            raise ValueError("tolerance in [0, 255], outlier_share in [0, 1) and min_edge_share in [0, 1] are required")
        if (
            self.min_gutter < 1
            or self.min_margin < 1
            or self.min_panel_px < 1
            or self.max_aspect < 1
            or self.max_depth < 1
        ):
            raise ValueError("min_gutter, min_margin, min_panel_px, max_depth must be >= 1 and max_aspect >= 1")
        if not 0 < self.min_panel_share < 0.5 or self.max_panels < 2:
            raise ValueError("min_panel_share must be in (0, 0.5) and max_panels >= 2")


@dataclass(frozen=True)
class _Gutter:
    start: int  # first line of the run, along the axis, in image coordinates
    end: int  # one past the last line

    @property
    def width(self) -> int:
        return self.end - self.start

    @property
    def middle(self) -> int:
        return (self.start + self.end) // 2


def detect_panels(pixels: np.ndarray, config: PanelConfig = PanelConfig()) -> list[Box]:
    """The panel boxes of an RGB image (H x W x 3, uint8) in reading order; one box (the content without its margins)
    if it is not compound or cuts into more than `max_panels` pieces, none if it is blank."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB array, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    signed = pixels.astype(np.int16)  # differences of colours below
    root = _trim(signed, (0, 0, width, height), config)
    if root is None:
        return []
    leaves = _cut(signed, root, root, config, depth=0)
    return leaves if len(leaves) <= config.max_panels else [root]


def _lines(pixels: np.ndarray, box: Box, axis: int) -> np.ndarray:
    """The region's lines along `axis` (0: rows, 1: columns) as an array [lines, pixels per line, 3]."""
    x0, y0, x1, y1 = box
    region = pixels[y0:y1, x0:x1]
    return region if axis == 0 else region.transpose(1, 0, 2)


def _uniform(lines: np.ndarray, config: PanelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Which lines are one colour (within tolerance, bar a few outlier pixels), and each line's median colour."""
    colours = np.median(lines, axis=1)
    off = np.abs(lines - colours[:, None, :]).max(axis=2) > config.tolerance
    return off.mean(axis=1) <= config.outlier_share, colours


def _runs(lines: np.ndarray, config: PanelConfig) -> list[tuple[int, int, np.ndarray]]:
    """Maximal runs of uniform lines of one colour: (first, end, colour), in the region's line coordinates."""
    uniform, colours = _uniform(lines, config)
    runs, start = [], None
    for i in range(len(uniform) + 1):
        same = (
            i < len(uniform)
            and uniform[i]
            and start is not None
            and np.abs(colours[i] - colours[start]).max() <= config.tolerance
        )
        if start is not None and not same:
            runs.append((start, i, colours[start]))
            start = None
        if start is None and i < len(uniform) and uniform[i]:
            start = i
    return runs


def _trim(pixels: np.ndarray, box: Box, config: PanelConfig) -> Box | None:
    """The box without its uniform margins (of any colour) on every side; None if nothing is left. Thinner runs are
    kept: trimming a bar chart's axis line would open gutters between its bars."""
    x0, y0, x1, y1 = box
    for axis in (0, 1):
        runs = _runs(_lines(pixels, (x0, y0, x1, y1), axis), config)
        length = (y1 - y0) if axis == 0 else (x1 - x0)
        head = next((end for start, end, _ in runs if start == 0 and end >= config.min_margin), 0)
        tail = next((start for start, end, _ in runs if end == length and end - start >= config.min_margin), length)
        if head >= tail:
            return None
        if axis == 0:
            y0, y1 = y0 + head, y0 + tail
        else:
            x0, x1 = x0 + head, x0 + tail
    return x0, y0, x1, y1


def _edge_share(line: np.ndarray, colour: np.ndarray, tolerance: int) -> float:
    return float((np.abs(line - colour).max(axis=1) > tolerance).mean())


def _gutters(pixels: np.ndarray, inner: Box, axis: int, config: PanelConfig) -> list[_Gutter]:
    """Interior gutters of the trimmed region along `axis`, edged by a panel on at least one side."""
    lines = _lines(pixels, inner, axis)
    offset = inner[1] if axis == 0 else inner[0]
    gutters = []
    for start, end, colour in _runs(lines, config):
        if start == 0 or end == len(lines) or end - start < config.min_gutter:
            continue
        edge = max(
            _edge_share(lines[start - 1], colour, config.tolerance), _edge_share(lines[end], colour, config.tolerance)
        )
        if edge >= config.min_edge_share:
            gutters.append(_Gutter(offset + start, offset + end))
    return gutters


def _cut(pixels: np.ndarray, box: Box, root: Box, config: PanelConfig, depth: int) -> list[Box]:
    if depth >= config.max_depth:
        return [box]
    inner = _trim(pixels, box, config)
    if inner is None:
        return [box]
    candidates = {axis: _gutters(pixels, inner, axis, config) for axis in (0, 1)}
    for axis in sorted(candidates, key=lambda a: -max((g.width for g in candidates[a]), default=0)):
        gutters = _panel_sized(candidates[axis], inner, root, axis, config)
        if gutters:
            return [
                leaf for piece in _pieces(box, gutters, axis) for leaf in _cut(pixels, piece, root, config, depth + 1)
            ]
    return [box]


def _panel_sized(gutters: list[_Gutter], inner: Box, root: Box, axis: int, config: PanelConfig) -> list[_Gutter]:
    """The gutters left once every piece between them is big enough and not too elongated: a gutter beside the
    smallest failing piece is dropped (merging the piece into a neighbour) until all pass."""
    start, end = (inner[1], inner[3]) if axis == 0 else (inner[0], inner[2])
    across = (inner[2] - inner[0]) if axis == 0 else (inner[3] - inner[1])
    root_length = (root[3] - root[1]) if axis == 0 else (root[2] - root[0])
    minimum = max(config.min_panel_px, config.min_panel_share * root_length)
    gutters = list(gutters)
    while gutters:
        bounds = [start, *[v for g in gutters for v in (g.start, g.end)], end]
        lengths = [bounds[2 * i + 1] - bounds[2 * i] for i in range(len(gutters) + 1)]
        bad = [
            i
            for i, n in enumerate(lengths)
            if n < minimum or max(n, across) / max(1, min(n, across)) > config.max_aspect
        ]
        if not bad:
            return gutters
        worst = min(bad, key=lambda i: lengths[i])
        if worst == 0:
            gutters.pop(0)
        elif worst == len(gutters):
            gutters.pop()
        else:  # into the smaller neighbour, unless a real piece lies between a clearly narrower and a wider gutter
            before, after = gutters[worst - 1].width, gutters[worst].width
            if lengths[worst] >= config.min_gutter and max(before, after) >= 2 * min(before, after):
                gutters.pop(worst - 1 if before < after else worst)
            else:
                gutters.pop(worst - 1 if lengths[worst - 1] <= lengths[worst + 1] else worst)
    return []


def _pieces(box: Box, gutters: list[_Gutter], axis: int) -> list[Box]:
    x0, y0, x1, y1 = box
    cuts = [y0 if axis == 0 else x0, *[g.middle for g in gutters], y1 if axis == 0 else x1]
    if axis == 0:
        return [(x0, a, x1, b) for a, b in itertools.pairwise(cuts)]
    return [(a, y0, b, y1) for a, b in itertools.pairwise(cuts)]


# --- panel letters -----------------------------------------------------------------------------------------------

_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.:]?$")


def read_panel_letters(pixels: np.ndarray, boxes: list[Box], corner_share: float = 0.3) -> list[str | None]:
    """The letter printed in each panel's top-left corner (upper case), None where none is read; all None without
    `tesseract` (optional: a Debian package)."""
    executable = shutil.which("tesseract")
    if executable is None:
        return [None] * len(boxes)
    return [_read_letter(executable, pixels, box, corner_share) for box in boxes]


def _read_letter(executable: str, pixels: np.ndarray, box: Box, corner_share: float) -> str | None:
    x0, y0, x1, y1 = box
    width, height = max(16, int((x1 - x0) * corner_share)), max(16, int((y1 - y0) * corner_share))
    corner = Image.fromarray(np.ascontiguousarray(pixels[y0 : y0 + height, x0 : x0 + width]).astype(np.uint8)).convert(
        "L"
    )
    corner = corner.resize((corner.width * 3, corner.height * 3), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    corner.save(buffer, "PNG")
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    try:
        done = subprocess.run(
            [executable, "stdin", "stdout", "--psm", "7", "-c", f"tessedit_char_whitelist={letters}()"],
            input=buffer.getvalue(),
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _LETTER.match(done.stdout.decode(errors="replace").strip())
    return match.group(1).upper() if match else None


def box_iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def pair_panels(
    boxes: list[Box], letters: list[str | None], caption_letters: list[str]
) -> list[tuple[str, Box]] | None:
    """(letter, box) for each panel: by the letters read in the panels when they name exactly the caption's panels,
    else by reading order when the counts agree; None when uncertain (the whole figure is kept alone)."""
    if len(boxes) < 2 or len(caption_letters) < 2:
        return None
    wanted = [letter.upper() for letter in caption_letters]
    if all(letters) and len(letters) == len(boxes) and sorted(letters) == sorted(wanted):
        by_letter = dict(zip(letters, boxes))
        return [(letter, by_letter[letter]) for letter in wanted]
    if len(boxes) == len(wanted):
        return list(zip(wanted, boxes))
    return None
