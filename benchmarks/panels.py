"""Compound-figure splitting measured: panel-box recall and precision at IoU >= 0.8, sub-caption assignment accuracy,
and the false-split rate on single-panel figures, on a generated labelled set and on hand-labelled real figures.

    python benchmarks/panels.py [--figures 200] [--seed 0] [--realdata ../shared/realdata]

Generated set: `samples.compound` tiles sample figures with gutters of 2-20 px in white, grey, black or blue, half of
them with letters drawn in the panels, captions in four panel styles; singles are sample figures of every kind.
Real set: figures of the real articles in realdata/pmc, boxes labelled by hand (original pixels). Every image goes
through the extraction's own normalisation (shorter side 512) before detection, as in the pipeline.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from biomedclip.pmc.images import ImageConfig, normalize_image
from biomedclip.pmc.jats import parse_article
from biomedclip.pmc.panels import (
    Box,
    PanelConfig,
    box_iou,
    detect_panels,
    pair_panels,
    read_panel_letters,
)
from biomedclip.pmc.skips import Skipped
from biomedclip.pmc.subcaptions import split_caption
from biomedclip.samples.compound import render_compound
from biomedclip.samples.figures import render_figure

IOU = 0.8
# Hand-labelled panels of the real compound figures (article folder, image file, caption's letters -> box in the
# original pixels: x0, y0, x1, y1), and real single-panel figures.
REAL_COMPOUND = {
    ("elife-19405", "elife-19405-fig1.tif"): {"A": (0, 0, 1417, 564), "B": (0, 715, 1417, 1252)},
    ("elife-32671-texture", "fig2.jpg"): {"A": (0, 0, 1079, 372), "B": (0, 396, 1079, 953),
                                          "C": (0, 981, 1079, 1500)},
    ("scielo-bjmbr-37-04-459", "1414-431X-bjmbr-37-04-459-477-g5500i01.jpg"): {"A": (5, 14, 447, 428),
                                                                                "B": (457, 14, 890, 428)},
}
REAL_SINGLE = [("elife-00353", "elife-00353-fig1-v1.tif"),
               ("scielo-bjmbr-37-04-459", "1414-431X-bjmbr-37-04-459-477-g5500i04.jpg"),
               ("scielo-bjmbr-37-04-459", "1414-431X-bjmbr-37-04-459-477-g5500i06.jpg")]


@dataclass
class Score:
    truth_panels: int = 0
    predicted_panels: int = 0
    matched_panels: int = 0
    assigned_right: int = 0
    singles: int = 0
    false_splits: int = 0
    seconds: list[float] = field(default_factory=list)

    def add_compound(self, truth: dict[str, Box], caption: str, own_text: dict[str, str], pixels: np.ndarray,
                     scale: float, config: PanelConfig) -> None:
        start = time.perf_counter()
        boxes = detect_panels(pixels, config)
        self.seconds.append(time.perf_counter() - start)
        boxes = [_scaled(b, scale) for b in boxes] if len(boxes) > 1 else []  # one box: not split
        self.truth_panels += len(truth)
        self.predicted_panels += len(boxes)
        self.matched_panels += _matches(boxes, list(truth.values()))
        split = split_caption(caption)
        letters = read_panel_letters(pixels, [_scaled(b, 1 / scale) for b in boxes]) if boxes else []
        pairs = pair_panels(boxes, letters, split.letters) if split else None
        for letter, box in pairs or []:
            right_box = letter in truth and box_iou(box, truth[letter]) >= IOU
            if right_box and own_text[letter] in split.panels[letter]:
                self.assigned_right += 1

    def add_single(self, pixels: np.ndarray, config: PanelConfig) -> None:
        start = time.perf_counter()
        self.false_splits += len(detect_panels(pixels, config)) > 1
        self.seconds.append(time.perf_counter() - start)
        self.singles += 1

    def report(self) -> dict:
        return {
            "panel_recall": self.matched_panels / max(1, self.truth_panels),
            "panel_precision": self.matched_panels / max(1, self.predicted_panels),
            "assignment_accuracy": self.assigned_right / max(1, self.truth_panels),
            "false_split_rate": self.false_splits / max(1, self.singles),
            "truth_panels": self.truth_panels, "predicted_panels": self.predicted_panels, "singles": self.singles,
            "ms_per_figure": 1000 * float(np.mean(self.seconds)) if self.seconds else 0.0,
        }


def _scaled(box: Box, scale: float) -> Box:
    return tuple(round(v * scale) for v in box)


def _matches(predicted: list[Box], truth: list[Box]) -> int:
    """One-to-one matches at IoU >= 0.8 (greedy by IoU; at that threshold a box can match only one other)."""
    used, matched = set(), 0
    for t in truth:
        best = max((i for i in range(len(predicted)) if i not in used), key=lambda i: box_iou(predicted[i], t),
                   default=None)
        if best is not None and box_iou(predicted[best], t) >= IOU:
            used.add(best)
            matched += 1
    return matched


def normalized(image: Image.Image | bytes) -> tuple[np.ndarray, float]:
    """The pixels the pipeline sees (the extraction's normalisation) and their scale to the original pixels."""
    data = image if isinstance(image, bytes) else _png(image)
    normal = normalize_image(data, ImageConfig())
    rgb = np.asarray(Image.open(io.BytesIO(normal.jpeg)).convert("RGB"))
    return rgb, normal.orig_width / normal.width


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def evaluate_generated(figures: int = 200, seed: int = 0, config: PanelConfig | None = None) -> dict:
    score, config = Score(), config or PanelConfig()
    for n in range(figures):
        compound = render_compound(np.random.default_rng([seed, n]))
        pixels, scale = normalized(compound.image)
        truth = dict(zip(compound.letters, compound.boxes))
        own = {letter: panel.caption.rstrip(".") for letter, panel in zip(compound.letters, compound.panels)}
        score.add_compound(truth, compound.caption, own, pixels, scale, config)
        rng = np.random.default_rng([seed, n, 1])
        size = tuple(int(v) for v in rng.integers(160, 512, 2))
        score.add_single(normalized(render_figure(rng, size).image.convert("RGB"))[0], config)
    return score.report()


def evaluate_real(realdata: Path, config: PanelConfig | None = None) -> dict:
    score, config = Score(), config or PanelConfig()
    for (folder, name), truth in REAL_COMPOUND.items():
        caption = _caption(realdata / "pmc" / folder, name)
        split = split_caption(caption)
        own = split.panels if split else dict.fromkeys(truth, "\x00")  # no sub-captions: none can be right
        pixels, scale = normalized((realdata / "pmc" / folder / name).read_bytes())
        score.add_compound(truth, caption, own, pixels, scale, config)
    for folder, name in REAL_SINGLE:
        score.add_single(normalized((realdata / "pmc" / folder / name).read_bytes())[0], config)
    return score.report()


def _caption(folder: Path, image_name: str) -> str:
    """The caption of the figure whose graphic is this file (hrefs may omit the extension)."""
    stem = image_name.rsplit(".", 1)[0]
    for xml in sorted(p for p in folder.iterdir() if p.suffix in (".xml", ".nxml")):
        try:
            figures = parse_article(xml.read_bytes()).figures
        except Skipped:
            continue  # a manifest beside the article
        for figure in figures:
            if any(href.rsplit(".", 1)[0] == stem or href == stem for href in figure.hrefs):
                return figure.caption
    raise LookupError(f"no figure of {folder} shows {image_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--figures", type=int, default=200, help="generated compound figures (and as many singles)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--realdata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "realdata")
    args = parser.parse_args()
    results = {"generated": evaluate_generated(args.figures, args.seed)}
    if (args.realdata / "pmc").is_dir():
        results["real"] = evaluate_real(args.realdata)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
