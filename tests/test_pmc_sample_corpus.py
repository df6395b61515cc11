"""The synthetic corpus: deterministic by seed, and every caption's facts are visible in its image (measured here
with connected components, not taken from the renderer)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from biomedclip.samples.corpus import write_sample_corpus
from biomedclip.samples.figures import CHART_COLOURS, NUMBERS, RENDERERS


def blobs(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    labels, count = ndimage.label(mask)
    return [labels == i for i in range(1, count + 1) if (labels == i).sum() >= min_area]


def measure(kind: str, image) -> dict:
    """The facts of a figure read back from its pixels."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    h, w, _ = pixels.shape
    gray = pixels.mean(axis=2)
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == "radiograph":
        nodules = blobs(gray > 190, 10)
        sides = {"left" if xx[m].mean() < w / 2 else "right" for m in nodules}
        return {"count": len(nodules), "side": sides.pop() if len(sides) == 1 else sides}
    if kind == "ct":
        body = ((xx - w / 2) / (0.40 * w)) ** 2 + ((yy - h / 2) / (0.32 * h)) ** 2 < 1
        bright, dark = blobs(body & (gray > 190), 10), blobs(body & (gray < 75), 10)
        return {"count": len(bright) + len(dark), "tone": "bright" if bright else "dark"}
    if kind == "histology":
        glands = blobs(pixels[..., 1] > 225, 30)
        purple = ((pixels[..., 0] < 150) & (pixels[..., 1] < 100) & (pixels[..., 2] > 90)).mean()
        return {"count": len(glands), "density": "dense" if purple > 0.04 else "sparse"}
    if kind == "fluorescence":
        cells = blobs(pixels.max(axis=2) > 80, 20)
        channel = int(np.argmax(sum(pixels[m].mean(axis=0) for m in cells)))
        return {"count": len(cells), "colour": ("red", "green", "blue")[channel]}
    if kind == "bar_chart":
        row = pixels[int(0.9 * h) - 5]
        colour = min(CHART_COLOURS, key=lambda c: np.abs(row - CHART_COLOURS[c]).sum(axis=1).min())
        on = np.abs(row - CHART_COLOURS[colour]).sum(axis=1) < 60
        return {"count": int(np.sum(on[1:] & ~on[:-1]) + on[0]), "colour": colour}
    if kind == "line_graph":
        blue = np.abs(pixels - CHART_COLOURS["blue"]).sum(axis=2) < 60
        ys, xs = np.nonzero(blue)
        left, right = ys[xs < 0.35 * w].mean(), ys[xs > 0.75 * w].mean()
        colours = sum(bool((np.abs(pixels - c).sum(axis=2) < 60).sum() > 20) for c in list(CHART_COLOURS.values())[:3])
        return {"count": colours, "trend": "rising" if right < left else "falling"}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", sorted(RENDERERS))
def test_images_show_what_their_captions_state(kind):
    for seed in range(12):
        figure = RENDERERS[kind](np.random.default_rng([7, seed]), (int(160 + 8 * seed), 200))
        assert measure(kind, figure.image) == figure.facts, (seed, figure.caption)
        assert NUMBERS[figure.facts["count"]] in figure.caption
        for value in figure.facts.values():
            assert isinstance(value, int) or value in figure.caption


def digests(root) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", ["s3", "tar", "folders"])
def test_corpus_is_deterministic_by_seed(tmp_path, layout):
    first = write_sample_corpus(tmp_path / "a", articles=8, layout=layout, seed=1)
    write_sample_corpus(tmp_path / "b", articles=8, layout=layout, seed=1)
    write_sample_corpus(tmp_path / "c", articles=8, layout=layout, seed=2)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert digests(tmp_path / "a") != digests(tmp_path / "c")
    truth = [json.loads(line) for line in (tmp_path / "a" / "sample_truth.jsonl").read_text().splitlines()]
    assert len(truth) == first["figures"] and {t["kind"] for t in truth} <= {*RENDERERS, "compound"}


def test_corpus_mixes_kinds_formats_and_reuses_some_figures(tmp_path):
    write_sample_corpus(tmp_path, articles=60, layout="folders", seed=0)
    truth = [json.loads(line) for line in (tmp_path / "sample_truth.jsonl").read_text().splitlines()]
    assert {t["kind"] for t in truth} - {"compound"} == set(RENDERERS)
    suffixes = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert {".jpg", ".png", ".gif", ".tif", ".nxml"} <= suffixes
    images = [hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*.*")
              if p.suffix in (".jpg", ".png", ".gif", ".tif")]
    assert len(images) > len(set(images))  # exact duplicates exist for the dedup to find
