"""Read-only access to a source tree, local or on S3, addressed by '/'-separated keys relative to its root.

S3 access is anonymous by default (the PMC bucket is public) and can point at any S3-compatible endpoint. Keys that
are absolute or climb out of the root with '..' are refused, so a hostile metadata file cannot read outside it.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from biomedclip.pmc.skips import Skipped


def safe_key(key: str) -> str:
    """Normalises a relative key; raises Skipped('unsafe_member') for absolute paths, '..', NUL or backslashes."""
    if not key or "\x00" in key or "\\" in key or key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise Skipped("unsafe_member", f"path {key!r} is absolute or invalid")
    parts = key.split("/")
    if ".." in parts:
        raise Skipped("unsafe_member", f"path {key!r} climbs out with '..'")
    return posixpath.normpath(key)


class LocalStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"source directory {self.root} does not exist")

    def describe(self, key: str = "") -> str:
        return str(self.root / key)

    def list(self, prefix: str = "", suffix: str = "") -> Iterator[str]:
        """Keys of regular files under `prefix`, sorted, recursively."""
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.name.endswith(suffix):
                yield path.relative_to(self.root).as_posix()

    def list_dirs(self) -> Iterator[str]:
        for path in sorted(self.root.iterdir()):
            if path.is_dir() and not path.is_symlink() and not path.name.startswith("."):
                yield path.name

    def read(self, key: str, max_bytes: int) -> bytes:
        path = self.root / safe_key(key)
        if path.is_symlink() or not path.is_file():
            raise FileNotFoundError(f"{path} is not a regular file")
        size = path.stat().st_size
        if size > max_bytes:
            raise Skipped("member_too_large", f"{path} has {size} bytes, more than {max_bytes}")
        return path.read_bytes()


STATIC_CREDENTIAL_SOURCES = ("env", "shared-credentials-file", "config-file", "explicit")


def static_credentials() -> dict[str, str] | None:
    """AWS keys found where the job starts (env vars or credential files), to hand to Ray workers that may not have
    them; None for role-based credentials, which each process resolves (and refreshes) itself."""
    import boto3

    credentials = boto3.session.Session().get_credentials()
    if credentials is None or credentials.method not in STATIC_CREDENTIAL_SOURCES:
        return None
    frozen = credentials.get_frozen_credentials()
    return {"access_key": frozen.access_key, "secret_key": frozen.secret_key, "session_token": frozen.token}


class S3Store:
    def __init__(self, url: str, endpoint: str | None = None, anonymous: bool = True):
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self.endpoint, self.anonymous = endpoint, anonymous
        self.credentials = None if anonymous else static_credentials()
        self._client = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None}  # boto3 clients do not pickle; each process makes its own

    @property
    def client(self):
        if self._client is None:
            self._client = s3_client(self.endpoint, self.anonymous, self.credentials)
        return self._client

    def describe(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    @property
    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _key(self, key: str) -> str:
        return self._root + key

    def list(self, prefix: str = "", suffix: str = "") -> Iterator[str]:
        """Keys under `prefix`, in S3's (lexicographic) order."""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self._root):]
                if key.endswith(suffix) and not key.endswith("/"):
                    yield key

    def list_dirs(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._root, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                yield common["Prefix"][len(self._root):].rstrip("/")

    def read(self, key: str, max_bytes: int) -> bytes:
        from botocore.exceptions import ClientError

        full = self._key(safe_key(key))
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"s3://{self.bucket}/{full} does not exist") from None
            raise OSError(f"s3://{self.bucket}/{full}: {code or err}") from None
        body = response["Body"]
        try:
            if response.get("ContentLength", 0) > max_bytes:
                raise Skipped("member_too_large", f"s3://{self.bucket}/{full} has {response['ContentLength']} bytes, more than {max_bytes}")
            return body.read()
        finally:
            body.close()


def s3_client(endpoint: str | None, anonymous: bool, credentials: dict[str, str] | None = None):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    retries = {"max_attempts": 5, "mode": "adaptive"}
    if anonymous:
        return boto3.session.Session().client("s3", endpoint_url=endpoint,
                                              config=Config(signature_version=UNSIGNED, retries=retries))
    keys = credentials or {}
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, config=Config(retries=retries), aws_access_key_id=keys.get("access_key"),
        aws_secret_access_key=keys.get("secret_key"), aws_session_token=keys.get("session_token"))


def open_store(uri: str, endpoint: str | None = None, anonymous: bool = True) -> LocalStore | S3Store:
    return S3Store(uri, endpoint, anonymous) if uri.startswith("s3://") else LocalStore(uri)


def key_from_url(url: str) -> str:
    """The key inside the dataset of an s3:// or https:// object URL (bucket and ?md5= dropped), or a relative key."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return parsed.path.lstrip("/")
    if parsed.scheme in ("http", "https"):
        path = parsed.path.lstrip("/")
        virtual_host = parsed.netloc.split(".s3")[0] != parsed.netloc
        return path if virtual_host else path.partition("/")[2]
    return parsed.path
