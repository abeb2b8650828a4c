"""HMAC-signed, expiring URLs for content, so a link can be shared without the API key: the
API's own `/files/{key}` (the directory store) and a CDN edge (`REELGEN_CDN_BASE_URL`) use
one scheme, `{base}/{quoted key}?expires={unix seconds}&signature={hex HMAC-SHA256 of
"{key}\n{expires}"}`, which `verify` checks (docs/storage.md)."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote


def _signature(secret: bytes, key: str, expires: int) -> str:
    return hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def signed_url(base: str, secret: bytes, key: str, expires: int) -> str:
    """`key` under `base` (a path or an absolute URL), valid until `expires`."""
    signature = _signature(secret, key, expires)
    return f"{base.rstrip('/')}/{quote(key)}?expires={expires}&signature={signature}"


def sign_path(secret: bytes, key: str, expires: int) -> str:
    return signed_url("/files", secret, key, expires)


def verify(secret: bytes, key: str, expires: int, signature: str, now: float) -> bool:
    """Compares bytes: `compare_digest` raises on non-ASCII strings, and a URL can carry any."""
    if expires < now:
        return False
    expected = _signature(secret, key, expires).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))
