"""One article to figure-caption pairs, in two steps that the pipeline runs on different resources:
`load_article` (I/O: read the package, parse the JATS, match and fetch the media files) and `build_pairs`
(CPU: decode, convert, resize, encode, filter). Every refusal is counted in the article's report and logged with
the article it belongs to; nothing raises out of here."""
from __future__ import annotations

import logging
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from biomedclip.pmc.filters import FilterConfig, caption_problem, caption_word_count, size_problem
from biomedclip.pmc.images import ImageConfig, NormalizedImage, encode_rgb, normalize_image
from biomedclip.pmc.jats import Article, Figure, parse_article
from biomedclip.pmc.licenses import UNKNOWN, allowed
from biomedclip.pmc.media import match_media
from biomedclip.pmc.panels import Box, PanelConfig, detect_panels, pair_panels, read_panel_letters
from biomedclip.pmc.skips import Skipped
from biomedclip.pmc.sources import Package, Source
from biomedclip.pmc.split import SplitConfig, assign_split
from biomedclip.pmc.subcaptions import panel_inline_refs, split_caption

log = logging.getLogger("biomedclip.pmc")
KEY_SEPARATOR = "\x1f"
PANEL_MODES = ("off", "add", "replace")  # compound figures: whole only | whole and panels | panels instead


@dataclass(frozen=True)
class PairConfig:
    images: ImageConfig = field(default_factory=ImageConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    panels: str = "add"
    panel_detection: PanelConfig = field(default_factory=PanelConfig)

    def __post_init__(self):
        if self.panels not in PANEL_MODES:
            raise ValueError(f"panels must be one of {PANEL_MODES}, not {self.panels!r}")


@dataclass
class ArticleReport:
    """What happened to one article; small, kept per article in the pipeline's unit markers."""

    ref: str
    article_id: str = ""
    pmcid: str | None = None
    figures: int = 0
    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, problem: Skipped, what: str) -> None:
        self.skipped[problem.reason] += 1
        log.warning("skip %s of %s: %s (%s)", what, self.article_id, problem.reason, problem.detail)

    def to_dict(self) -> dict:
        return {**asdict(self), "skipped": dict(self.skipped)}


@dataclass
class LoadedArticle:
    report: ArticleReport
    article: Article | None = None
    package: Package | None = None
    license: str = UNKNOWN
    media: dict[str, bytes | Skipped] = field(default_factory=dict)  # graphic href -> file bytes or why not


def pair_key(pmcid: str, fig_id: str, ref: str) -> str:
    """Orders pairs by (pmcid, fig_id), then by source reference; of duplicate images the smallest key is kept."""
    return KEY_SEPARATOR.join((pmcid, fig_id, ref))


def load_article(source: Source, ref: str) -> LoadedArticle:
    loaded = LoadedArticle(ArticleReport(ref))
    try:
        _load(source, ref, loaded)
    except Skipped as problem:
        loaded.article = None
        loaded.report.skip(problem, "article")
    except Exception as err:  # noqa: BLE001 - a bug must not stop the other articles; it is logged and counted
        loaded.article = None
        loaded.report.skip(_internal_error(err), "article")
    return loaded


def _load(source: Source, ref: str, loaded: LoadedArticle) -> None:
    report = loaded.report
    report.article_id = source.article_id(ref)
    package = source.open(ref)
    for problem in package.problems:
        report.skip(problem, "package member")
    article = parse_article(package.xml)
    report.pmcid = package.metadata.pmcid or article.pmcid or package.article_id
    loaded.license = package.metadata.license or article.license or UNKNOWN
    if not allowed(loaded.license, source.config.licenses):
        raise Skipped("license_excluded", f"licence {loaded.license!r} is not in {source.config.licenses}")
    report.figures = len(article.figures)
    if not article.figures:
        raise Skipped("no_figures", "the article has no <fig> element")
    loaded.package, loaded.article = package, article
    wanted = {h: match_media(h, package.media_names) for f in article.figures for h in f.hrefs}
    fetched = package.fetch(sorted({name for name in wanted.values() if name}))
    loaded.media = {
        h: fetched[name] if name else Skipped("missing_image", f"no media file matches href {h!r}")
        for h, name in wanted.items()
    }


def build_pairs(loaded: LoadedArticle, config: PairConfig) -> list[dict]:
    """The pair rows of a loaded article (empty if it was skipped), in document order."""
    if loaded.article is None:
        return []
    rows = []
    for figure in loaded.article.figures:
        rows.extend(_figure_rows(loaded, figure, config))
    loaded.report.pairs = sum(row["publish"] for row in rows)
    return rows


def _figure_rows(loaded: LoadedArticle, figure: Figure, config: PairConfig) -> list[dict]:
    report = loaded.report
    if not figure.hrefs:
        report.skip(Skipped("no_graphic", "the <fig> has no <graphic>"), f"figure {figure.fig_id}")
        return []
    rows = []
    for n, href in enumerate(figure.hrefs, 1):
        fig_id = figure.fig_id if n == 1 else f"{figure.fig_id}#{n}"
        try:
            rows.extend(_pair_rows(loaded, figure, fig_id, href, config))
        except Skipped as problem:
            report.skip(problem, f"figure {fig_id} ({href})")
        except Exception as err:  # noqa: BLE001
            report.skip(_internal_error(err), f"figure {fig_id}")
    return rows


