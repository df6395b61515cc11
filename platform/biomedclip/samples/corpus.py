"""A synthetic PMC corpus in the real layouts, deterministic by seed, for the demo and the tests.

Each article is a JATS XML file citing its figures in the text, with 1-3 figures from `samples.figures` (captions that
state what is visible) stored as JPEG, PNG, GIF or TIFF, hrefs mostly without extension as in PMC. Layouts:
- "s3": the PMC Cloud Service layout as local files (metadata/PMC{id}.1.json + PMC{id}.1/...), ~2% retracted;
- "tar": legacy OA packages PMC{id}.tar.gz (with .gif thumbnails beside .jpg figures, as PMC ships them);
- "folders": one folder per article.
A few articles have no figures, and some reuse an earlier article's figure (exact duplicates for the dedup). A share
of figures (`compound_share`, default 5%) are compound: 2-6 sample figures tiled with gutters and captioned per panel
("(A) ...", "A, ...;", "Panel A: ..."); the decision uses its own random stream, so every other figure is the same
as without them. `sample_truth.jsonl` at the root lists every figure's kind and facts (a compound figure's: its
panels' letters, boxes, kinds and facts).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from biomedclip.samples.compound import render_compound
from biomedclip.samples.figures import SampleFigure, render_figure

FIRST_PMCID = 9_100_000
REUSE_POOL = 64  # recent figures an article may reuse (bounded, so big corpora stay in constant memory)
LICENSES = (("CC BY", "http://creativecommons.org/licenses/by/4.0/", 0.7),
            ("CC0", "http://creativecommons.org/publicdomain/zero/1.0/", 0.1),
            ("CC BY-NC", "http://creativecommons.org/licenses/by-nc/4.0/", 0.15), (None, None, 0.05))
FORMATS = {"radiograph": ("jpg", "tif"), "ct": ("jpg", "png"), "histology": ("jpg", "tif"),
           "fluorescence": ("jpg", "png"), "bar_chart": ("png", "gif"), "line_graph": ("png", "gif"),
           "compound": ("png", "jpg")}
COMPOUND_KIND = "compound"


@dataclass
class SampleArticle:
    pmcid: str
    pmid: int
    doi: str
    slug: str
    license: tuple[str | None, str | None]
    retracted: bool
    figures: list[tuple[str, str, SampleFigure, str]]  # (fig_id, href, figure, media file name)
    media: dict[str, bytes]
    floats: bool

    def xml(self) -> bytes:
        return article_xml(self).encode()


def write_sample_corpus(output: str | Path, articles: int = 300, layout: Literal["s3", "tar", "folders"] = "s3",
                        seed: int = 0, image_size: tuple[int, int] = (160, 256), compound_share: float = 0.05) -> dict:
    """Writes the corpus under `output`; returns a summary (articles, figures, layout, path)."""
    if layout not in ("s3", "tar", "folders"):
        raise ValueError(f"layout must be s3, tar or folders, not {layout!r}")
    if not 0 <= compound_share <= 1:
        raise ValueError(f"compound_share must be in [0, 1], not {compound_share}")
    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    writer = {"s3": _write_cloud, "tar": _write_archive, "folders": _write_folder}[layout]
    truth, earlier = [], deque(maxlen=REUSE_POOL)
    for index in range(articles):
        article = make_article(index, seed, image_size, earlier, compound_share)
        writer(root, article)
        truth.extend({"pmcid": article.pmcid, "fig_id": f, "kind": fig.kind, "facts": fig.facts, "caption": fig.caption}
                     for f, _, fig, _ in article.figures)
    (root / "sample_truth.jsonl").write_text("".join(json.dumps(t, sort_keys=True) + "\n" for t in truth))
    return {"articles": articles, "figures": len(truth), "layout": layout, "path": str(root)}


def make_article(index: int, seed: int, image_size: tuple[int, int], earlier: deque,
                 compound_share: float = 0.0) -> SampleArticle:
    rng = np.random.default_rng([seed, index])
    pmcid, slug = f"PMC{FIRST_PMCID + index}", f"synth-{seed}-{index:05d}"
    count = 0 if rng.random() < 0.02 else int(rng.integers(1, 4))
    figures, media = [], {}
    for n in range(1, count + 1):
        if earlier and rng.random() < 0.03:
            figure, data, ext = earlier[int(rng.integers(len(earlier)))]  # a figure reused from an earlier article
        else:
            size = tuple(int(rng.integers(image_size[0], image_size[1] + 1)) for _ in range(2))
            figure = render_figure(np.random.default_rng([seed, index, n]), size)
            compound = np.random.default_rng([seed, index, n, 1])  # its own stream: other figures stay the same
            if compound.random() < compound_share:
                figure = _compound_figure(compound, image_size)
            ext = FORMATS[figure.kind][int(rng.random() < 0.25)]
            data = encode(figure, ext)
            earlier.append((figure, data, ext))
        name = f"{slug}.g{n:03d}"
        href = name if rng.random() < 0.7 else f"{name}.{ext}"
        figures.append((f"F{n}", href, figure, f"{name}.{ext}"))
        media[f"{name}.{ext}"] = data
    license_index = int(rng.choice(len(LICENSES), p=[p for *_, p in LICENSES]))
    return SampleArticle(pmcid, 30_000_000 + index, f"10.5555/synth.{seed}.{index}", slug, LICENSES[license_index][:2],
                         bool(rng.random() < 0.02), figures, media, bool(rng.random() < 0.3))


def _compound_figure(rng: np.random.Generator, image_size: tuple[int, int]) -> SampleFigure:
    """A compound figure as a SampleFigure: panels of about the corpus's figure size, facts listing each panel."""
    figure = render_compound(rng, panel_size=image_size)
    panels = [{"letter": letter, "box": list(box), "kind": panel.kind, "facts": panel.facts}
              for letter, box, panel in zip(figure.letters, figure.boxes, figure.panels)]
    mention = f"The panels of {{ref}} compare {len(panels)} images."
    return SampleFigure(COMPOUND_KIND, figure.image, figure.caption, mention, {"panels": panels})


