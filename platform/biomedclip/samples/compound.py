"""Compound figures with known panel boxes: sample figures tiled in a grid (or one tall panel beside a column of others)
with gutters of varied width and colour (never black beside a black-background panel), lettered or not, and a caption
in one of the common panel styles. The labelled set of the panel benchmark and tests, and the compound figures of the
sample corpus."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from biomedclip.samples.figures import SampleFigure, render_figure

GUTTER_COLOURS = ((255, 255, 255), (235, 235, 235), (0, 0, 0), (60, 60, 60), (215, 228, 250))
DARK_BACKGROUND = frozenset({"fluorescence", "ct"})  # a black gutter beside them is invisible: never drawn
CAPTION_STYLES = ("({letter}) {text}", "{letter}, {text}", "Panel {letter}: {text}", "({lower}) {text}")
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class CompoundFigure:
    image: Image.Image
    boxes: tuple[Box, ...]  # panel boxes in reading order, x0, y0, x1, y1
    letters: tuple[str, ...]  # A, B, ... in the same order
    panels: tuple[SampleFigure, ...]
    caption: str
    lettered: bool  # letters drawn in the panels


def render_compound(rng: np.random.Generator, panel_size: tuple[int, int] = (120, 220),
                    max_gutter: int = 20) -> CompoundFigure:
    """A 2-6 panel figure; panel sides drawn from `panel_size`, gutters 2..max_gutter pixels."""
    gutter = int(rng.integers(2, max_gutter + 1))
    margin = int(rng.integers(0, gutter + 1))
    layout = _column_layout(rng, panel_size, gutter) if rng.random() < 0.2 else _grid_layout(rng, panel_size, gutter)
    panels = [render_figure(rng, (x1 - x0, y1 - y0)) for x0, y0, x1, y1 in layout]
    colours = [c for c in GUTTER_COLOURS if c != (0, 0, 0) or not DARK_BACKGROUND & {p.kind for p in panels}]
    image = Image.new("RGB", (max(b[2] for b in layout) + 2 * margin, max(b[3] for b in layout) + 2 * margin),
                      colours[int(rng.integers(len(colours)))])
    boxes = [(x0 + margin, y0 + margin, x1 + margin, y1 + margin) for x0, y0, x1, y1 in layout]
    for box, panel in zip(boxes, panels):
        image.paste(panel.image.convert("RGB"), box[:2])
    letters = tuple(chr(ord("A") + i) for i in range(len(boxes)))
    lettered = bool(rng.random() < 0.5)
    if lettered:
        _draw_letters(image, boxes, letters)
    return CompoundFigure(image, tuple(boxes), letters, tuple(panels), compound_caption(rng, panels), lettered)


def _grid_layout(rng: np.random.Generator, panel_size: tuple[int, int], gutter: int) -> list[Box]:
    while True:
        rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        if 2 <= rows * cols <= 6:
            break
    widths = rng.integers(panel_size[0], panel_size[1] + 1, cols)
    heights = rng.integers(panel_size[0], panel_size[1] + 1, rows)
    xs = np.concatenate([[0], np.cumsum(widths + gutter)])
    ys = np.concatenate([[0], np.cumsum(heights + gutter)])
    return [(int(xs[c]), int(ys[r]), int(xs[c] + widths[c]), int(ys[r] + heights[r]))
            for r in range(rows) for c in range(cols)]


def _column_layout(rng: np.random.Generator, panel_size: tuple[int, int], gutter: int) -> list[Box]:
    """One tall panel on the left, two or three stacked on the right (reading order: the tall one first)."""
    stacked = int(rng.integers(2, 4))
    heights = rng.integers(panel_size[0], panel_size[1] + 1, stacked)
    left, right = (int(v) for v in rng.integers(panel_size[0], panel_size[1] + 1, 2))
    total = int(heights.sum() + gutter * (stacked - 1))
    boxes = [(0, 0, left, total)]
    y = 0
    for h in heights:
        boxes.append((left + gutter, y, left + gutter + right, y + int(h)))
        y += int(h) + gutter
    return boxes


def _draw_letters(image: Image.Image, boxes: list[Box], letters: tuple[str, ...]) -> None:
    draw = ImageDraw.Draw(image)
    for (x0, y0, _, _), letter in zip(boxes, letters):
        draw.rectangle((x0 + 2, y0 + 2, x0 + 16, y0 + 18), fill=(255, 255, 255))
        draw.text((x0 + 5, y0 + 4), letter, fill=(0, 0, 0))


def compound_caption(rng: np.random.Generator, panels: list[SampleFigure]) -> str:
    """A title sentence, then each panel's own caption behind its letter in one style."""
    style = CAPTION_STYLES[int(rng.integers(len(CAPTION_STYLES)))]
    listed = style.startswith("{letter},")  # "A, text; B, text."
    parts = [style.format(letter=chr(ord("A") + i), lower=chr(ord("a") + i),
                          text=panel.caption.rstrip(".") if listed else panel.caption)
             for i, panel in enumerate(panels)]
    joiner = "; " if listed else " "
    return f"Multi-panel figure of {len(panels)} images. " + joiner.join(parts) + ("." if listed else "")
