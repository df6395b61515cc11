"""API-key check. The key comes from an environment variable or a file named by one, never from the config."""
from __future__ import annotations

import hmac
import os
from pathlib import Path

from biomedclip.serving.config import AuthConfig
from biomedclip.serving.errors import RequestError

API_KEY_HEADER = "x-api-key"


class AuthError(RuntimeError):
    pass


def read_api_key(auth: AuthConfig, key_file: str | None = None) -> str | None:
    """The key from $key_env, else from the file `key_file` or $key_file_env names; None when none is set (an open
    API)."""
    key = os.environ.get(auth.key_env, "").strip()
    if key:
        return key
    path = (key_file or os.environ.get(auth.key_file_env, "")).strip()
    if not path:
        return None
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as err:
        raise AuthError(f"{auth.key_file_env}={path}: cannot read the API key file ({err})") from err
    if not key:
        raise AuthError(f"{auth.key_file_env}={path}: the API key file is empty")
    return key


def check_api_key(expected: str | None, headers) -> None:
    """Accepts `X-API-Key: <key>` or `Authorization: Bearer <key>`; raises 401 otherwise."""
    if expected is None:
        return
    given = headers.get(API_KEY_HEADER) or _bearer(headers.get("authorization", ""))
    if not given:
        raise RequestError(401, "api_key", "missing API key (send the X-API-Key header or Authorization: Bearer)")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise RequestError(401, "api_key", "wrong API key")


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
