"""Engines, transactions and migrations for both stores (SQLite embedded, PostgreSQL fleet)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event

from reelgen.domain.errors import Unavailable
from reelgen.store.backend import Backend, backend_for

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
IDLE_IN_TRANSACTION_MS = 5000
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 10
"""Longest wait for a free pooled connection before a call gives up as `Unavailable`."""


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not url.startswith("sqlite"):
        return create_engine(
            url,
            pool_size=10,
            max_overflow=20,
            pool_timeout=POOL_TIMEOUT_S,
            connect_args=_pg_connect_args(),
        )

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sqlite_synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front so two claimers never both read the same row.
        # Reads are single statements, each atomic on its own: they skip BEGIN/COMMIT.
        if conn.get_execution_options().get("write", False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _pg_connect_args() -> dict[str, Any]:
    return {
        # A process frozen inside a transaction (paused VM, SIGSTOP) would hold its row locks
        # and hide its job from the lease reaper; the server ends such sessions instead.
        "options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}",
        # A server that is away, or a cut network, fails a call in seconds instead of
        # hanging it: connecting is bounded, and a dead peer is noticed by keepalives.
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 15_000,
    }


class Database:
    """Owns the engine; hands out read and write transactions."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.dialect = engine.dialect.name
        self.backend: Backend = backend_for(self.dialect)
        # SQLite has one writer at a time; queueing writers of this process on a lock
        # avoids SQLite's sleep-and-retry busy handler, which stretches tail latency.
        self._write_lock: AbstractContextManager[object] = (
            threading.Lock() if self.dialect == "sqlite" else nullcontext()
        )

    @property
    def calls_are_inline(self) -> bool:
        """Whether a call returns in microseconds (an in-process library: SQLite), so that
        callers on an event loop should run it inline instead of handing it to a thread."""
        return self.dialect == "sqlite"

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """Turns "the database is away" into `Unavailable`, which callers can retry."""
        try:
            yield
        except Unavailable:
            raise
        except Exception as error:
            if self.backend.is_unavailable(error):
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise Unavailable(
                    f"The database is not reachable right now; retry shortly ({first_line})."
                ) from error
            raise

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """For single-statement reads; use `write` where several reads must agree.

        Each statement is atomic on its own, so no BEGIN/COMMIT is sent (SQLite skips them in
        the `begin` hook; PostgreSQL reads use the autocommit pool).
        """
        if self.dialect == "postgresql":
            with self._reachable(), self._autocommit_engine.connect() as conn:
                yield conn
            return
        with self._reachable(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """A write transaction. `durable=False` lets PostgreSQL answer before the commit
        reaches disk (still atomic and ordered; a server crash may lose the last ones)."""
        with (
            self._reachable(),
            self._write_lock,
            self.engine.connect().execution_options(write=True) as conn,
            conn.begin(),
        ):
            if not durable and self.dialect == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            yield conn

    @cached_property
    def _autocommit_engine(self) -> Engine:
        return create_engine(
            self.engine.url,
            isolation_level="AUTOCOMMIT",
            pool_reset_on_return=None,
            pool_size=5,
            max_overflow=10,
            pool_timeout=POOL_TIMEOUT_S,
            connect_args=_pg_connect_args(),
        )

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """For one self-contained statement: no BEGIN/COMMIT round trips (PostgreSQL).

        Its own pool, so connections stay in autocommit instead of switching per use."""
        with self._reachable(), self._autocommit_engine.connect() as conn:
            yield conn

    def schema_revision(self) -> str | None:
        """The migration the database is at; raises `Unavailable` when it cannot be reached."""
        with self._reachable():
            return current_revision(self.engine)

    def dispose(self) -> None:
        if "_autocommit_engine" in self.__dict__:
            self._autocommit_engine.dispose()
        self.engine.dispose()


def _alembic_config(conn: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.connect() as conn:
        command.upgrade(_alembic_config(conn), revision)
        conn.commit()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg).get_current_head()