def _pair_rows(loaded: LoadedArticle, figure: Figure, fig_id: str, href: str, config: PairConfig) -> list[dict]:
    """The whole figure's row, then its panels' rows when it is a compound figure split with certainty."""
    problem = caption_problem(figure.caption, config.filters)
    if problem:
        raise Skipped("caption_too_short", problem)
    data = loaded.media[href]
    if isinstance(data, Skipped):
        raise data
    image = normalize_image(data, config.images)
    problem = size_problem(image.orig_width, image.orig_height, config.filters)
    if problem:
        raise Skipped("image_too_small", problem)
    report, meta, article = loaded.report, loaded.package.metadata, loaded.article
    whole = {
        "pmcid": report.pmcid,
        "pmid": meta.pmid or article.pmid,
        "fig_id": fig_id,
        "label": figure.label,
        "caption": figure.caption,
        "inline_refs": "\n".join(figure.inline_refs),
        "image": image.jpeg,
        "width": image.width,
        "height": image.height,
        "orig_width": image.orig_width,
        "orig_height": image.orig_height,
        "license": loaded.license,
        "split": assign_split(report.pmcid, config.split),
        "sha256": image.sha256,
        "doi": meta.doi or article.doi,
        "panel": None,
        "parent_fig_id": None,
        "panel_box": None,
        "pair_key": pair_key(report.pmcid, fig_id, report.ref),
        "caption_words": caption_word_count(figure.caption),
        "parent_key": pair_key(report.pmcid, fig_id, report.ref),
        "publish": True,
    }
    if config.panels == "off":
        return [whole]
    try:
        panels = _panel_rows(loaded, whole, image, config)
    except Exception as err:  # noqa: BLE001 - a bug in the panel split must not lose the whole figure
        problem = Skipped("internal_error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
        loaded.report.skip(problem, f"panels of figure {fig_id}")
        panels = []
    if panels and config.panels == "replace":
        whole["publish"] = False
    return [whole, *panels]


def _panel_rows(loaded: LoadedArticle, whole: dict, image: NormalizedImage, config: PairConfig) -> list[dict]:
    """One row per panel paired with its sub-caption; none when the caption names no panels or the pairing is
    uncertain. Panels are cut from the normalised image; the split, licence and identifiers are the parent's, and of
    its citing sentences those that name this panel or no panel."""
    split = split_caption(whole["caption"])
    if split is None:
        return []
    pixels = np.asarray(image.rgb)
    boxes = detect_panels(pixels, config.panel_detection)
    ocr = config.panel_detection.ocr and len(boxes) > 1
    letters = read_panel_letters(pixels, boxes) if ocr else [None] * len(boxes)
    rows = []
    for letter, box in pair_panels(boxes, letters, split.letters) or []:
        try:
            rows.append(_panel_row(loaded, whole, image, letter, box, split.panels[letter], config))
        except Skipped as problem:
            loaded.report.skip(problem, f"panel {letter} of figure {whole['fig_id']}")
    return rows


def _panel_row(loaded: LoadedArticle, whole: dict, image: NormalizedImage, letter: str, box: Box, caption: str,
               config: PairConfig) -> dict:
    scale_x, scale_y = image.orig_width / image.width, image.orig_height / image.height
    orig_box = [round(box[0] * scale_x), round(box[1] * scale_y), round(box[2] * scale_x), round(box[3] * scale_y)]
    orig_width, orig_height = orig_box[2] - orig_box[0], orig_box[3] - orig_box[1]
    problem = size_problem(orig_width, orig_height, config.filters)
    if problem:
        raise Skipped("panel_too_small", problem)
    problem = caption_problem(caption, config.filters)
    if problem:
        raise Skipped("panel_caption_too_short", problem)
    panel = encode_rgb(image.rgb.crop(box), orig_width, orig_height, config.images)
    fig_id = f"{whole['fig_id']}/{letter}"
    return {
        **whole,
        "fig_id": fig_id,
        "caption": caption,
        "inline_refs": "\n".join(panel_inline_refs(whole["inline_refs"].split("\n"), letter)),
        "image": panel.jpeg,
        "width": panel.width,
        "height": panel.height,
        "orig_width": orig_width,
        "orig_height": orig_height,
        "sha256": panel.sha256,
        "panel": letter,
        "parent_fig_id": whole["fig_id"],
        "panel_box": orig_box,
        "pair_key": pair_key(whole["pmcid"], fig_id, loaded.report.ref),
        "caption_words": caption_word_count(caption),
        "publish": True,
    }


def _internal_error(err: Exception) -> Skipped:
    """A bug met on one article or figure, with its traceback for the skip report."""
    return Skipped("internal_error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
