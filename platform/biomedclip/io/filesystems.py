"""URIs to pyarrow filesystems, with the credential and endpoint policy described in `biomedclip.io`."""
from __future__ import annotations

import os
import posixpath
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

STATIC_CREDENTIAL_SOURCES = ("env", "shared-credentials-file", "config-file", "explicit")
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def is_local(uri: str) -> bool:
    """A plain path (or file:// URI) rather than a remote filesystem URI."""
    scheme = urlparse(str(uri)).scheme
    return scheme in ("", "file") or len(scheme) == 1  # one letter: a Windows drive


def absolute(location: str, base: str | Path | None = None) -> str:
    """A local path made absolute against `base` (default: the working directory; Ray workers run in their own), a
    URI (file:// too) as given."""
    location = str(location)
    if "://" in location or not is_local(location):
        return location
    path = Path(location).expanduser()
    return str(path if path.is_absolute() else (Path(base or Path.cwd()) / path).resolve())


def s3_endpoint(explicit: str | None = None) -> str | None:
    """The S3 endpoint to use: the one a config names, else the standard environment variables, else AWS's own."""
    return explicit or next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)


def static_credentials() -> dict[str, str] | None:
    """AWS keys found where the job starts (env vars or credential files); None for role-based credentials, which
    each process resolves (and refreshes) itself."""
    import boto3

    credentials = boto3.session.Session().get_credentials()
    if credentials is None or credentials.method not in STATIC_CREDENTIAL_SOURCES:
        return None
    frozen = credentials.get_frozen_credentials()
    return {"access_key": frozen.access_key, "secret_key": frozen.secret_key, "session_token": frozen.token}


def s3_filesystem(endpoint: str | None = None, anonymous: bool = False) -> pafs.S3FileSystem:
    options: dict = {"anonymous": True} if anonymous else dict(static_credentials() or {})
    endpoint = s3_endpoint(endpoint)
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme,
                       region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return pafs.S3FileSystem(**options)


def filesystem(uri: str, s3_endpoint: str | None = None, anonymous: bool = False) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, s3://bucket/prefix or any URI pyarrow knows (gs://, hdfs://,
    ...). Local paths come back absolute, so workers in other directories find them."""
    uri = str(uri)
    if is_local(uri):
        return pafs.LocalFileSystem(), posixpath.abspath(urlparse(uri).path if uri.startswith("file:") else uri)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"not an s3://bucket[/prefix] URI: {uri!r}")
        return s3_filesystem(s3_endpoint, anonymous), f"{parsed.netloc}{parsed.path}".rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid as err:  # an unknown scheme: say so instead of pyarrow's bare "Unrecognized"
        raise ValueError(f"{uri}: pyarrow cannot open {parsed.scheme}:// URIs; use a local folder, s3:// or another "
                         f"scheme pyarrow has a filesystem for (gs://, hdfs://, ...) ({err})") from None


def storage_location(uri: str, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem | None, str]:
    """(filesystem, path) as Ray Train and Tune take their storage: no filesystem for a local path (their default,
    which a multi-node cluster needs to be a shared mount), the remote filesystem otherwise."""
    fs, path = filesystem(uri, s3_endpoint)
    return (None, path) if isinstance(fs, pafs.LocalFileSystem) else (fs, path)
