"""A directory as an object store, for the embedded default and single-machine installs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from reelgen.storage.base import Body, InvalidKey, ObjectInfo, validate_key
from reelgen.storage.keys import quarantined
from reelgen.storage.signing import sign_path

CHUNK = 1024 * 1024
DELETE_THREADS = 8


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or gone already
        path.rmdir()


class LocalDirectoryStore:
    def __init__(self, root: Path, signing_secret: bytes):
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = signing_secret

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise InvalidKey(f"Invalid object key {key[:100]!r}.")
        return path

    def put(self, key: str, body: Body, *, content_type: str | None = None) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        tmp = Path(name)
        try:
            if isinstance(body, Path):
                os.close(fd)
                shutil.move(body, tmp)
            else:
                with os.fdopen(fd, "wb") as f:
                    for chunk in [body] if isinstance(body, bytes) else body:
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path.read_bytes()

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            f.seek(start)
            left = None if end is None else max(0, end - start)
            while left is None or left > 0:
                chunk = f.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    return
                if left is not None:
                    left -= len(chunk)
                yield chunk

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except OSError:  # also a name too long for the filesystem: nothing can be stored there
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        tag = hashlib.md5(f"{key}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
        return ObjectInfo(size=st.st_size, etag=f'"{tag}"', modified=st.st_mtime)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_file():
            path.unlink(missing_ok=True)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Each file, then the directories they leave empty, deepest first, on a few
        threads: freeing a file's blocks waits on the filesystem's journal (about 100 us
        each on ext4), and several wait at once. Keys are checked (`validate_key`) but not
        resolved: the files are the store's own, and resolving costs more system calls."""
        paths = [self.root / validate_key(key) for key in keys]
        levels: dict[int, set[Path]] = {}
        for path in paths:
            parent = path.parent
            while parent != self.root:
                levels.setdefault(len(parent.parts), set()).add(parent)
                parent = parent.parent
        with ThreadPoolExecutor(DELETE_THREADS) as pool:
            list(pool.map(_unlink, paths, chunksize=16))
            for depth in sorted(levels, reverse=True):
                list(pool.map(_rmdir, levels[depth], chunksize=16))

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def url_for(self, key: str, expires_at: int) -> str:
        if quarantined(key):
            raise ValueError("quarantined content is never given a URL")
        return sign_path(self._secret, validate_key(key), expires_at)
