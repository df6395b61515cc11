"""A compound figure's caption split into its shared lead text and one sub-caption per panel letter.

Recognised panel markers, where a sentence or clause begins (the caption's start, or after '.', ';', ':'; a
parenthesised marker also after ','): "(A) ...", "(a) ...", "A, ...", "A: ...", "A. ...", "Panel A: ...", ranges
"(A-C)", "(C)-(E)", "A–C," and lists "(a,b)", "(A and B)". Markers in running text ("control (A) and treated (B)
mice") are not panel starts. Markers that do not continue the run a, b, c, ... are mentions and skipped; fewer than
two panel markers: the caption is not split (uncertain). Each sub-caption keeps the lead's first sentence (the
figure's title or topic) before its own text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_LETTERS = r"[A-Za-z](?:\s*(?:[-–—‐~]|,|and|&)\s*[A-Za-z])*"
_BARE_LETTERS = r"[A-Z](?:\s*(?:[-–—‐~]|and)\s*[A-Z])?"
_MARKER = re.compile(
    r"(?:^|(?<=[.;:,]\s))(?:"
    rf"Panels?\s+\(?(?P<panel>{_LETTERS})\)?\s*[:.,]?"
    rf"|\((?P<paren>{_LETTERS}(?:\)\s*[-–—‐~]\s*\({_LETTERS})?)\)"  # also "(C)-(E)"
    rf"|(?P<bare>{_BARE_LETTERS})[,:.)]"
    r")(?=\s)"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(])")
# "Figure 2B", "Fig. 2A-C", "Figs. 3(a,b)": the letters after a figure number.
_PANEL_CITATION = re.compile(rf"\bFig(?:ure)?s?\.?\s*\d+\s*\(?(?P<letters>{_LETTERS})(?![A-Za-z])")


@dataclass(frozen=True)
class SplitCaption:
    lead: str  # the text before the first panel marker
    panels: dict[str, str]  # panel letter (upper case) -> sub-caption, in letter order

    @property
    def letters(self) -> list[str]:
        return list(self.panels)


@dataclass(frozen=True)
class _Marker:
    start: int
    end: int
    letters: tuple[str, ...]
    bare: bool


def expand_letters(text: str) -> tuple[str, ...]:
    """'A-C' -> (A, B, C); 'a,b' and 'A and B' -> both; as written (case kept)."""
    letters: list[str] = []
    for part in re.split(r"\s*(?:,|and|&)\s*", re.sub(r"[()]", "", text).strip()):
        ends = re.split(r"\s*[-–—‐~]\s*", part)
        if len(ends) == 2 and ends[0] and ends[1] and ends[0].lower() <= ends[1].lower():
            letters.extend(chr(c) for c in range(ord(ends[0]), ord(ends[1]) + 1))
        else:
            letters.extend(e for e in ends if e)
    return tuple(letters)


def _markers(caption: str) -> list[_Marker]:
    found = []
    for match in _MARKER.finditer(caption):
        kind = match.lastgroup
        if kind == "bare" and caption[max(0, match.start() - 2):match.start()].startswith(","):
            continue  # "x, A, y" is a list, not a panel start
        if kind == "bare" and match.group(0).endswith(".") and not caption[match.end():].lstrip()[:1].isupper():
            continue  # "A. thaliana": an abbreviation
        found.append(_Marker(match.start(), match.end(), expand_letters(match.group(kind)), kind == "bare"))
    return found


def _in_sequence(markers: list[_Marker]) -> list[_Marker]:
    """The markers that continue the run a, b, c, ... (a repeated or out-of-order letter is a mention, not a panel
    start: "a total of (C) 3, (D) 9 cells")."""
    kept, expected = [], "a"
    for marker in markers:
        letters = [letter.lower() for letter in marker.letters]
        if letters == [chr(ord(expected) + i) for i in range(len(letters))]:
            kept.append(marker)
            expected = chr(ord(letters[-1]) + 1)
    return kept


def split_caption(caption: str) -> SplitCaption | None:
    """The caption's lead and per-panel sub-captions, or None when it does not describe lettered panels."""
    found = _markers(caption)
    markers = _in_sequence(found)
    if len(markers) < 2:
        markers = _in_sequence([m for m in found if not m.bare])  # bare letters are the likeliest false markers
        if len(markers) < 2:
            return None
    lead = caption[:markers[0].start].strip()
    title = _SENTENCE_END.split(lead, maxsplit=1)[0].strip() if lead else ""
    panels = {}
    for marker, following in zip(markers, [*markers[1:], None]):
        text = caption[marker.end:following.start if following else len(caption)].strip().rstrip(";,").strip()
        if not text:
            return None
        for letter in marker.letters:
            panels[letter.upper()] = f"{title} {text}".strip()
    return SplitCaption(lead, panels)


def cited_panels(sentence: str) -> set[str]:
    """The panel letters (upper case) a citing sentence names after a figure number; empty if it cites whole figures."""
    return {letter.upper() for match in _PANEL_CITATION.finditer(sentence)
            for letter in expand_letters(match.group("letters"))}


def panel_inline_refs(sentences: list[str], letter: str) -> list[str]:
    """Of a figure's citing sentences, those about this panel: naming it, or naming no panel at all."""
    return [s for s in sentences if not (cited := cited_panels(s)) or letter.upper() in cited]
