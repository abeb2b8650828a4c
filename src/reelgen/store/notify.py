"""Wake-ups and progress between processes: PostgreSQL LISTEN/NOTIFY, or in-process only.

Three channels: `work` (a job became queued or a worker free: the dispatcher wakes at
once), `assigned` (the dispatcher gave jobs to these workers: they wake and claim) and
`progress` (a running job's status, stage and progress; API replicas fan it out to SSE
clients). With SQLite there is no cross-process channel: processes that share a SQLite
file fall back to polling, while everything inside one process (`reelgen serve`) is told
directly.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("reelgen.notify")

WORK_CHANNEL = "reelgen_work"
ASSIGNED_CHANNEL = "reelgen_assigned"
PROGRESS_CHANNEL = "reelgen_progress"
ALL_CHANNELS = frozenset({WORK_CHANNEL, ASSIGNED_CHANNEL, PROGRESS_CHANNEL})
PAYLOAD_LIMIT = 7000
"""Bytes of worker ids per `assigned` notification (PostgreSQL allows 8000)."""
LISTEN_POLL_S = 0.2
"""How often the listener looks up from its connection, so that `close` returns quickly."""

ProgressListener = Callable[[dict[str, Any]], None]


class Bus:
    """In-process delivery; the base for the PostgreSQL bus."""

    def __init__(self) -> None:
        self._work = threading.Condition()
        self._work_seq = 0
        self._assigned = threading.Condition()
        self._assigned_seq: dict[str, int] = {}
        self._listeners: list[ProgressListener] = []
        self._lock = threading.Lock()

    # work
    def work_available(self, model: str | None = None) -> None:
        """After a commit that queued work or freed a worker: wakes the dispatcher, in
        whichever process leads (a hint; it looks every round anyway)."""
        self.wake_local()

    def wake_local(self) -> None:
        """Wakes this process's waiters for work only (safe from a signal handler)."""
        with self._work:
            self._work_seq += 1
            self._work.notify_all()

    def work_mark(self) -> int:
        """Taken before looking for work, so an announcement made while looking is not missed."""
        with self._work:
            return self._work_seq

    def wait_for_work(self, timeout: float, since: int) -> bool:
        """Blocks until work is announced after `since` or `timeout` passes; True if announced."""
        with self._work:
            return self._work.wait_for(lambda: self._work_seq != since, timeout)

    # assignments
    def assigned(self, worker_ids: list[str]) -> None:
        """After the commit that gave jobs to these workers: wakes them (a hint; idle
        workers also claim on a timer)."""
        self._wake_workers(worker_ids)

    def _wake_workers(self, worker_ids: list[str]) -> None:
        with self._assigned:
            for worker_id in worker_ids:
                if worker_id in self._assigned_seq:
                    self._assigned_seq[worker_id] += 1
            self._assigned.notify_all()

    def wake_workers_local(self) -> None:
        """Wakes every waiting worker of this process (shutdown)."""
        with self._assigned:
            for worker_id in self._assigned_seq:
                self._assigned_seq[worker_id] += 1
            self._assigned.notify_all()

    def assignment_mark(self, worker_id: str) -> int:
        """Taken before claiming, so an assignment announced meanwhile is not missed."""
        with self._assigned:
            return self._assigned_seq.setdefault(worker_id, 0)

    def wait_for_assignment(self, worker_id: str, timeout: float, since: int) -> bool:
        """Blocks until `worker_id` is named after `since`, or `timeout`; True if named."""
        with self._assigned:
            return self._assigned.wait_for(
                lambda: self._assigned_seq.get(worker_id, 0) != since, timeout
            )

    def forget_worker(self, worker_id: str) -> None:
        with self._assigned:
            self._assigned_seq.pop(worker_id, None)

    # progress
    def add_progress_listener(self, listener: ProgressListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def remove_progress_listener(self, listener: ProgressListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def publish_progress(self, update: dict[str, Any]) -> None:
        self._deliver(update)

    def _deliver(self, update: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(update)
            except Exception:
                log.exception("progress listener failed")

    def close(self) -> None:
        """Nothing to release in-process."""


class PostgresBus(Bus):
    """LISTENs on its own connection in a daemon thread; NOTIFYs on another.

    Work announcements go out from a thread of their own, after the commit they announce
    and coalesced per model while one is being sent: a NOTIFY inside the submit transaction
    would hold PostgreSQL's cluster-wide notify lock through that commit's fsync,
    serialising every replica's submit commits."""

    def __init__(self, dsn: str, listen: frozenset[str] = ALL_CHANNELS):
        """`listen`: the channels this process needs; PostgreSQL sends every LISTENing
        connection every notification of its channels, so roles listen to theirs only."""
        super().__init__()
        self._dsn = dsn
        self._channels = sorted(listen)
        self._stop = threading.Event()
        self._publish_conn: Any = None
        self._publish_lock = threading.Lock()
        self._announce = threading.Condition()
        self._pending: set[str] = set()
        self._pending_workers: dict[str, None] = {}
        self._thread = threading.Thread(target=self._listen, name="pg-listener", daemon=True)
        self._thread.start()
        self._announcer = threading.Thread(
            target=self._announce_loop, name="pg-announcer", daemon=True
        )
        self._announcer.start()

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    for channel in self._channels:
                        conn.execute(f"LISTEN {channel}")
                    # Anything announced while we were not listening is found by polling.
                    self.wake_local()
                    self.wake_workers_local()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=LISTEN_POLL_S):
                            if note.channel == WORK_CHANNEL:
                                self.wake_local()
                            elif note.channel == ASSIGNED_CHANNEL:
                                self._wake_workers(note.payload.split(","))
                            else:
                                self._deliver(json.loads(note.payload))
            except Exception as exc:
                if not self._stop.is_set():
                    log.warning("LISTEN connection lost (%s); reconnecting", exc)
                    self._stop.wait(1.0)

    def _notify(self, channel: str, payload: str) -> None:
        import psycopg

        with self._publish_lock:
            for attempt in (1, 2):
                try:
                    if self._publish_conn is None or self._publish_conn.closed:
                        self._publish_conn = psycopg.connect(
                            self._dsn, autocommit=True, connect_timeout=5
                        )
                    self._publish_conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
                    return
                except psycopg.OperationalError:
                    self._publish_conn = None
                    if attempt == 2:
                        raise

    def work_available(self, model: str | None = None) -> None:
        self.wake_local()
        with self._announce:
            self._pending.add(model or "")
            self._announce.notify()

    def assigned(self, worker_ids: list[str]) -> None:
        self._wake_workers(worker_ids)
        with self._announce:
            self._pending_workers.update(dict.fromkeys(worker_ids))
            self._announce.notify()

    def _announce_loop(self) -> None:
        while True:
            with self._announce:
                self._announce.wait_for(
                    lambda: self._pending or self._pending_workers or self._stop.is_set()
                )
                models, self._pending = sorted(self._pending), set()
                named, self._pending_workers = list(self._pending_workers), {}
            notes = [(WORK_CHANNEL, m) for m in models]
            notes += [(ASSIGNED_CHANNEL, p) for p in _chunks(named, PAYLOAD_LIMIT)]
            for channel, payload in notes:
                try:
                    self._notify(channel, payload)
                except Exception as exc:  # a hint: waiters look on a timer anyway
                    log.warning("could not announce on %s: %s", channel, exc)
            if self._stop.is_set():
                return

    def publish_progress(self, update: dict[str, Any]) -> None:
        try:
            self._notify(PROGRESS_CHANNEL, json.dumps(update))
        except Exception as exc:  # progress is best effort; the heartbeat carries it too
            log.warning("could not publish progress: %s", exc)

    def close(self) -> None:
        with self._announce:
            self._stop.set()
            self._announce.notify()
        self._announcer.join(timeout=3)
        with self._publish_lock:
            if self._publish_conn is not None:
                self._publish_conn.close()
        self._thread.join(timeout=3)


def _chunks(names: list[str], limit: int) -> list[str]:
    """Comma-joined runs of `names`, each at most `limit` bytes."""
    out: list[str] = []
    run: list[str] = []
    size = 0
    for name in names:
        if run and size + len(name) + 1 > limit:
            out.append(",".join(run))
            run, size = [], 0
        run.append(name)
        size += len(name) + 1
    if run:
        out.append(",".join(run))
    return out


def open_bus(database_url: str, listen: frozenset[str] = ALL_CHANNELS) -> Bus:
    if database_url.startswith(("postgresql://", "postgresql+psycopg://")):
        dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
        return PostgresBus(dsn, listen)
    return Bus()
