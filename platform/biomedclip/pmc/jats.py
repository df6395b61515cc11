"""A JATS article's identifiers, licence and figures: label, flattened caption, graphic hrefs and citing sentences.

Every <fig> in the document counts (body, back-matter <floats-group>, members of <fig-group>, sub-articles).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from biomedclip.pmc.jats_text import citing_sentences, clean, flat_text, flatten
from biomedclip.pmc.licenses import license_code
from biomedclip.pmc.safe_xml import parse_xml
from biomedclip.pmc.skips import Skipped

# Paragraph containers whose text is not running text citing figures.
NOT_RUNNING_TEXT = frozenset({"fig", "fig-group", "table-wrap", "caption", "ref-list", "journal-meta", "contrib-group"})


@dataclass(frozen=True)
class Figure:
    fig_id: str
    label: str | None
    caption: str
    hrefs: tuple[str, ...]
    inline_refs: tuple[str, ...]


@dataclass(frozen=True)
class Article:
    pmcid: str | None
    pmid: str | None
    doi: str | None
    license: str | None
    figures: tuple[Figure, ...]


def parse_article(xml: bytes) -> Article:
    root = parse_xml(xml)
    if root.tag != "article":
        raise Skipped("no_article_xml", f"the root element is <{root.tag}>, not <article>")
    meta = root.find("front/article-meta")
    ids = _article_ids(meta)
    return Article(
        pmcid=_pmcid(ids),
        pmid=ids.get("pmid"),
        doi=ids.get("doi"),
        license=_license(meta),
        figures=tuple(_figures(root)),
    )


def href(elem: Element) -> str | None:
    value = elem.get("href")
    return value.strip() if value and value.strip() else None


def _article_ids(meta: Element | None) -> dict[str, str]:
    ids: dict[str, str] = {}
    for elem in meta.findall("article-id") if meta is not None else []:
        kind, value = elem.get("pub-id-type", ""), clean("".join(elem.itertext()))
        if value:
            ids.setdefault(kind, value)
    return ids


def _pmcid(ids: dict[str, str]) -> str | None:
    for kind in ("pmcid", "pmc", "pmcaid"):
        digits = re.sub(r"^PMC", "", ids.get(kind, ""), flags=re.I)
        if digits.isdigit():
            return f"PMC{digits}"
    return None


def _license(meta: Element | None) -> str | None:
    if meta is None:
        return None
    texts: list[str | None] = []
    for lic in meta.iter("license"):
        texts.append(href(lic))
        texts.extend("".join(ref.itertext()) for ref in lic.iter("license_ref"))
        texts.extend(href(link) for link in lic.iter("ext-link"))
        texts.append(lic.get("license-type"))
        texts.append(flat_text(lic))
    texts.extend(flat_text(statement) for statement in meta.iter("copyright-statement"))
    return license_code(texts)


def _figures(root: Element) -> list[Figure]:
    figs = list(root.iter("fig"))
    ids = _figure_ids(figs)
    group_members = {
        group.get("id"): [ids[id(f)] for f in group.iter("fig")] for group in root.iter("fig-group") if group.get("id")
    }
    cited = _citations(root, set(ids.values()), group_members)
    return [
        Figure(
            fig_id=ids[id(fig)],
            label=flat_text(fig.find("label")) or None,
            caption=flat_text(fig.find("caption")),
            hrefs=tuple(_graphic_hrefs(fig)),
            inline_refs=tuple(dict.fromkeys(cited.get(ids[id(fig)], []))),
        )
        for fig in figs
    ]


def _figure_ids(figs: list[Element]) -> dict[int, str]:
    """The XML id of each figure; figures without one (or repeating one) get `fig{n}` from document order."""
    ids, seen = {}, set()
    for n, fig in enumerate(figs, 1):
        fig_id = fig.get("id") or f"fig{n}"
        if fig_id in seen:
            fig_id = f"{fig_id}-{n}"
        seen.add(fig_id)
        ids[id(fig)] = fig_id
    return ids


def _graphic_hrefs(fig: Element) -> list[str]:
    """The figure's own graphics in order; of an <alternatives> group only the first graphic."""
    hrefs = []
    for child in fig:
        if child.tag == "alternatives":
            child = next(child.iter("graphic"), None)
        if child is not None and child.tag == "graphic" and href(child):
            hrefs.append(href(child))
    return hrefs


def _citations(root: Element, fig_ids: set[str], groups: dict[str, list[str]]) -> dict[str, list[str]]:
    cited: dict[str, list[str]] = {}
    for paragraph in _running_paragraphs(root):
        for rid, sentence in citing_sentences(flatten(paragraph, track_refs=True)):
            targets = groups.get(rid, [rid] if rid in fig_ids else [])
            for fig_id in targets:
                cited.setdefault(fig_id, []).append(sentence)
    return cited


def _running_paragraphs(elem: Element):
    for child in elem:
        if child.tag in NOT_RUNNING_TEXT:
            continue
        if child.tag == "p":
            yield child
        else:
            yield from _running_paragraphs(child)