def encode(figure: SampleFigure, ext: str) -> bytes:
    buffer = io.BytesIO()
    img = figure.image
    if ext == "jpg":
        img.save(buffer, "JPEG", quality=90)
    elif ext == "gif":
        img.convert("RGB").quantize(64).save(buffer, "GIF")
    elif ext == "tif":
        img.save(buffer, "TIFF", compression="tiff_lzw")
    else:
        img.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


TITLES = {"radiograph": "Chest radiograph", "ct": "Abdominal CT", "histology": "Histology",
          "fluorescence": "Fluorescence microscopy", "bar_chart": "Group comparison", "line_graph": "Time course",
          COMPOUND_KIND: "Panels"}


def _citation(fig_id: str, figure: SampleFigure) -> str:
    xref = f'<xref ref-type="fig" rid="{fig_id}">Figure {fig_id[1:]}</xref>'
    return f"<p>{escape(figure.mention).replace('{ref}', xref)} Further details are given in the Methods.</p>"


def _fig(fig_id: str, href: str, figure: SampleFigure) -> str:
    return (f'<fig id="{fig_id}" position="float"><label>Figure {fig_id[1:]}.</label><caption>'
            f"<title>{TITLES[figure.kind]}.</title><p>{escape(figure.caption)}</p></caption>"
            f"<graphic xlink:href={quoteattr(href)}/></fig>")


