"""Licence codes in the Cloud Service's vocabulary ('CC BY', 'CC BY-NC-ND', 'CC0', ...) from JATS or metadata."""
from __future__ import annotations

import re
from collections.abc import Iterable

UNKNOWN = "unknown"
_CC_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z-]+)", re.I)
_CC_WORDS = (("noncommercial", "NC"), ("non-commercial", "NC"), ("noderiv", "ND"), ("no deriv", "ND"),
             ("sharealike", "SA"), ("share alike", "SA"))


def license_code(texts: Iterable[str | None]) -> str | None:
    """The licence named by the first URL or Creative Commons statement found among `texts`, else None."""
    texts = [t for t in texts if t]
    for text in texts:
        match = _CC_URL.search(text)
        if match:
            kind, name = match.group(1).lower(), match.group(2).lower()
            if kind == "publicdomain":
                return "CC0" if name == "zero" else "PDM"
            return "CC " + name.upper()
    for text in texts:
        lowered = text.lower()
        if "creative commons attribution" in lowered:
            parts = [code for word, code in _CC_WORDS if word in lowered]
            return "CC " + "-".join(["BY", *dict.fromkeys(parts)])
        if "public domain" in lowered:
            return "PDM"
    return None


def normalize_code(code: str | None) -> str | None:
    """'cc by-nc' / 'CC-BY-NC' -> 'CC BY-NC'; other codes (e.g. 'TDM') are upper-cased; empty -> None."""
    if not code or not code.strip():
        return None
    text = re.sub(r"\s+", " ", code.strip().upper())
    match = re.fullmatch(r"CC[ -]?(BY(?:-[A-Z]{2})*|0)", text)
    if match:
        return "CC0" if match.group(1) == "0" else f"CC {match.group(1)}"
    return text


def allowed(code: str, accepted: Iterable[str] | None) -> bool:
    if accepted is None:
        return True
    return code in {normalize_code(c) for c in accepted}
