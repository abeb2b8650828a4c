"""A worker's liveness marker held by its own database session.

On PostgreSQL the worker holds a session-level advisory lock on a connection of its own.
When the process dies (crash, OOM kill, SIGKILL) the kernel closes the socket, the server
ends the session and the lock is gone at once; the controller sees that and requeues the
job within a couple of seconds instead of waiting for the lease. A lost machine or a cut
network closes nothing, so the lease stays the fallback. SQLite has no sessions to watch:
its workers live inside the `reelgen serve` process, whose restart recovers them.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Any

log = logging.getLogger("reelgen.store.sessions")

CHECK_S = 0.5


class SessionMarker:
    """Holds `pg_advisory_lock(key)` and takes it again after the connection is lost."""

    def __init__(self, dsn: str | None):
        self._dsn = dsn
        self.key: int | None = secrets.randbits(62) if dsn is not None else None
        self._conn: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._dsn is None:
            return
        self._lock()
        self._thread = threading.Thread(target=self._watch, name="session-marker", daemon=True)
        self._thread.start()

    def _lock(self) -> None:
        import psycopg

        assert self._dsn is not None
        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
        conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        self._conn = conn

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_S):
            try:
                if self._conn is None or self._conn.closed:
                    self._lock()
                    log.info("worker session marker taken again")
                else:
                    self._conn.execute("SELECT 1")
            except Exception as exc:
                log.warning("worker session marker lost (%s); retrying", exc)
                self._close_conn()

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.debug("closing a broken marker connection failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        self._close_conn()


def marker_for(database_url: str) -> SessionMarker:
    if database_url.startswith(("postgresql://", "postgresql+psycopg://")):
        return SessionMarker(database_url.replace("postgresql+psycopg://", "postgresql://", 1))
    return SessionMarker(None)