def article_xml(article: SampleArticle) -> str:
    code, url = article.license
    license = f'<license xlink:href="{url}"><license-p>Distributed under {code}.</license-p></license>' if url else ""
    cites = "".join(_citation(fig_id, fig) for fig_id, _, fig, _ in article.figures)
    figs = "".join(_fig(fig_id, href, fig) for fig_id, href, fig, _ in article.figures)
    body_figs, floats = ("", f"<floats-group>{figs}</floats-group>") if article.floats else (figs, "")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE article PUBLIC "-//NLM//DTD JATS (Z39.96) Journal Archiving and Interchange DTD v1.2 20190208//EN" '
        '"JATS-archivearticle1.dtd">\n'
        '<article xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:mml="http://www.w3.org/1998/Math/MathML" '
        'article-type="research-article" dtd-version="1.2"><front><journal-meta><journal-title-group>'
        "<journal-title>Journal of Synthetic Biomedical Figures</journal-title></journal-title-group></journal-meta>"
        f'<article-meta><article-id pub-id-type="pmid">{article.pmid}</article-id>'
        f'<article-id pub-id-type="pmc">{article.pmcid[3:]}</article-id>'
        f'<article-id pub-id-type="doi">{article.doi}</article-id>'
        f"<title-group><article-title>Synthetic specimen study {article.slug}</article-title></title-group>"
        f"<permissions>{license}</permissions></article-meta></front>"
        f"<body><sec><title>Results</title>{cites or '<p>This editorial has no figures.</p>'}{body_figs}</sec></body>"
        f"{floats}</article>"
    )


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _write_cloud(root: Path, article: SampleArticle) -> None:
    name = f"{article.pmcid}.1"
    folder = root / name
    folder.mkdir(exist_ok=True)
    files = {f"{name}.xml": article.xml(), f"{name}.pdf": b"%PDF-1.4\n% synthetic placeholder\n", **article.media}
    files[f"{name}.txt"] = "\n".join(fig.caption for _, _, fig, _ in article.figures).encode()
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    url = lambda file_name: f"s3://pmc-oa-opendata/{name}/{file_name}?md5={_md5(files[file_name])}"  # noqa: E731
    metadata = {
        "pmcid": article.pmcid, "version": 1, "pmid": article.pmid, "doi": article.doi, "mid": None,
        "title": f"Synthetic specimen study {article.slug}", "citation": f"J Synth Fig. 2026;{article.slug}",
        "is_pmc_openaccess": True, "is_manuscript": False, "is_historical_ocr": False,
        "is_retracted": article.retracted, "license_code": article.license[0],
        "xml_url": url(f"{name}.xml"), "pdf_url": url(f"{name}.pdf"), "text_url": url(f"{name}.txt"),
        "media_urls": [url(file_name) for file_name in sorted(article.media)],
    }
    text = json.dumps(metadata)
    (folder / f"{name}.json").write_text(text)
    (root / "metadata").mkdir(exist_ok=True)
    (root / "metadata" / f"{name}.json").write_text(text)


def _thumbnails(article: SampleArticle) -> dict[str, bytes]:
    out = {}
    for *_, fig, file_name in article.figures:
        if file_name.endswith(".jpg"):
            buffer = io.BytesIO()
            fig.image.convert("RGB").resize((48, 48)).quantize(32).save(buffer, "GIF")
            out[file_name.removesuffix(".jpg") + ".gif"] = buffer.getvalue()
    return out


def _write_archive(root: Path, article: SampleArticle) -> None:
    files = {f"{article.slug}.nxml": article.xml(), f"{article.slug}.pdf": b"%PDF-1.4\n% synthetic placeholder\n",
             **article.media, **_thumbnails(article)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for file_name in sorted(files):
            info = tarfile.TarInfo(f"{article.pmcid}/{file_name}")
            info.size, info.mtime, info.mode = len(files[file_name]), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(files[file_name]))
    (root / f"{article.pmcid}.tar.gz").write_bytes(gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0))


def _write_folder(root: Path, article: SampleArticle) -> None:
    folder = root / article.pmcid
    folder.mkdir(exist_ok=True)
    (folder / f"{article.slug}.nxml").write_bytes(article.xml())
    for file_name, data in article.media.items():
        (folder / file_name).write_bytes(data)
