"""The output location, local or any filesystem URI (s3:// on any S3-compatible endpoint), through one pyarrow
filesystem.

Every file is written whole or not at all: locally to a temporary file under _state/tmp, then renamed into place; on
S3 an object only appears when its upload completes. Paths are always built from the output root and names this
package makes up, so nothing is written outside the output location.
"""
from __future__ import annotations

import io
import json
import posixpath
import uuid
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from biomedclip.io.filesystems import filesystem

TEMPORARY_DIR = "_state/tmp"  # local writes land here first, then are renamed into place


class OutputStore:
    def __init__(self, uri: str, s3_endpoint: str | None = None):
        if not uri:
            raise ValueError("no output location given")
        self.uri = str(uri).rstrip("/")
        self.fs, self.root = filesystem(self.uri, s3_endpoint)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.local:
            self.fs.create_dir(self.root, recursive=True)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def url(self, rel: str = "") -> str:
        """The URI of `rel` in the form the user gave the root (s3://..., or a local path)."""
        if self.local:
            return self.path(rel)
        return f"{self.uri}/{rel}" if rel else self.uri

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.write_stream(rel, [data])

    def write_stream(self, rel: str, chunks: Iterable[bytes]) -> None:
        target = self.path(rel)
        if not self.local:
            if not isinstance(self.fs, pafs.S3FileSystem):  # object stores need no folders; other filesystems do
                self.fs.create_dir(posixpath.dirname(target), recursive=True)
            with self.fs.open_output_stream(target) as out:
                for chunk in chunks:
                    out.write(chunk)
            return
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        self.fs.create_dir(self.path(TEMPORARY_DIR), recursive=True)
        temporary = self.path(f"{TEMPORARY_DIR}/{uuid.uuid4().hex}")
        try:
            with self.fs.open_output_stream(temporary) as out:
                for chunk in chunks:
                    out.write(chunk)
            self.fs.move(temporary, target)
        finally:
            if self.fs.get_file_info(temporary).type == pafs.FileType.File:
                self.fs.delete_file(temporary)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def write_json(self, rel: str, value) -> None:
        self.write_bytes(rel, json.dumps(value, indent=1, sort_keys=True).encode())

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def write_table(self, rel: str, table: pa.Table) -> None:
        buffer = io.BytesIO()
        # Binary columns hold JPEG bytes, which neither compress nor repeat: spend no CPU on them.
        text = [f.name for f in table.schema if not pa.types.is_binary(f.type)]
        compression = {name: "zstd" if name in text else "none" for name in table.schema.names}
        pq.write_table(table, buffer, compression=compression, use_dictionary=text, write_statistics=text)
        self.write_bytes(rel, buffer.getvalue())

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(rel), columns=columns, filesystem=self.fs)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.File

    def list_names(self, rel_dir: str) -> list[str]:
        """Names of the files directly in `rel_dir`, sorted."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel_dir), allow_not_found=True))
        return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)

    def clear_temporaries(self) -> None:
        """Removes half-written files left by a run that was killed (one run per output at a time)."""
        if self.local and self.fs.get_file_info(self.path(TEMPORARY_DIR)).type == pafs.FileType.Directory:
            self.fs.delete_dir_contents(self.path(TEMPORARY_DIR))

    def delete_dir(self, rel: str) -> None:
        if self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))
