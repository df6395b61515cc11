"""The three PMC source layouts, each listing article references in a stable order and opening one article as a
`Package` (its JATS XML, the names of its media files, and a way to fetch some of them).

- "s3": the PMC Cloud Service layout (s3://pmc-oa-opendata since 2026, or a local/S3 mirror): per-article metadata
  `metadata/PMC{id}.{version}.json` (only the latest version of each PMCID is listed) pointing at the XML and media
  in `PMC{id}.{version}/`.
- "tar": legacy OA packages `PMCxxxxxxx.tar.gz`, read in memory (see archives.py).
- "folders": a directory of article folders, each holding the XML and media files.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from biomedclip.pmc.archives import ArchiveLimits, read_tar_gz
from biomedclip.pmc.licenses import normalize_code
from biomedclip.pmc.media import basename
from biomedclip.pmc.skips import Skipped
from biomedclip.pmc.stores import LocalStore, S3Store, key_from_url, open_store, safe_key

Layout = Literal["auto", "s3", "tar", "folders"]
_METADATA_KEY = re.compile(r"metadata/(PMC\d+)\.(\d+)\.json$")
_ARTICLE_ROOT = re.compile(rb"<(?:[\w.-]+:)?article[\s>]")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
MAX_METADATA_BYTES = 2**20


@dataclass(frozen=True)
class SourceConfig:
    uri: str = ""
    layout: Layout = "auto"
    s3_endpoint: str | None = None
    anonymous: bool = True  # unsigned S3 requests, as the public PMC bucket allows
    skip_retracted: bool = True
    licenses: list[str] | None = None  # e.g. ["CC BY", "CC0"]; None keeps every licence
    max_xml_bytes: int = 64 * 2**20
    max_media_bytes: int = 64 * 2**20
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)


@dataclass(frozen=True)
class SourceMetadata:
    pmcid: str | None = None
    pmid: str | None = None
    doi: str | None = None
    license: str | None = None
    retracted: bool = False


@dataclass
class Package:
    article_id: str
    xml: bytes
    media_names: list[str]
    fetch: Callable[[list[str]], dict[str, bytes | Skipped]]
    metadata: SourceMetadata = field(default_factory=SourceMetadata)
    problems: list[Skipped] = field(default_factory=list)


class Source:
    """A layout over a store; picklable, so Ray workers can open articles themselves."""

    def __init__(self, config: SourceConfig):
        self.config = config
        self.store = open_store(config.uri, config.s3_endpoint, config.anonymous)
        self.layout = config.layout if config.layout != "auto" else detect_layout(self.store)

    def list_refs(self, limit: int | None = None) -> Iterator[str]:
        refs = {"s3": self._cloud_refs, "tar": self._archive_refs, "folders": self.store.list_dirs}[self.layout]()
        return itertools.islice(refs, limit)

    def article_id(self, ref: str) -> str:
        """A readable id for the article behind `ref`, known before it is opened (for reports and logs)."""
        return basename(ref).removesuffix(".json").removesuffix(".tar.gz").removesuffix(".tgz")

    def open(self, ref: str) -> Package:
        opener = {"s3": self._open_cloud, "tar": self._open_archive, "folders": self._open_folder}[self.layout]
        try:
            return opener(ref)
        except OSError as err:  # the stores' messages name the file
            raise Skipped("read_error", str(err)) from None

    # --- Cloud Service layout -------------------------------------------------------------------------------------
    def _cloud_refs(self) -> Iterator[str]:
        """Metadata keys, one per PMCID (its highest version); keys of one PMCID are adjacent in sorted order."""
        best: tuple[str, int, str] | None = None
        for key in self.store.list("metadata/", ".json"):
            match = _METADATA_KEY.fullmatch(key)
            if not match:
                continue
            pmcid, version = match.group(1), int(match.group(2))
            if best and best[0] != pmcid:
                yield best[2]
                best = None
            if best is None or version > best[1]:
                best = (pmcid, version, key)
        if best:
            yield best[2]

    def _open_cloud(self, ref: str) -> Package:
        meta = _cloud_metadata(self.store.read(ref, MAX_METADATA_BYTES), ref)
        if meta["retracted"] and self.config.skip_retracted:
            raise Skipped("retracted", f"{ref} is marked is_retracted")
        xml = self._read_xml(key_from_url(meta["xml_url"]))
        media, problems = {}, []
        for url in meta["media_urls"]:
            try:
                media[basename(url)] = (safe_key(key_from_url(url)), _md5_param(url))
            except Skipped as problem:
                problems.append(problem)
        return Package(self.article_id(ref), xml, sorted(media), lambda names: self._fetch_cloud(media, names),
                       SourceMetadata(meta["pmcid"], meta["pmid"], meta["doi"], meta["license"], meta["retracted"]),
                       problems)

    def _fetch_cloud(self, media: dict[str, tuple[str, str | None]], names: list[str]) -> dict[str, bytes | Skipped]:
        out: dict[str, bytes | Skipped] = {}
        for name in names:
            key, md5 = media[name]
            out[name] = self._read_media(key)
            if md5 and isinstance(out[name], bytes) and hashlib.md5(out[name]).hexdigest() != md5:
                out[name] = Skipped("checksum_mismatch", f"{self.store.describe(key)} does not match md5={md5}")
        return out

    # --- legacy tar.gz packages -----------------------------------------------------------------------------------
    def _archive_refs(self) -> Iterator[str]:
        return (key for key in self.store.list() if key.endswith(_ARCHIVE_SUFFIXES))

    def _open_archive(self, ref: str) -> Package:
        data = self._read_archive(ref)
        listing = read_tar_gz(data, _is_xml, self.config.archive)
        xml_name = _article_xml_name(listing.files)

        def fetch(names: list[str]) -> dict[str, bytes | Skipped]:
            wanted = set(names)
            try:
                files = read_tar_gz(data, wanted.__contains__, self.config.archive).files
            except Skipped as err:
                return dict.fromkeys(names, err)
            too_large = f"larger than {self.config.archive.max_member_bytes} bytes"
            return {n: files.get(n, Skipped("image_too_large", f"member {n} is {too_large}")) for n in names}

        media = [n for n in listing.names if n != xml_name]
        return Package(self.article_id(ref), listing.files[xml_name], media, fetch, problems=listing.problems)

    def _read_archive(self, ref: str) -> bytes:
        return _renamed(self.store.read, ref, self.config.archive.max_archive_bytes, "archive_too_large")

    # --- a directory of article folders ---------------------------------------------------------------------------
    def _open_folder(self, ref: str) -> Package:
        names = [key.rpartition("/")[2] for key in self.store.list(f"{ref}/") if key.count("/") == 1]
        xml_files = {n: b"" for n in names if _is_xml(n)}
        if not xml_files:
            raise Skipped("no_article_xml", f"{self.store.describe(ref)} holds no .nxml/.xml file")
        for name in xml_files:
            xml_files[name] = self._read_xml(f"{ref}/{name}")
        xml_name = _article_xml_name(xml_files)
        media = [n for n in names if n not in xml_files]
        fetch = lambda wanted: {n: self._read_media(f"{ref}/{n}") for n in wanted}  # noqa: E731
        return Package(self.article_id(ref), xml_files[xml_name], media, fetch)

    # --- shared -----------------------------------------------------------------------------------------------------
    def _read_xml(self, key: str) -> bytes:
        return _renamed(self.store.read, key, self.config.max_xml_bytes, "xml_too_large")

    def _read_media(self, key: str) -> bytes | Skipped:
        try:
            return self.store.read(key, self.config.max_media_bytes)
        except Skipped as err:
            return Skipped("image_too_large", err.detail) if err.reason == "member_too_large" else err
        except FileNotFoundError as err:
            return Skipped("missing_image", str(err))
        except OSError as err:
            return Skipped("read_error", str(err))


def _renamed(read: Callable[[str, int], bytes], key: str, limit: int, too_large: str) -> bytes:
    """read(key, limit), with the store's generic size refusal renamed for what was being read."""
    try:
        return read(key, limit)
    except Skipped as err:
        if err.reason == "member_too_large":
            raise Skipped(too_large, err.detail) from None
        raise


