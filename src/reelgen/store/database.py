"""Engines, transactions and migrations for both stores (SQLite embedded, PostgreSQL fleet)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event

from reelgen.domain.errors import ReelgenError, Unavailable
from reelgen.store.backend import Backend, backend_for

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
IDLE_IN_TRANSACTION_MS = 5000
CONNECT_TIMEOUT_S = 5
POOL_TIMEOUT_S = 10
"""Longest wait for a free pooled connection before a call gives up as `Unavailable`."""
HELD_CONNECTIONS = 4
"""SQLite: threads that keep a connection of their own for `Database.fetch`."""
MAX_BATCH = 64
"""The most write items one group commit carries."""
CHECKPOINT_EVERY_S = 0.5
"""SQLite, with group commit: how often the checkpointer thread copies the WAL back."""
WAL_SAFETY_PAGES = 20_000
"""SQLite, with group commit: a commit still checkpoints itself once the WAL holds this
many pages (the checkpointer fell behind); SQLite's default is 1000."""

log = logging.getLogger("reelgen.store.database")
T = TypeVar("T")
Item = TypeVar("Item")

Batch = Callable[[Connection, list[Item]], list[T | ReelgenError]]
"""Runs several callers' items in one transaction: one answer per item, in order, a
`ReelgenError` for an item refused before anything of it was written."""


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
        self.backend: Backend = backend_for(engine.dialect.name)
        self._write_lock: AbstractContextManager[object] = self.backend.process_write_lock()
        self._committer: GroupCommitter | None = None
        self._compiled_cache: dict[Any, tuple[str, list[str] | None, dict[str, Any]]] = {}
        self._committer_lock = threading.Lock()
        self._thread_conn = threading.local()
        self._held: list[Any] = []
        self._held_lock = threading.Lock()

    @property
    def calls_are_inline(self) -> bool:
        """Whether a call returns in microseconds (an in-process library: SQLite), so that
        callers on an event loop should run it inline instead of handing it to a thread."""
        return self.backend.calls_are_inline

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
        if self.backend.autocommit_reads:
            with self._reachable(), self._autocommit_engine.connect() as conn:
                yield conn
            return
        with self._reachable(), self.engine.connect() as conn, conn.begin():
            yield conn

    def fetch(self, statement: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Runs a read statement on the driver directly; its rows as dicts.

        For hot single-row reads: SQLAlchemy's execution layer costs several times what
        SQLite spends on such a query. The statement is compiled once per database; its
        columns must need no result conversion (no SQLAlchemy-side types)."""
        sql, names, defaults = self._compiled(statement)
        values = {**defaults, **params}
        args = [values[n] for n in names] if names is not None else values
        held = self._held_connection()
        with self._reachable():
            if held is not None:  # SQLite: the thread's own connection, no pool round
                return _dict_rows(held, sql, args)
            engine = self._autocommit_engine if self.backend.autocommit_reads else self.engine
            raw = engine.raw_connection()
            try:
                return _dict_rows(raw, sql, args)
            except Exception as error:
                if self.backend.is_unavailable(error):
                    raw.invalidate(error)  # or the pool hands the dead connection out again
                raise
            finally:
                raw.close()

    def _held_connection(self) -> Any:
        """For inline backends, the calling thread's own connection, kept checked out (the
        first `HELD_CONNECTIONS` threads to read; others use the pool)."""
        if not self.backend.calls_are_inline:
            return None
        held = getattr(self._thread_conn, "raw", None)
        if held is None:
            with self._held_lock:
                if len(self._held) >= HELD_CONNECTIONS:
                    return None
                held = self.engine.raw_connection()
                self._held.append(held)
            self._thread_conn.raw = held
        return held

    def _compiled(self, statement: Any) -> tuple[str, list[str] | None, dict[str, Any]]:
        """(SQL, parameter order for positional drivers, the statement's literal values)."""
        found = self._compiled_cache.get(statement)
        if found is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            order = compiled.positiontup
            found = (
                compiled.string,
                list(order) if order is not None else None,
                {k: v for k, v in compiled.params.items() if v is not None},
            )
            self._compiled_cache[statement] = found
        return found

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
            if not durable:
                self.backend.relax_durability(conn)
            yield conn

    def batched(self, run: Batch[Item, T], item: Item, *, order: str = "") -> Future[T]:
        """Hands `item` to `run` in a write transaction shared with other callers' items
        (group commit): `run` gets every item of the batch that names it, so it can write
        them with a few statements instead of a few per item.

        The future resolves once the transaction has committed (durably, as `write()`),
        with `run`'s answer for the item. Any error other than a `ReelgenError` answer
        loses the shared transaction, and the batch is run again one item per
        transaction, so that only the failing item fails. A batch's items are sorted by
        `order` (the row they lock first, e.g. the user), otherwise kept in the order they
        were handed in, so that batches of several processes lock in the same order.
        """
        if self._committer is None:  # a process that submits rarely: a batch of one, now
            done: Future[T] = Future()
            try:
                with self.write() as conn:
                    (answer,) = run(conn, [item])
            except Exception as exc:
                done.set_exception(exc)
            else:
                if isinstance(answer, ReelgenError):
                    done.set_exception(answer)
                else:
                    done.set_result(answer)
            return done
        return self._committer.submit(run, item, order)

    def start_group_commit(self) -> None:
        """Starts the committer thread `batched` hands work to; processes that submit jobs
        (the API) start it at start-up. Without it each `batched` call commits on its own."""
        with self._committer_lock:
            if self._committer is None:
                checkpointer = None
                if self.backend.keeps_a_wal and self.engine.url.database not in (
                    None,
                    "",
                    ":memory:",
                ):
                    checkpointer = _Checkpointer(self.engine)
                self._committer = GroupCommitter(self, checkpointer)

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
        if self._committer is not None:
            self._committer.stop()
        with self._held_lock:
            for held in self._held:
                held.close()
            self._held.clear()
        if "_autocommit_engine" in self.__dict__:
            self._autocommit_engine.dispose()
        self.engine.dispose()


def _dict_rows(raw: Any, sql: str, args: Any) -> list[dict[str, Any]]:
    """Runs `sql` on a driver connection; its rows as dicts."""
    cur = raw.cursor()
    try:
        cur.execute(sql, args)
        columns = [d[0] for d in cur.description or ()]
        return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
    finally:
        cur.close()


@dataclass(eq=False)
class _Item:
    run: Batch[Any, Any]
    value: Any
    order: str
    future: Future[Any] = field(default_factory=Future)
    answer: Any = None


_STOP = object()


class GroupCommitter:
    """One thread that gathers the write items handed in meanwhile into one transaction.

    While a batch commits (an fsync with SQLite `synchronous=FULL`), new items queue up;
    the next batch takes them all (up to `MAX_BATCH`). Nothing waits on purpose: a lone
    item commits at once, as with `Database.write`.
    """

    def __init__(self, db: Database, checkpointer: _Checkpointer | None = None):
        self._db = db
        self._checkpointer = checkpointer
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, run: Batch[Item, T], value: Item, order: str) -> Future[T]:
        item = _Item(run, value, order)
        self._queue.put(item)
        return item.future

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=5)
        if self._checkpointer is not None:
            self._checkpointer.stop()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch: list[_Item] = []
            stop = first is _STOP
            if isinstance(first, _Item):
                batch.append(first)
            while not stop and len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(more, _Item):
                    batch.append(more)
                else:
                    stop = True
            if batch:
                batch.sort(key=lambda i: i.order)  # stable: same-key items keep their order
                self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Item]) -> None:
        try:
            with self._db.write() as conn:
                runs: dict[Batch[Any, Any], list[_Item]] = {}
                for item in batch:
                    runs.setdefault(item.run, []).append(item)
                for run, items in runs.items():
                    answers = run(conn, [i.value for i in items])
                    for item, answer in zip(items, answers, strict=True):
                        item.answer = answer
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, Unavailable):
                # One item failed in the database (the transaction is lost): give every
                # item a transaction of its own, so only that one fails.
                log.warning("group commit of %d items failed (%s); one by one", len(batch), exc)
                for item in batch:
                    item.answer = None
                    self._commit([item])
                return
            log.warning("group commit of %d items failed: %s", len(batch), exc)
            for item in batch:
                item.future.set_exception(exc)
            return
        for item in batch:
            if isinstance(item.answer, ReelgenError):
                item.future.set_exception(item.answer)
            else:
                item.future.set_result(item.answer)
        if self._checkpointer is not None:
            self._checkpointer.poke()


class _Checkpointer:
    """Copies SQLite's WAL back into the database file from its own thread.

    Left to SQLite, the commit that fills the WAL to 1000 pages checkpoints it (writes and
    fsyncs the database file) before it returns, and with group commit every submit of
    that batch waits for it. Here commits only append to the WAL; this thread checkpoints
    (PASSIVE: it never blocks writers or readers) at most every `CHECKPOINT_EVERY_S` while
    commits happen. Durability is the WAL's: a commit is on disk once its WAL fsync is.
    A commit still checkpoints itself past `WAL_SAFETY_PAGES` (this thread fell behind).
    """

    def __init__(self, engine: Engine):
        self._engine = engine
        self._wake = threading.Event()
        self._stopping = threading.Event()

        @event.listens_for(engine, "connect")
        def _lazy_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={WAL_SAFETY_PAGES}")

        engine.pool.dispose()  # connections opened before this keep the default otherwise
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """A commit appended to the WAL."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                raw = self._engine.raw_connection()
                try:
                    raw.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                finally:
                    raw.close()
            except Exception as exc:  # the next commit's checkpoint, or the next try, catches up
                log.warning("WAL checkpoint failed: %s", exc)
            self._stopping.wait(CHECKPOINT_EVERY_S)


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
