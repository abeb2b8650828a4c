"""Where SQLite and PostgreSQL differ, behind one interface; nothing outside `store/` asks
which database it runs on.

PostgreSQL sends the worker's two per-job writes (claim, complete) as single statements
on the driver, locks the submitting user's row, pages the event log by transaction id and
keeps a session-held advisory lock per worker. SQLite serialises writers with
`BEGIN IMMEDIATE`, so it needs none of that.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Connection, Insert, Table, exc, text
from sqlalchemy.dialects import postgresql, sqlite

from reelgen.domain import events as ev
from reelgen.domain.jobs import Job
from reelgen.store import queries as q

if TYPE_CHECKING:
    from reelgen.store.database import Database

LAST_ID = 2**63 - 1


class Backend(Protocol):
    name: str
    calls_are_inline: bool
    """Calls return in microseconds (an in-process library), faster than a thread hand-off."""
    autocommit_reads: bool
    """Single-statement reads use a pool of autocommit connections (no BEGIN/COMMIT)."""
    keeps_a_wal: bool
    """The process checkpoints the write-ahead log itself (SQLite WAL mode)."""

    def process_write_lock(self) -> AbstractContextManager[object]:
        """Held around every write transaction of this process."""
        ...

    def relax_durability(self, conn: Connection) -> None:
        """Lets this transaction's commit answer before it reaches disk, where supported."""

    def lock_user(self, conn: Connection, user_id: str) -> None:
        """Serialises one user's submits (quota checks must see each other)."""

    def insert_ignoring_conflicts(self, table: Table) -> Insert:
        """An INSERT that does nothing when a unique key already exists."""
        ...

    def claim(self, db: Database, params: dict[str, Any]) -> list[Job]:
        """Leases the jobs assigned to the worker, writes their `started` events and marks
        the worker seen, in one transaction (see `JobStore.claim`)."""
        ...

    def complete(self, db: Database, params: dict[str, Any]) -> bool:
        """Publishes a job's outputs under the lease fence with its `completed` event;
        False when the fence refused (see `JobStore.complete`)."""
        ...

    def bulk_update(self, update: q.BulkUpdate) -> Any:
        """The statement that applies `update` to many jobs at once (`run_bulk`)."""

    def run_bulk(
        self, conn: Connection, update: q.BulkUpdate, statement: Any, rows: Sequence[Sequence[Any]]
    ) -> list[str]:
        """Applies `update` to `rows` (one tuple per job, in `update.columns` order); returns
        the ids of the jobs it changed."""
        ...

    def events_page(self) -> Any:
        """SELECT of events after (`tx`, `id`) that no open transaction can still precede."""

    def head_cursor(self, conn: Connection) -> ev.EventCursor:
        """A cursor after every event already committed, before any still to come."""
        ...

    def held_session_keys(self, conn: Connection) -> set[int] | None:
        """Advisory-lock keys held by live sessions; None where sessions are not tracked."""

    def is_unavailable(self, error: BaseException) -> bool:
        """Whether `error` says the database is away or busy (retry later), not that the
        statement was wrong."""
        ...


def _driver_error(error: BaseException) -> BaseException:
    return error.orig if isinstance(error, exc.DBAPIError) and error.orig else error


class SqliteBackend:
    name = "sqlite"
    calls_are_inline = True
    autocommit_reads = False
    keeps_a_wal = True

    def process_write_lock(self) -> AbstractContextManager[object]:
        # One writer at a time: queueing this process's writers on a lock avoids SQLite's
        # sleep-and-retry busy handler, which stretches tail latency.
        return threading.Lock()

    def relax_durability(self, conn: Connection) -> None:
        return None  # `synchronous` is per connection; writes stay as configured

    def lock_user(self, conn: Connection, user_id: str) -> None:
        return None  # BEGIN IMMEDIATE already holds the database's write lock

    def insert_ignoring_conflicts(self, table: Table) -> Insert:
        return sqlite.insert(table).on_conflict_do_nothing()

    def claim(self, db: Database, params: dict[str, Any]) -> list[Job]:
        worker_id, now = params["worker_id"], params["now"]
        claimed: list[Job] = []
        with db.write() as conn:
            for chosen in conn.execute(q.assigned_jobs(), params).scalars().all():
                job = Job.from_row(
                    conn.execute(
                        q.claim_row(),
                        {**params, "claim_id": chosen, "claim_worker": worker_id, "claim_now": now},
                    ).one()
                )
                started = ev.Started(
                    attempt=job.attempt, worker_id=worker_id, resume_step=job.checkpoint_step
                )
                q.record_event(conn, job.id, started, now)
                claimed.append(job)
            current = claimed[0].id if claimed else None
            conn.execute(q.worker_seen(), {"w_id": worker_id, "w_now": now, "w_job": current})
        return claimed

    def complete(self, db: Database, params: dict[str, Any]) -> bool:
        bound = {
            "fence_id": params["fence_id"],
            "fence_token": params["fence_token"],
            "b_completed_at": params["now"],
            **{
                f"b_{k}": params[k]
                for k in ("expires_at", "video_key", "thumbnail_key", "spritesheet_key")
            },
        }
        with db.write() as conn:
            row = conn.execute(q.complete(), bound).first()
            if row is None:
                return False
            done = ev.Completed(attempt=row.attempt, first_step=params["first_step"])
            q.record_event(conn, params["fence_id"], done, params["now"])
        return True

    def bulk_update(self, update: q.BulkUpdate) -> Any:
        sets = ", ".join(f"{col} = :{name}" for col, name in update.sets)
        return text(f"UPDATE jobs SET {sets} WHERE jobs.id = :id AND {update.where} RETURNING id")

    def run_bulk(
        self, conn: Connection, update: q.BulkUpdate, statement: Any, rows: Sequence[Sequence[Any]]
    ) -> list[str]:
        # In-process: one short statement per job, each finding it by its unique index,
        # costs microseconds; a join against a JSON list would scan the table per row.
        names = [name for name, _ in update.columns]
        changed = []
        for row in rows:
            if conn.execute(statement, dict(zip(names, row, strict=True))).first():
                changed.append(str(row[0]))
        return changed

    def events_page(self) -> Any:
        return text(
            "SELECT id, tx, job_id, at, kind, data FROM job_events "
            "WHERE id > :after_id ORDER BY id LIMIT :limit"
        )

    def head_cursor(self, conn: Connection) -> ev.EventCursor:
        last = conn.execute(text("SELECT max(id) FROM job_events")).scalar()
        return ev.EventCursor(0, int(last or 0))

    def held_session_keys(self, conn: Connection) -> set[int] | None:
        return None

    def is_unavailable(self, error: BaseException) -> bool:
        if isinstance(error, exc.TimeoutError):
            return True
        cause = _driver_error(error)
        message = str(cause).lower()
        return isinstance(cause, sqlite3.OperationalError) and (
            "locked" in message or "busy" in message
        )


