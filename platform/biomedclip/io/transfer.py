"""Whole directories between a location (local folder or URI) and this node's disk.

Model artifacts, tokenizers and TensorBoard logs are written by libraries that only know local folders; these helpers
give them one and move its files to the run's location, or bring a remote directory into a local cache before a
library reads it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from biomedclip.io.filesystems import filesystem

log = logging.getLogger(__name__)

CACHE_ENV = "BIOMEDCLIP_CACHE"
COMPLETE_MARKER = ".complete.json"  # written last into a cached copy: what was copied, file by file


def cache_root() -> Path:
    """Where remote directories are copied to on this node: $BIOMEDCLIP_CACHE, else ~/.cache/biomedclip."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "biomedclip")


def join(uri: str, *names: str) -> str:
    """`uri/name/...` for a local folder or any URI (never an OS-specific separator inside a URI)."""
    return posixpath.join(str(uri).rstrip("/"), *names) if "://" in str(uri) else str(Path(uri, *names))


def is_dir(uri: str, s3_endpoint: str | None = None) -> bool:
    fs, path = filesystem(uri, s3_endpoint)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def exists(uri: str, s3_endpoint: str | None = None) -> bool:
    fs, path = filesystem(uri, s3_endpoint)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def listing(uri: str, s3_endpoint: str | None = None) -> dict[str, int]:
    """Relative path -> size of every file under the directory `uri` ({} when there is none)."""
    return {rel: size for rel, (size, _) in _files(uri, s3_endpoint).items()}


def _files(uri: str, s3_endpoint: str | None) -> dict[str, tuple[int, int | None]]:
    """Relative path -> (size, modification time in ns) of every file under the directory `uri`."""
    fs, root = filesystem(uri, s3_endpoint)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    prefix = root.rstrip("/") + "/"  # string slicing: relpath would read the (maybe deleted) working directory
    return {info.path.removeprefix(prefix): (info.size, info.mtime_ns)
            for info in infos if info.type == pafs.FileType.File}


def upload_dir(local: str | Path, uri: str, s3_endpoint: str | None = None) -> None:
    """Copies every file under the local folder `local` to the directory `uri`, keeping relative paths. Local to
    local copies too; a file already there is replaced."""
    fs, root = filesystem(uri, s3_endpoint)
    if isinstance(fs, pafs.LocalFileSystem) and Path(root) == Path(local).resolve():
        return
    if not isinstance(fs, pafs.S3FileSystem):  # object stores need no folders
        fs.create_dir(root, recursive=True)
    pafs.copy_files(str(Path(local).resolve()), root, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def download_dir(uri: str, local: str | Path, s3_endpoint: str | None = None) -> Path:
    """Copies the directory `uri` into the local folder `local` (created); raises FileNotFoundError if absent."""
    fs, root = filesystem(uri, s3_endpoint)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri}: no such directory")
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(root, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


@contextlib.contextmanager
def staged_dir(uri: str, s3_endpoint: str | None = None) -> Iterator[Path]:
    """A local folder to write the directory `uri` into: the folder itself for a local `uri`, else a temporary one
    uploaded when the block ends without an error (so a failed write leaves nothing half-made remotely)."""
    fs, root = filesystem(uri, s3_endpoint)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(root).mkdir(parents=True, exist_ok=True)
        yield Path(root)
        return
    with tempfile.TemporaryDirectory(prefix="biomedclip-stage-") as tmp:
        yield Path(tmp)
        upload_dir(tmp, uri, s3_endpoint)


def local_copy(uri: str, s3_endpoint: str | None = None, refresh: bool = False) -> Path:
    """A local folder holding the directory `uri`: the folder itself when local, else a cached copy under
    `cache_root()`, made once per node and verified (every file present with the size the store lists).
    `refresh`: copy again if any file changed in the store since (size or modification time); when the store cannot
    be reached, a verified copy made earlier is used."""
    fs, root = filesystem(uri, s3_endpoint)
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(root)
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    target = cache_root() / f"{posixpath.basename(root.rstrip('/')) or 'root'}-{digest}"
    cached = _read_marker(target)
    if cached is not None and _verified(target, cached) and not refresh:
        return target
    try:
        files = _files(uri, s3_endpoint)
    except OSError as err:  # the store is unreachable: a verified copy made earlier still serves
        if cached is None or not _verified(target, cached):
            raise
        log.warning("%s: cannot check the store (%s); using the verified copy in %s", uri, err, target)
        return target
    if not files:
        raise FileNotFoundError(f"{uri}: no such directory, or it holds no files")
    if cached is not None and _verified(target, cached) and cached == files:
        return target  # refreshed: unchanged in the store
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=_made(target.parent)))
    try:
        download_dir(uri, partial, s3_endpoint)
        if not _verified(partial, files):
            raise OSError(f"{uri}: the copy in {partial} does not match the store's listing (files or sizes differ)")
        (partial / COMPLETE_MARKER).write_text(json.dumps({rel: list(info) for rel, info in files.items()}))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # another process may have won the race: its copy is as good
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        cached = _read_marker(target)
        if cached is None or not _verified(target, cached):
            raise
    return target


def _read_marker(target: Path) -> dict[str, tuple[int, int | None]] | None:
    marker = target / COMPLETE_MARKER
    if not marker.is_file():
        return None
    return {rel: tuple(info) for rel, info in json.loads(marker.read_text()).items()}


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _verified(directory: Path, expected: dict[str, tuple[int, int | None]]) -> bool:
    return all((directory / rel).is_file() and (directory / rel).stat().st_size == size
               for rel, (size, _) in expected.items())
