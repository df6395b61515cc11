"""Legacy PMC OA packages (PMCxxxxxxx.tar.gz) read in memory, never extracted to disk.

One streaming pass keeps the members wanted (the XML and image files) as bytes keyed by base name. Links, devices,
absolute names and names with '..' are refused and reported; sizes, member counts and the unpacked total are bounded,
so a gzip bomb costs time up to the limit and no memory.
"""
from __future__ import annotations

import gzip
import io
import posixpath
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from biomedclip.pmc.skips import Skipped, safe_member


@dataclass(frozen=True)
class ArchiveLimits:
    max_archive_bytes: int = 1024 * 2**20
    max_unpacked_bytes: int = 4096 * 2**20
    max_member_bytes: int = 256 * 2**20
    max_members: int = 10_000

    def __post_init__(self):
        if min(self.max_archive_bytes, self.max_unpacked_bytes, self.max_member_bytes, self.max_members) < 1:
            raise ValueError("archive limits must be >= 1")


@dataclass
class ArchiveContents:
    files: dict[str, bytes] = field(default_factory=dict)  # base name -> bytes, for the members kept
    names: list[str] = field(default_factory=list)  # base names of all safe regular files
    problems: list[Skipped] = field(default_factory=list)  # members refused


class _Bounded(io.RawIOBase):
    """A reader that refuses to deliver more than `limit` bytes in total."""

    def __init__(self, stream, limit: int):
        self.stream, self.limit, self.count = stream, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        self.count += len(data)
        if self.count > self.limit:
            raise Skipped("archive_too_large", f"unpacks to more than {self.limit} bytes")
        buffer[: len(data)] = data
        return len(data)


def read_tar_gz(data: bytes, keep: Callable[[str], bool], limits: ArchiveLimits) -> ArchiveContents:
    if len(data) > limits.max_archive_bytes:
        raise Skipped("archive_too_large", f"{len(data)} bytes, more than {limits.max_archive_bytes}")
    if data[:2] != b"\x1f\x8b":
        raise Skipped("corrupt_archive", f"not a gzip file (starts with {data[:4]!r})")
    stream = io.BufferedReader(_Bounded(gzip.GzipFile(fileobj=io.BytesIO(data)), limits.max_unpacked_bytes))
    contents = ArchiveContents()
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for count, member in enumerate(tar, 1):
                if count > limits.max_members:
                    raise Skipped("archive_too_large", f"more than {limits.max_members} members")
                _take(tar, member, keep, limits, contents)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as err:
        raise Skipped("corrupt_archive", f"{type(err).__name__}: {err}") from None
    return contents


def _take(tar: tarfile.TarFile, member: tarfile.TarInfo, keep, limits: ArchiveLimits, contents: ArchiveContents):
    if member.isdir():
        return
    if not member.isfile() or member.issparse():
        kind = "link" if member.issym() or member.islnk() else "special file"
        contents.problems.append(Skipped("unsafe_member", f"member {member.name!r} is a {kind}"))
        return
    try:
        safe_member(member.name)
    except Skipped as problem:
        contents.problems.append(problem)
        return
    name = posixpath.basename(member.name)
    contents.names.append(name)
    if not keep(name) or name in contents.files:
        return
    if member.size > limits.max_member_bytes:
        contents.problems.append(Skipped("member_too_large", f"member {member.name!r} has {member.size} bytes"))
        return
    contents.files[name] = tar.extractfile(member).read()
