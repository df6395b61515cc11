"""One article to figure-caption pairs, in two steps that the pipeline runs on different resources:
`load_article` (I/O: read the package, parse the JATS, match and fetch the media files) and `build_pairs`
(CPU: decode, convert, resize, encode, filter). Every refusal is counted in the article's report and logged with
the article it belongs to; nothing raises out of here."""
from __future__ import annotations

import logging
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field

from biomedclip.pmc.filters import FilterConfig, caption_problem, caption_word_count, size_problem
from biomedclip.pmc.images import ImageConfig, normalize_image
from biomedclip.pmc.jats import Article, Figure, parse_article
from biomedclip.pmc.licenses import UNKNOWN, allowed
from biomedclip.pmc.media import match_media
from biomedclip.pmc.skips import Skipped
from biomedclip.pmc.sources import Package, Source
from biomedclip.pmc.split import SplitConfig, assign_split

log = logging.getLogger("biomedclip.pmc")
KEY_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class PairConfig:
    images: ImageConfig = field(default_factory=ImageConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


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
    loaded.report.pairs = len(rows)
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
            rows.append(_pair_row(loaded, figure, fig_id, href, config))
        except Skipped as problem:
            report.skip(problem, f"figure {fig_id} ({href})")
        except Exception as err:  # noqa: BLE001
            report.skip(_internal_error(err), f"figure {fig_id}")
    return rows


def _pair_row(loaded: LoadedArticle, figure: Figure, fig_id: str, href: str, config: PairConfig) -> dict:
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
    return {
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
        "pair_key": pair_key(report.pmcid, fig_id, report.ref),
        "caption_words": caption_word_count(figure.caption),
    }


def _internal_error(err: Exception) -> Skipped:
    """A bug met on one article or figure, with its traceback for the skip report."""
    return Skipped("internal_error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
