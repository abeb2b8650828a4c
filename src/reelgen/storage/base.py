"""Object storage: video bytes live here, never in the database."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class ObjectStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, source: Path) -> None:
        """Moves or copies `source` into the store under `key`, atomically."""
        ...

    def get_bytes(self, key: str) -> bytes: ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for zero-copy serving, when the store has one."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...


def open_store(url: str) -> ObjectStore:
    from reelgen.storage.local import LocalDirectoryStore

    if url.startswith("file://"):
        return LocalDirectoryStore(Path(url.removeprefix("file://")))
    raise ValueError(
        f"Unsupported REELGEN_STORAGE_URL {url!r}; this build supports file:// directories."
    )
