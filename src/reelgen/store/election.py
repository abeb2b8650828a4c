"""Exactly one active controller: a PostgreSQL advisory lock, or a file lock for SQLite.

The PostgreSQL lock belongs to a session: when the leader dies its connection closes and
the server frees the lock at once, so a standby polling every `retry_s` takes over within
that interval. A leader that loses its connection steps down before it acts again, and
says so by raising `Unavailable`: the caller then knows its view of the database has a gap.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from pathlib import Path
from typing import IO, Any, Protocol

from reelgen.domain.errors import Unavailable

log = logging.getLogger("reelgen.controller")

LOCK_KEY = 0x7265656C67656E  # "reelgen"


class Leadership(Protocol):
    def try_acquire(self) -> bool:
        """True while this process is (or has just become) the leader; raises `Unavailable`
        when the database cannot be reached."""
        ...

    def release(self) -> None: ...


class AdvisoryLock:
    def __init__(self, dsn: str):
        self.dsn = dsn
        self._conn: Any = None

    def try_acquire(self) -> bool:
        import psycopg

        try:
            if self._conn is not None:
                self._conn.execute("SELECT 1")
                return True
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
            with contextlib.ExitStack() as closing:
                closing.callback(conn.close)
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
                if row and row[0]:
                    closing.pop_all()
                    self._conn = conn
                    return True
            return False
        except psycopg.Error as exc:
            if self._conn is not None:
                log.warning("lost the leader connection (%s); stepping down", exc)
            self.release()
            raise Unavailable(f"The leader lock cannot be reached: {exc}") from exc

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class FileLock:
    def __init__(self, path: Path):
        self.path = path
        self._handle: IO[str] | None = None

    def try_acquire(self) -> bool:
        if self._handle is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "w")  # noqa: SIM115 - held while leading
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def leadership_for(database_url: str, data_dir: Path) -> Leadership:
    if database_url.startswith(("postgresql://", "postgresql+psycopg://")):
        return AdvisoryLock(database_url.replace("postgresql+psycopg://", "postgresql://", 1))
    return FileLock(data_dir / "controller.lock")
