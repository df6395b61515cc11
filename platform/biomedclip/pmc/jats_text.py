"""JATS mixed content flattened to clean text, and the sentences that cite a figure.

Inline markup (italic, bold, sub/sup, xref, ext-link, ...) is kept as its text. A formula with a TeX alternative
becomes `$tex$` (the LaTeX document wrapper PMC adds is stripped); a formula with MathML only becomes its alttext or
the text of its tokens. Block elements (title, p, list items) are separated by a space.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element

BLOCK_TAGS = frozenset({"title", "p", "list-item", "def-item", "disp-quote", "label", "sec", "list", "caption"})
# Content that is not running text of the element being flattened.
SKIPPED_TAGS = frozenset({
    "fig", "fig-group", "table-wrap", "table-wrap-group", "graphic", "inline-graphic", "media", "object-id",
    "supplementary-material", "alt-text", "long-desc", "fn", "ref-list",
})
FORMULA_TAGS = frozenset({"inline-formula", "disp-formula"})
_WS = re.compile(r"\s+")
_TEX_BODY = re.compile(r"\\begin\{document\}(.*?)\\end\{document\}", re.S)


def clean(text: str) -> str:
    return _WS.sub(" ", text).strip()


@dataclass
class Flat:
    """Flattened text plus, when tracked, the offsets where cross-references point at ids."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    refs: list[tuple[int, str]] = field(default_factory=list)

    def add(self, text: str | None) -> None:
        if text:
            self.parts.append(text)
            self.length += len(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def flatten(elem: Element, *, track_refs: bool = False) -> Flat:
    flat = Flat()
    _walk_children(elem, flat, track_refs)
    return flat


def flat_text(elem: Element | None) -> str:
    return "" if elem is None else clean(flatten(elem).text)


def _walk_children(elem: Element, flat: Flat, track_refs: bool) -> None:
    flat.add(elem.text)
    for child in elem:
        _walk(child, flat, track_refs)
        flat.add(child.tail)


def _walk(elem: Element, flat: Flat, track_refs: bool) -> None:
    tag = elem.tag
    if tag in SKIPPED_TAGS:
        return
    if tag in FORMULA_TAGS or tag in ("math", "tex-math"):
        flat.add(formula_text(elem))
        return
    if track_refs and tag == "xref":
        for rid in (elem.get("rid") or "").split():
            flat.refs.append((flat.length, rid))
    _walk_children(elem, flat, track_refs)
    if tag in BLOCK_TAGS:
        flat.add(" ")


def formula_text(elem: Element) -> str:
    """The TeX of a formula when it has one, else its MathML alttext or token text."""
    tex = next(elem.iter("tex-math"), None)
    if tex is not None:
        return f" ${tex_body(''.join(tex.itertext()))}$ "
    math = next(elem.iter("math"), None)
    if math is not None and math.get("alttext"):
        return f" {math.get('alttext').strip()} "
    return "".join(math.itertext() if math is not None else elem.itertext())


def tex_body(tex: str) -> str:
    match = _TEX_BODY.search(tex)
    body = match.group(1) if match else tex
    return clean(body.strip().strip("$").strip())


# Words ending in a period that do not end a sentence in scientific prose.
ABBREVIATIONS = frozenset({
    "fig", "figs", "al", "e.g", "i.e", "eq", "eqs", "ref", "refs", "no", "nos", "vs", "ca", "cf", "approx", "resp",
    "suppl", "sup", "supp", "tab", "vol", "dr", "mr", "mrs", "ms", "prof", "st", "sp", "spp", "var", "subsp", "min",
    "max",
})
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*(\s+)(?=[A-Z0-9(\[\"“‘])")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences of `text`, not splitting after common abbreviations or initials."""
    spans, start = [], 0
    for match in _BOUNDARY.finditer(text):
        words = text[start:match.start()].split()
        last = words[-1].lstrip("([").lower() if words else ""
        if last in ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
            continue
        spans.append((start, match.start(1)))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def citing_sentences(flat: Flat) -> list[tuple[str, str]]:
    """(rid, sentence) for each cross-reference in `flat`, in document order."""
    if not flat.refs:
        return []
    text = flat.text
    spans = sentence_spans(text)
    starts = [s for s, _ in spans]
    out = []
    for offset, rid in flat.refs:
        i = max(0, bisect.bisect_right(starts, offset) - 1)
        sentence = clean(text[spans[i][0]:spans[i][1]]) if spans else ""
        if sentence:
            out.append((rid, sentence))
    return out
