"""Synthetic figures whose captions say what is visible: modality, colours, counts and shapes.

Six kinds, each rendered from a few facts that the caption states in words (and that `facts` keeps for tests):
radiograph (bright nodules, left/right), CT (dark or bright lesions), H&E histology (dense or sparse nuclei, round
glands), fluorescence microscopy (cells of one colour), bar chart (bars of one colour), line graph (rising or falling
curves). A tiny CLIP trained on a few hundred of them can learn retrieval that random weights cannot.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
COLOURS = {"green": (40, 230, 60), "red": (235, 40, 40), "blue": (50, 90, 240)}
CHART_COLOURS = {"blue": (31, 90, 200), "red": (210, 40, 40), "green": (40, 160, 60), "orange": (245, 140, 20),
                 "purple": (130, 60, 170)}


@dataclass(frozen=True)
class SampleFigure:
    kind: str
    image: Image.Image
    caption: str
    mention: str  # how the article's text cites it ("{ref}" is replaced by the cross-reference)
    facts: dict


def render_figure(rng: np.random.Generator, size: tuple[int, int]) -> SampleFigure:
    kind = KINDS[int(rng.integers(len(KINDS)))]
    return RENDERERS[kind](rng, size)


def _plural(n: int, word: str) -> str:
    return f"{NUMBERS[n]} {word}{'' if n == 1 else 's'}"


def _noise(img: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * sigma
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), img.mode)


def _spots(rng: np.random.Generator, n: int, box: tuple[float, float, float, float], radius: float,
           inside: Callable[[float, float], bool] = lambda x, y: True) -> list[tuple[float, float]]:
    """`n` centres in `box` at least 2.6 radii apart (rejection sampling, deterministic for the rng)."""
    x0, y0, x1, y1 = box
    centres: list[tuple[float, float]] = []
    for _ in range(2000):
        if len(centres) == n:
            break
        x, y = rng.uniform(x0 + radius, x1 - radius), rng.uniform(y0 + radius, y1 - radius)
        if inside(x, y) and all((x - a) ** 2 + (y - b) ** 2 > (2.6 * radius) ** 2 for a, b in centres):
            centres.append((x, y))
    return centres


def _disc(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def radiograph(rng: np.random.Generator, size: tuple[int, int]) -> SampleFigure:
    w, h = size
    n, side = int(rng.integers(1, 5)), ("left", "right")[int(rng.integers(2))]
    img = Image.new("L", size, 20)
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((0.08 * w, 0.05 * h, 0.92 * w, 0.98 * h), radius=0.15 * w, fill=105)
    lungs = {"left": (0.14 * w, 0.12 * h, 0.46 * w, 0.88 * h), "right": (0.54 * w, 0.12 * h, 0.86 * w, 0.88 * h)}
    for box in lungs.values():
        draw.ellipse(box, fill=45)
    draw.rectangle((0.47 * w, 0.05 * h, 0.53 * w, 0.98 * h), fill=150)
    x0, y0, x1, y1 = lungs[side]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    radius = 0.045 * min(w, h)
    in_lung = lambda x, y: ((x - cx) / (rx - radius)) ** 2 + ((y - cy) / (ry - radius)) ** 2 < 1  # noqa: E731
    for x, y in _spots(rng, n, lungs[side], radius, in_lung):
        _disc(draw, x, y, radius, 235)
    img = _noise(img.filter(ImageFilter.GaussianBlur(1.2)), rng, 6)
    caption = (f"Chest radiograph (X-ray), grayscale, showing {_plural(n, 'bright round nodule')} "
               f"in the {side} lung field of the image.")
    return SampleFigure("radiograph", img, caption,
                        f"The chest X-ray in {{ref}} shows {NUMBERS[n]} nodules on the {side}.",
                        {"count": n, "side": side})


def ct_scan(rng: np.random.Generator, size: tuple[int, int]) -> SampleFigure:
    w, h = size
    n, tone = int(rng.integers(1, 5)), ("dark", "bright")[int(rng.integers(2))]
    img = Image.new("L", size, 5)
    draw = ImageDraw.Draw(img)
    body = (0.06 * w, 0.14 * h, 0.94 * w, 0.86 * h)
    draw.ellipse(body, fill=120)
    cx, cy, rx, ry = w / 2, h / 2, 0.44 * w, 0.36 * h
    radius = 0.05 * min(w, h)
    inside = lambda x, y: ((x - cx) / (rx - 2 * radius)) ** 2 + ((y - cy) / (ry - 2 * radius)) ** 2 < 1  # noqa: E731
    for x, y in _spots(rng, n, body, radius, inside):
        _disc(draw, x, y, radius, 30 if tone == "dark" else 240)
    img = _noise(img.filter(ImageFilter.GaussianBlur(0.8)), rng, 5)
    kind = "hypodense cyst" if tone == "dark" else "hyperdense lesion"
    caption = (f"Axial CT scan, grayscale cross-section of the abdomen with {NUMBERS[n]} {tone} round "
               f"{kind}{'' if n == 1 else 's'}.")
    return SampleFigure("ct", img, caption, f"CT in {{ref}} demonstrates {NUMBERS[n]} {tone} lesions.",
                        {"count": n, "tone": tone})


def histology(rng: np.random.Generator, size: tuple[int, int]) -> SampleFigure:
    w, h = size
    glands, density = int(rng.integers(1, 4)), ("dense", "sparse")[int(rng.integers(2))]
    base = np.array([232, 160, 200], np.float32) + rng.normal(0, 10, (h, w, 1)).astype(np.float32)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    radius = 0.11 * min(w, h)
    lumens = _spots(rng, glands, (0, 0, w, h), radius)
    nuclear = 0.012 * min(w, h) + 1.5
    for _ in range(int((0.0025 if density == "dense" else 0.0004) * w * h)):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if all((x - a) ** 2 + (y - b) ** 2 > (radius * 1.3) ** 2 for a, b in lumens):
            draw.ellipse((x - nuclear, y - nuclear * 0.7, x + nuclear, y + nuclear * 0.7), fill=(85, 35, 125))
    for x, y in lumens:
        _disc(draw, x, y, radius * 1.15, (120, 50, 150))
        _disc(draw, x, y, radius, (250, 244, 250))
    img = _noise(img.filter(ImageFilter.GaussianBlur(0.7)), rng, 4)
    caption = (f"Hematoxylin and eosin (H&E) stained histology section: pink tissue with {density} purple nuclei "
               f"and {_plural(glands, 'round white gland')}.")
    return SampleFigure("histology", img, caption,
                        f"Histology ({{ref}}) shows {density} nuclei around {NUMBERS[glands]} glands.",
                        {"count": glands, "density": density})


def fluorescence(rng: np.random.Generator, size: tuple[int, int]) -> SampleFigure:
    w, h = size
    n, colour = int(rng.integers(1, 7)), list(COLOURS)[int(rng.integers(len(COLOURS)))]
    img = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(img)
    radius = 0.07 * min(w, h)
    rgb = COLOURS[colour]
    for x, y in _spots(rng, n, (0, 0, w, h), radius):
        _disc(draw, x, y, radius, tuple(int(c * 0.75) for c in rgb))
        _disc(draw, x, y, radius * 0.45, rgb)
    img = _noise(img.filter(ImageFilter.GaussianBlur(1.5)), rng, 3)
    caption = f"Fluorescence microscopy image of {_plural(n, f'{colour} fluorescent cell')} on a black background."
    return SampleFigure("fluorescence", img, caption,
                        f"Confocal imaging ({{ref}}) detected {NUMBERS[n]} {colour} cells.",
                        {"count": n, "colour": colour})


def bar_chart(rng: np.random.Generator, size: tuple[int, int]) -> SampleFigure:
    w, h = size
    k, colour = int(rng.integers(2, 7)), list(CHART_COLOURS)[int(rng.integers(len(CHART_COLOURS)))]
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, bottom, top, right = 0.12 * w, 0.9 * h, 0.08 * h, 0.95 * w
    draw.line((left, top, left, bottom), fill=(0, 0, 0), width=2)
    draw.line((left, bottom, right, bottom), fill=(0, 0, 0), width=2)
    slot = (right - left) / k
    for i in range(k):
        height = rng.uniform(0.2, 1.0) * (bottom - top)
        x0 = left + i * slot + 0.2 * slot
        draw.rectangle((x0, bottom - height, x0 + 0.6 * slot, bottom - 2), fill=CHART_COLOURS[colour])
    caption = f"Bar chart with {_plural(k, colour + ' bar')} on a white background comparing the measured groups."
    return SampleFigure("bar_chart", img, caption, f"Group means are compared in {{ref}} ({NUMBERS[k]} groups).",
                        {"count": k, "colour": colour})


def line_graph(rng: np.random.Generator, size: tuple[int, int]) -> SampleFigure:
    w, h = size
    k, trend = int(rng.integers(1, 4)), ("rising", "falling")[int(rng.integers(2))]
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, bottom, top, right = 0.12 * w, 0.9 * h, 0.08 * h, 0.95 * w
    draw.line((left, top, left, bottom), fill=(0, 0, 0), width=2)
    draw.line((left, bottom, right, bottom), fill=(0, 0, 0), width=2)
    colours = list(CHART_COLOURS.values())
    for i in range(k):
        xs = np.linspace(left + 4, right - 4, 12)
        level = np.linspace(0.15, 0.85, 12) + rng.normal(0, 0.03, 12) + (i - 1) * 0.06
        level = level if trend == "rising" else level[::-1]
        ys = bottom - np.clip(level, 0.02, 0.98) * (bottom - top)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colours[i], width=3)
    caption = f"Line graph with {_plural(k, 'curve')} {trend} from left to right over time."
    return SampleFigure("line_graph", img, caption, f"The time course in {{ref}} is {trend}.",
                        {"count": k, "trend": trend})


RENDERERS: dict[str, Callable[[np.random.Generator, tuple[int, int]], SampleFigure]] = {
    "radiograph": radiograph, "ct": ct_scan, "histology": histology, "fluorescence": fluorescence,
    "bar_chart": bar_chart, "line_graph": line_graph,
}
KINDS = tuple(RENDERERS)