def detect_layout(store: LocalStore | S3Store) -> str:
    if next(store.list("metadata/", ".json"), None) is not None:
        return "s3"
    if any(key.endswith(_ARCHIVE_SUFFIXES) for key in itertools.islice(store.list(), 1000)):
        return "tar"
    return "folders"


def _is_xml(name: str) -> bool:
    return name.lower().endswith((".nxml", ".xml"))


def _article_xml_name(files: dict[str, bytes]) -> str:
    """The JATS article among the XML files (.nxml first): the one whose root is <article>."""
    if not files:
        raise Skipped("no_article_xml", "the package holds no .nxml/.xml file")
    ordered = sorted(files, key=lambda n: (not n.lower().endswith(".nxml"), n))
    return next((n for n in ordered if _ARTICLE_ROOT.search(files[n][:16384])), ordered[0])


def _md5_param(url: str) -> str | None:
    match = re.search(r"[?&]md5=([0-9a-fA-F]{32})", url)
    return match.group(1).lower() if match else None


def _cloud_metadata(data: bytes, ref: str) -> dict:
    """The fields used from a Cloud Service metadata JSON, type-checked."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Skipped("metadata_invalid", f"{ref}: not JSON: {err}") from None
    if not isinstance(raw, dict):
        raise Skipped("metadata_invalid", f"{ref}: expected a JSON object")

    def field_of(name: str, types: tuple[type, ...], required: bool = False):
        value = raw.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
            expected = "/".join(t.__name__ for t in types)
            raise Skipped("metadata_invalid", f"{ref}: field {name!r} is {value!r}, expected {expected}")
        return value

    media = field_of("media_urls", (list,)) or []
    if not all(isinstance(url, str) for url in media):
        raise Skipped("metadata_invalid", f"{ref}: field 'media_urls' must be a list of strings")
    pmid = field_of("pmid", (int, str))
    return {
        "pmcid": field_of("pmcid", (str,), required=True),
        "pmid": None if pmid is None else str(pmid),
        "doi": field_of("doi", (str,)),
        "license": normalize_code(field_of("license_code", (str,))),
        "retracted": bool(field_of("is_retracted", (bool,))),
        "xml_url": field_of("xml_url", (str,), required=True),
        "media_urls": media,
    }
