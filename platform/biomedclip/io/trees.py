"""Read-only access to an input tree, local or remote, addressed by '/'-separated keys relative to its root.

Keys that are absolute or climb out of the root with '..' are refused, so a hostile metadata file cannot read outside
it; locally, symbolic links are not followed for the same reason.
"""
from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator

import pyarrow.fs as pafs

from biomedclip.io.filesystems import filesystem


class UnsafeKey(ValueError):
    """A key that is absolute, invalid or climbs out of the tree."""


class TooLarge(ValueError):
    """A file larger than the reader allows."""


def safe_key(key: str) -> str:
    """Normalises a relative key; raises UnsafeKey for absolute paths, '..', NUL or backslashes."""
    if not key or "\x00" in key or "\\" in key or key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise UnsafeKey(f"path {key!r} is absolute or invalid")
    if ".." in key.split("/"):
        raise UnsafeKey(f"path {key!r} climbs out with '..'")
    return posixpath.normpath(key)


class SourceTree:
    def __init__(self, uri: str, s3_endpoint: str | None = None, anonymous: bool = False):
        self.uri = str(uri).rstrip("/")
        self.fs, self.root = filesystem(self.uri, s3_endpoint, anonymous)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.local and self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"source directory {self.uri} does not exist")

    def describe(self, key: str = "") -> str:
        """The URI of `key`, as the user would write it."""
        return f"{self.uri}/{key}" if key else self.uri

    def list(self, prefix: str = "", suffix: str = "") -> Iterator[str]:
        """Keys of regular files under `prefix`, sorted, recursively."""
        base = posixpath.join(self.root, prefix) if prefix else self.root
        infos = self.fs.get_file_info(pafs.FileSelector(base.rstrip("/"), recursive=True, allow_not_found=True))
        start = len(self.root) + 1
        yield from sorted(info.path[start:] for info in infos
                          if info.type == pafs.FileType.File and info.path.endswith(suffix) and self._plain(info))

    def list_dirs(self) -> Iterator[str]:
        """Names of the top-level folders, sorted (hidden ones left out)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        yield from sorted(info.base_name for info in infos if info.type == pafs.FileType.Directory
                          and not info.base_name.startswith(".") and self._plain(info))

    def read(self, key: str, max_bytes: int) -> bytes:
        """The file's bytes; FileNotFoundError when it is missing (or a link), TooLarge above `max_bytes`."""
        path = posixpath.join(self.root, safe_key(key))
        info = self.fs.get_file_info(path)
        if info.type != pafs.FileType.File or not self._plain(info):
            raise FileNotFoundError(f"{self.describe(key)} is not a regular file")
        if info.size > max_bytes:
            raise TooLarge(f"{self.describe(key)} has {info.size} bytes, more than {max_bytes}")
        with self.fs.open_input_stream(path, compression=None) as stream:  # bytes as stored (.tar.gz too)
            return stream.read()

    def _plain(self, info: pafs.FileInfo) -> bool:
        """False for a local path through a symbolic link below the root (pyarrow reports the target's type)."""
        if not self.local:
            return True
        inside = posixpath.relpath(info.path, self.root)
        return os.path.realpath(info.path) == posixpath.join(os.path.realpath(self.root), inside)
