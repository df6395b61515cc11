"""What counts as blank text: JSON Schema's (ECMAScript's) whitespace, so that the HTTP API's declared patterns, its
validation and the library's own checks agree on every character (Python's `str.strip` also strips e.g. \\x1c-\\x1f)."""

WHITESPACE = ("\t\n\x0b\x0c\r \xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B)))
              + "\u2028\u2029\u202f\u205f\u3000\ufeff")


def is_blank(text: str) -> bool:
    return not text.strip(WHITESPACE)
