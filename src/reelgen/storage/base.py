"""Object storage: video bytes live here, never in the database, and no caller sees a path.

The API serves content only through `stat` and `read` (ranged) or `url_for`, so the
back-ends (a local directory, `storage.local`; the S3 API, `storage.s3`) plug in without a
change above this package.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

Body = bytes | Path | Iterable[bytes]
"""What `put` accepts: bytes, a local file (moved in when possible), or a stream of chunks."""


class InvalidKey(ValueError):
    """A key that names nothing this store could hold (empty, `..`, NUL, absolute)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    etag: str
    modified: float
    """Seconds since the epoch."""


class ObjectStore(Protocol):
    def put(self, key: str, body: Body, *, content_type: str | None = None) -> None:
        """Stores `body` under `key` atomically: readers see the old object or the new one."""

    def get(self, key: str) -> bytes:
        """The whole object; raises FileNotFoundError when it is absent."""
        ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes `start` to `end` (exclusive; None for the end) in chunks."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size, ETag and modification time, or None when absent."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def delete_many(self, keys: Sequence[str]) -> None:
        """Deletes these objects (absent ones are fine) in as few requests as the back-end
        allows: the garbage collector's path, which knows its keys and lists nothing."""

    def url_for(self, key: str, expires_at: int) -> str:
        """A URL that serves the object without an API key until `expires_at` (signed or
        presigned); relative to the API's base URL for stores the API serves itself."""
        ...


def validate_key(key: str) -> str:
    parts = key.split("/")
    if (
        not key
        or len(key) > 1024
        or "\x00" in key
        or key.startswith("/")
        or any(p in ("", ".", "..") for p in parts[:-1])
        or parts[-1] in (".", "..")
    ):
        raise InvalidKey(f"Invalid object key {key[:100]!r}.")
    return key


def open_store(url: str, *, signing_secret: bytes) -> ObjectStore:
    """The store a `REELGEN_STORAGE_URL` names: `file://DIR` or `s3://bucket/prefix?...`."""
    if url.startswith("file://"):
        from reelgen.storage.local import LocalDirectoryStore

        return LocalDirectoryStore(Path(url.removeprefix("file://")), signing_secret)
    if url.startswith("s3://"):
        from reelgen.storage.s3 import S3Location, S3Store

        return S3Store(S3Location.parse(url))
    raise ValueError(
        f"Unsupported REELGEN_STORAGE_URL {url!r}: use file:///a/directory or "
        "s3://bucket/prefix?endpoint_url=...&region=..."
    )