class PostgresBackend:
    name = "postgresql"
    calls_are_inline = False
    autocommit_reads = True
    keeps_a_wal = False

    def process_write_lock(self) -> AbstractContextManager[object]:
        return nullcontext()  # row locks serialise what must be

    def relax_durability(self, conn: Connection) -> None:
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")

    def lock_user(self, conn: Connection, user_id: str) -> None:
        conn.execute(q.lock_user(), {"user_id": user_id})

    def insert_ignoring_conflicts(self, table: Table) -> Insert:
        return postgresql.insert(table).on_conflict_do_nothing()

    def claim(self, db: Database, params: dict[str, Any]) -> list[Job]:
        with db.autocommit() as conn:
            rows = self._statement(conn, q.PG_CLAIM, params, every=True)
        return [Job.from_mapping(row) for row in rows]

    def complete(self, db: Database, params: dict[str, Any]) -> bool:
        with db.autocommit() as conn:
            return self._statement(conn, q.PG_COMPLETE, params) is not None

    def _statement(
        self, conn: Connection, sql: str, params: dict[str, Any], *, every: bool = False
    ) -> Any:
        """One statement straight on the psycopg connection; the first row as a dict (or,
        `every`, all of them)."""
        import psycopg
        from psycopg.rows import dict_row

        driver = conn.connection.driver_connection
        assert driver is not None
        try:
            with driver.cursor(row_factory=dict_row) as cur:
                cur.execute(sql, params)
                return cur.fetchall() if every else cur.fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            if driver.closed or driver.broken:
                conn.invalidate(error)  # the pool would hand the dead connection out again
            raise

    def bulk_update(self, update: q.BulkUpdate) -> Any:
        # unnest over one array per column: the planner sees how many rows come and looks
        # the jobs up by index instead of scanning the table (json_to_recordset would not).
        arrays = ", ".join(f"CAST(:c_{name} AS {kind}[])" for name, kind in update.columns)
        names = ", ".join(name for name, _ in update.columns)
        sets = ", ".join(f"{col} = r.{name}" for col, name in update.sets)
        return text(
            f"UPDATE jobs SET {sets} FROM unnest({arrays}) AS r({names}) "
            f"WHERE jobs.id = r.id AND {update.where} RETURNING jobs.id"
        )

    def run_bulk(
        self, conn: Connection, update: q.BulkUpdate, statement: Any, rows: Sequence[Sequence[Any]]
    ) -> list[str]:
        params = {
            f"c_{name}": [row[i] for row in rows] for i, (name, _) in enumerate(update.columns)
        }
        return [str(r[0]) for r in conn.execute(statement, params)]

    def events_page(self) -> Any:
        # Below the snapshot's xmin every transaction has ended, so no event can still
        # appear there: the cursor never skips one that commits late.
        return text(
            "SELECT id, tx, job_id, at, kind, data FROM job_events "
            "WHERE (tx, id) > (:after_tx, :after_id) "
            "AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint "
            "ORDER BY tx, id LIMIT :limit"
        )

    def head_cursor(self, conn: Connection) -> ev.EventCursor:
        # Every transaction below the snapshot's xmin has ended: its events are history.
        # Those from xmin on (running now, or later) are all still ahead of the cursor.
        xmin = conn.execute(
            text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        ).scalar_one()
        return ev.EventCursor(int(xmin) - 1, LAST_ID)

    def held_session_keys(self, conn: Connection) -> set[int] | None:
        rows = conn.execute(
            text(
                "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
                "WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
            )
        ).all()
        return {int(r[0]) for r in rows}

    def is_unavailable(self, error: BaseException) -> bool:
        import psycopg

        if isinstance(error, exc.TimeoutError):
            return True
        if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
            return True
        # OperationalError covers a refused or broken connection, a server shutting down,
        # a session ended by the server, and conflicts that a retry resolves.
        return isinstance(_driver_error(error), psycopg.OperationalError | psycopg.InterfaceError)


def backend_for(dialect: str) -> Backend:
    if dialect == "sqlite":
        return SqliteBackend()
    if dialect == "postgresql":
        return PostgresBackend()
    raise ValueError(f"Unsupported database {dialect!r}; use SQLite or PostgreSQL.")
