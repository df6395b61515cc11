"""Why an article, a figure or an archive member was left out: one reason code per case, counted in the manifest."""
from __future__ import annotations

REASONS: dict[str, str] = {
    # whole articles
    "read_error": "the article's files could not be read",
    "metadata_invalid": "the Cloud Service metadata JSON is not valid",
    "retracted": "the article is marked retracted",
    "license_excluded": "the article's licence is not in the configured list",
    "corrupt_archive": "the .tar.gz package is corrupt or not gzip",
    "archive_too_large": "the package exceeds the configured size limit",
    "no_article_xml": "no JATS <article> XML in the package",
    "xml_too_large": "the XML exceeds the configured size limit",
    "malformed_xml": "the XML is not well-formed (or nests too deep)",
    "forbidden_xml": "the XML declares entities (expansion bombs, external entities)",
    "no_figures": "the article has no <fig>",
    "internal_error": "an unexpected error while processing the article (a bug: see the log)",
    # archive members and media references
    "unsafe_member": "an archive member or media path that is a link, absolute or escapes with '..'",
    "member_too_large": "an archive member exceeds the configured size limit",
    # figures (one count per graphic)
    "no_graphic": "a <fig> without a <graphic>",
    "caption_too_short": "caption shorter than the configured minimum",
    "missing_image": "no media file matches the graphic's href",
    "empty_image": "zero-byte image file",
    "image_too_large": "image file exceeds the configured byte limit",
    "unsupported_format": "image format outside the allow-list (e.g. EPS, PDF)",
    "not_an_image": "the file is not a decodable image (e.g. text named .jpg)",
    "truncated_image": "the image data ends early",
    "corrupt_image": "the image data is invalid",
    "decompression_bomb": "the image declares more pixels than allowed",
    "checksum_mismatch": "the media file's MD5 differs from the metadata",
    "image_too_small": "the image's shorter side is below the configured minimum",
    "duplicate_image": "the same decoded pixels were already kept for a pair with a smaller (pmcid, fig_id)",
}


class Skipped(Exception):
    """Raised to leave one item out; `reason` is a key of REASONS and `detail` says what was wrong."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def safe_member(key: str) -> str:
    """`biomedclip.io.safe_key`, refusing as Skipped('unsafe_member') so the article's report counts it."""
    from biomedclip.io.trees import UnsafeKey, safe_key

    try:
        return safe_key(key)
    except UnsafeKey as err:
        raise Skipped("unsafe_member", str(err)) from None
