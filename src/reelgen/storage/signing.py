"""HMAC-signed, expiring URLs for content, so a link can be shared without the API key."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote


def _signature(secret: bytes, key: str, expires: int) -> str:
    return hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def sign_path(secret: bytes, key: str, expires: int) -> str:
    return f"/files/{quote(key)}?expires={expires}&signature={_signature(secret, key, expires)}"


def verify(secret: bytes, key: str, expires: int, signature: str, now: float) -> bool:
    """Compares bytes: `compare_digest` raises on non-ASCII strings, and a URL can carry any."""
    if expires < now:
        return False
    expected = _signature(secret, key, expires).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))
