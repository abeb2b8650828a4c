"""The durable queue: job rows, their events, leases, checkpoints and idempotency keys.

Every state change happens in one transaction together with its `job_events` row.
Worker-side writes are fenced by the lease token: a worker that lost its lease cannot
heartbeat, checkpoint or publish.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    Connection,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)

from reelgen.domain import events as ev
from reelgen.domain.errors import Conflict, LeaseLost, ReelgenError
from reelgen.domain.events import EventCursor, JobEvent
from reelgen.domain.jobs import DAY_S, Job, Stage, Status, Tier, quota_class
from reelgen.store import queries as q
from reelgen.store.database import Database
from reelgen.store.schema import event_cursors, job_events, jobs, pool_targets, workers


@dataclass(frozen=True, slots=True)
class UsageView:
    """What admission control needs to know about a user, read inside the submit transaction."""

    active: int
    today: int
    oldest_today: float | None
    today_gpu_s: float = 0.0
    """Estimated GPU-seconds of the jobs counted in `today`."""


class Submitted(NamedTuple):
    job: Job
    created: bool


@dataclass(frozen=True, slots=True)
class _Submit:
    row: dict[str, Any]
    admit: Callable[[UsageView], None]
    idempotency: tuple[str, str] | None
    request_hash: str
    audit: list[dict[str, Any]] | None = None
    """The input safety verdicts' audit rows; written with the job (its id filled in)."""

    @property
    def user_id(self) -> str:
        return str(self.row["user_id"])

    @property
    def quota_key(self) -> tuple[str, tuple[str, ...]]:
        """(user, the tiers whose jobs count toward this one's limits)."""
        return self.user_id, tuple(t.value for t in quota_class(Tier(self.row["tier"])))


class _Window:
    """A user's usage inside one submit batch: read once under the user's row lock, then
    counted forward as the batch admits jobs."""

    def __init__(self, conn: Connection, user_id: str, tiers: tuple[str, ...], since: float):
        self._conn, self._user_id, self._tiers = conn, user_id, list(tiers)
        self._read(since)

    def _read(self, since: float) -> None:
        params = {"user_id": self._user_id, "tiers": self._tiers, "since": since}
        active, today, gpu_s, oldest = self._conn.execute(q.user_usage(), params).one()
        self.since, self.usage = since, UsageView(active, today, oldest, float(gpu_s))

    def at(self, since: float) -> UsageView:
        """The usage for a window starting at `since` (never before the one read). Only the
        window's start moved since the read; when a job counted may have left it, read again."""
        oldest = self.usage.oldest_today
        if oldest is not None and oldest <= since:
            self._read(since)
        return self.usage

    def admitted(self, now: float, gpu_s: float) -> None:
        u = self.usage
        oldest = now if u.oldest_today is None else min(u.oldest_today, now)
        self.usage = UsageView(u.active + 1, u.today + 1, oldest, u.today_gpu_s + gpu_s)


@dataclass(frozen=True, slots=True)
class WorkerFlags:
    cancel_requested: bool
    preempt_requested: bool


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    queued: list[tuple[str, str, int, float]]
    """(model, tier, count, oldest created_at)"""
    active: list[tuple[str, str, int]]
    """(model, status, count) for queued and in_progress"""
    workers: list[tuple[str, int, int]]
    """(model, live, busy)"""
    pools: list[tuple[PoolTarget, float]]
    """The dispatcher's desired workers per pool, with when it computed them."""


class SchedulingRow(NamedTuple):
    """A queued or running job as the dispatcher sees it."""

    id: str
    user_id: str
    tier: str
    model: str
    status: str
    estimated_seconds: float
    created_at: float
    not_before: float
    preemptions: int
    assigned_worker: str | None
    worker_id: str | None
    started_at: float | None
    checkpoint_step: int
    total_steps: int
    stage: str
    batch_key: str | None
    batch_gain: float


_SCHEDULING_COLUMNS = tuple(getattr(jobs.c, name) for name in SchedulingRow._fields)


class WorkerRow(NamedTuple):
    id: str
    model: str
    hostname: str
    heartbeat_at: float
    current_job_id: str | None
    session_key: int | None
    holds: tuple[str, ...]


class PoolTarget(NamedTuple):
    """One model pool's desired size and the load it was computed from."""

    model: str
    desired: int
    live: int
    busy: int
    queued: int
    backlog_gpu_s: float
    arrival_gpu_s_per_s: float
    late: int = 0
    """Queued jobs past their deadline (batch)."""


@dataclass(frozen=True, slots=True)
class Reaped:
    job_id: str
    attempt: int
    requeued: bool
    counted: bool
    """Whether the loss counted toward the poison limit."""


@dataclass(frozen=True, slots=True)
class RunningOnWorker:
    """A running job and the worker holding it, for the controller's liveness checks."""

    job_id: str
    lease_token: str
    worker_id: str
    session_key: int | None


def _resolved(
    answers: Sequence[Submitted | ReelgenError | int | None], i: int
) -> Submitted | ReelgenError:
    answer = answers[i]
    if isinstance(answer, int):  # the same key as an earlier item of the batch
        first = answers[answer]
        assert isinstance(first, Submitted | ReelgenError)
        return Submitted(first.job, False) if isinstance(first, Submitted) else first
    assert answer is not None
    return answer


def _event_from_row(row: Any) -> JobEvent:
    return JobEvent(
        cursor=EventCursor(int(row.tx), int(row.id)),
        job_id=row.job_id,
        at=row.at,
        payload=ev.decode(row.kind, row.data),
    )


class JobStore:
    def __init__(self, db: Database):
        self.db = db
        self._assign = db.backend.bulk_update(q.ASSIGN)
        self._forecast = db.backend.bulk_update(q.FORECAST)
        self._forget = db.backend.bulk_update(q.FORGET_PROMPT)

    # ---- submission -------------------------------------------------------------------
    def submit(
        self,
        row: dict[str, Any],
        *,
        admit: Callable[[UsageView], None],
        idempotency: tuple[str, str] | None,
        request_hash: str,
    ) -> tuple[Job, bool]:
        """Inserts the job unless an idempotency key already names one.

        Returns the job and whether it was created. `admit` raises to refuse the job.
        Blocks until the job is committed; see `submit_future`.
        """
        future = self.submit_future(
            row, admit=admit, idempotency=idempotency, request_hash=request_hash
        )
        done = future.result()
        return done.job, done.created

    def submit_future(
        self,
        row: dict[str, Any],
        *,
        admit: Callable[[UsageView], None],
        idempotency: tuple[str, str] | None,
        request_hash: str,
        audit: list[dict[str, Any]] | None = None,
    ) -> Future[Submitted]:
        """`submit` without waiting: the future resolves once the job is committed.

        Concurrent submits share one transaction (`Database.batched`, `_submit_batch`).
        `audit`: the moderation audit rows of the submit, written in the same transaction
        (with the job's id; with none when the submit is refused).
        """
        item = _Submit(row, admit, idempotency, request_hash, audit)
        return self.db.batched(self._submit_batch, item, order=item.user_id)

    def _submit_batch(
        self, conn: Connection, batch: list[_Submit]
    ) -> list[Submitted | ReelgenError]:
        """Admits a batch of submits and writes them with one statement per table.

        Each user's row is locked (in user order, as every batch does) before their usage
        is read, so quota checks across API replicas see each other's jobs; inside the
        batch, each check sees the batch's earlier jobs of the same user."""
        windows: dict[tuple[str, tuple[str, ...]], _Window] = {}
        locked: set[str] = set()
        for s in sorted(batch, key=lambda s: (s.user_id, s.row["created_at"])):
            if s.user_id not in locked:
                self.db.backend.lock_user(conn, s.user_id)
                locked.add(s.user_id)
            if s.quota_key not in windows:
                windows[s.quota_key] = _Window(
                    conn, s.user_id, s.quota_key[1], s.row["created_at"] - DAY_S
                )
        answers: list[Submitted | ReelgenError | int | None] = [None] * len(batch)
        """A Submitted or refusal, or the index of the earlier item whose job this one is."""
        keyed: dict[tuple[str, str], int] = {}
        new: list[int] = []
        for i, s in enumerate(batch):
            try:
                if s.idempotency is not None:
                    answers[i] = self._idempotent(conn, s, batch, keyed)
                    if answers[i] is not None:
                        continue
                    keyed[(s.user_id, s.idempotency[1])] = i
                window = windows[s.quota_key]
                s.admit(window.at(s.row["created_at"] - DAY_S))
            except ReelgenError as refusal:
                answers[i] = refusal
                continue
            window.admitted(s.row["created_at"], float(s.row["estimated_seconds"]))
            new.append(i)
        if new:
            rows = conn.execute(q.insert_jobs(), [batch[i].row for i in new]).all()
            events: list[dict[str, Any]] = []
            for i, row in zip(new, rows, strict=True):
                job = Job.from_row(row)
                answers[i] = Submitted(job, True)
                created = ev.Created(
                    operation=job.spec.operation.value, parent_id=job.spec.parent_id
                )
                events.append(q.event_params(job.id, created, job.created_at))
            q.record_events(conn, events)
            keys = [
                {
                    "user_id": batch[i].user_id,
                    "key": key[1],
                    "request_hash": batch[i].request_hash,
                    "job_id": batch[i].row["id"],
                    "created_at": batch[i].row["created_at"],
                }
                for i in new
                if (key := batch[i].idempotency) is not None
            ]
            if keys:
                conn.execute(q.insert_idempotency_key(), keys)
        resolved = [_resolved(answers, i) for i in range(len(batch))]
        audits = [
            {**row, "job_id": a.job.id if isinstance(a, Submitted) else None}
            for s, a in zip(batch, resolved, strict=True)
            for row in s.audit or ()
        ]
        if audits:
            conn.execute(q.insert_audit(), audits)
        return resolved

    def _idempotent(
        self, conn: Connection, s: _Submit, batch: list[_Submit], keyed: dict[tuple[str, str], int]
    ) -> Submitted | int | None:
        """The job an earlier request with the same key made (in an earlier transaction, or
        as the index of an item of this batch), None for a new key; raises `Conflict` when
        the key came with a different request."""
        assert s.idempotency is not None
        earlier = keyed.get((s.user_id, s.idempotency[1]))
        if earlier is not None:
            found_hash: str = batch[earlier].request_hash
        else:
            existing = conn.execute(
                q.idempotent_job(), {"user_id": s.user_id, "key": s.idempotency[1]}
            ).first()
            if existing is None:
                return None
            found_hash = existing._request_hash
        if found_hash != s.request_hash:
            raise Conflict(
                "This Idempotency-Key was already used with a different request "
                "body; use a new key for a new request.",
                code="idempotency_key_reused",
            )
        return earlier if earlier is not None else Submitted(Job.from_row(existing), False)

    # ---- reads --------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """One job by id, read on the driver: this is every poll's query."""
        rows = self.db.fetch(q.job_by_id(), {"id": job_id})
        return Job.from_mapping(rows[0]) if rows else None

    def seq_for_user(self, user_id: str, job_id: str) -> int | None:
        """The list position of one of the user's jobs, deleted ones included, so that a
        pagination cursor stays valid when its video is deleted in between."""
        with self.db.read() as conn:
            return conn.execute(
                select(jobs.c.seq).where(jobs.c.id == job_id, jobs.c.user_id == user_id)
            ).scalar()

    def list_for_user(
        self, user_id: str, *, after_seq: int | None, limit: int, descending: bool
    ) -> list[Job]:
        query = select(jobs).where(jobs.c.user_id == user_id, jobs.c.deleted_at.is_(None))
        if after_seq is not None:
            query = query.where(jobs.c.seq < after_seq if descending else jobs.c.seq > after_seq)
        query = query.order_by(jobs.c.seq.desc() if descending else jobs.c.seq.asc()).limit(limit)
        with self.db.read() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def queue_snapshot(self, now: float, worker_alive_s: float = 60.0) -> QueueSnapshot:
        queued = jobs.c.status == Status.QUEUED.value
        with self.db.read() as conn:
            q_rows = conn.execute(
                select(jobs.c.model, jobs.c.tier, func.count(), func.min(jobs.c.created_at))
                .where(queued)
                .group_by(jobs.c.model, jobs.c.tier)
            ).all()
        with self.db.read() as conn:
            a_rows = conn.execute(
                select(jobs.c.model, jobs.c.status, func.count())
                .where(jobs.c.status.in_(q.ACTIVE_VALUES))
                .group_by(jobs.c.model, jobs.c.status)
            ).all()
        with self.db.read() as conn:
            w_rows = conn.execute(
                select(
                    workers.c.model,
                    func.count(),
                    func.count(workers.c.current_job_id),
                )
                .where(
                    workers.c.stopped_at.is_(None),
                    workers.c.heartbeat_at > now - worker_alive_s,
                )
                .group_by(workers.c.model)
            ).all()
        return QueueSnapshot(
            queued=[(r[0], r[1], int(r[2]), float(r[3])) for r in q_rows],
            active=[(r[0], r[1], int(r[2])) for r in a_rows],
            workers=[(r[0], int(r[1]), int(r[2])) for r in w_rows],
            pools=self.pool_targets(),
        )

    def job_states(self, job_ids: list[str]) -> list[tuple[str, str, str, int]]:
        """(id, status, stage, progress) of several jobs in one query."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.status, jobs.c.stage, jobs.c.progress).where(
                    jobs.c.id.in_(job_ids)
                )
            ).all()
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def events_after(self, job_id: str, after_id: int = 0) -> list[JobEvent]:
        """One job's events in the order they were written."""
        query = (
            select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.id > after_id)
            .order_by(job_events.c.id)
        )
        with self.db.read() as conn:
            return [_event_from_row(r) for r in conn.execute(query)]

    def read_events(self, after: EventCursor, limit: int = 500) -> list[JobEvent]:
        """All jobs' events after `after`, oldest first. Pages never skip an event: one whose
        transaction is still open is held back until it commits (see `Backend.events_page`)."""
        params = {"after_tx": after.tx, "after_id": after.id, "limit": limit}
        with self.db.read() as conn:
            rows = conn.execute(self.db.backend.events_page(), params).all()
        return [_event_from_row(r) for r in rows]

    def head_cursor(self) -> EventCursor:
        """Where a consumer that wants only what happens from now on starts."""
        with self.db.read() as conn:
            return self.db.backend.head_cursor(conn)

    def load_cursor(self, consumer: str) -> EventCursor:
        with self.db.read() as conn:
            row = conn.execute(
                select(event_cursors.c.tx, event_cursors.c.event_id).where(
                    event_cursors.c.consumer == consumer
                )
            ).first()
        return ev.START if row is None else EventCursor(int(row[0]), int(row[1]))

    def save_cursor(self, consumer: str, cursor: EventCursor, now: float) -> None:
        """Durable, so the consumer resumes where it stopped after a crash."""
        with self.db.write() as conn:
            done = conn.execute(
                update(event_cursors)
                .where(event_cursors.c.consumer == consumer)
                .values(tx=cursor.tx, event_id=cursor.id, updated_at=now)
            )
            if not done.rowcount:
                conn.execute(
                    insert(event_cursors).values(
                        consumer=consumer, tx=cursor.tx, event_id=cursor.id, updated_at=now
                    )
                )

    # ---- user actions -------------------------------------------------------------------
    def request_cancel(self, job_id: str, now: float) -> Job:
        """Queued jobs end at once; running ones are flagged for their worker."""
        with self.db.write() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update()).one()
            job = Job.from_row(row)
            if job.status is Status.QUEUED:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        **_ended(
                            Status.CANCELLED,
                            "cancelled",
                            "The job was cancelled before it started.",
                            now,
                        )
                    )
                )
                cancelled = ev.Cancelled(while_status="queued", attempt=job.attempt, step=job.step)
                q.record_event(conn, job_id, cancelled, now)
            elif job.status is Status.IN_PROGRESS and not job.cancel_requested:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
                q.record_event(conn, job_id, ev.CancelRequested(step=job.step), now)
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
        return Job.from_row(row)

    def review(self, job_id: str, *, approve: bool, reviewer: str, now: float) -> Job | None:
        """Ends a review hold: an approved job is queued from now on, a rejected one fails
        with `moderation_blocked`. None if the job is not held for review."""
        with self.db.write() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update()).first()
            if (
                row is None
                or row.deleted_at is not None
                or row.status != Status.QUEUED.value
                or row.stage != Stage.AWAITING_REVIEW.value
            ):
                return None
            job = Job.from_row(row)
            decision = "approve" if approve else "reject"
            q.record_event(conn, job_id, ev.Reviewed(decision=decision, reviewer=reviewer), now)
            if approve:
                values: dict[str, Any] = {"stage": Stage.WAITING_FOR_GPU.value, "not_before": now}
                after: ev.Payload = ev.StageChanged(
                    attempt=job.attempt, stage=Stage.WAITING_FOR_GPU.value
                )
            else:
                values = _ended(
                    Status.FAILED,
                    "moderation_blocked",
                    "The prompt was rejected in content review.",
                    now,
                )
                after = ev.Failed(attempt=job.attempt, code="moderation_blocked", step=0)
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
            q.record_event(conn, job_id, after, now)
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
        return Job.from_row(row)

    def awaiting_review(self, limit: int = 100) -> list[Job]:
        """Jobs held for review, oldest first."""
        query = (
            select(jobs)
            .where(
                jobs.c.status == Status.QUEUED.value,
                jobs.c.stage == Stage.AWAITING_REVIEW.value,
                jobs.c.deleted_at.is_(None),
            )
            .order_by(jobs.c.seq)
            .limit(limit)
        )
        with self.db.read() as conn:
            return [Job.from_row(row) for row in conn.execute(query)]

    def request_preempt(self, job_id: str, now: float) -> bool:
        """Asks the running job's worker to checkpoint and hand the job back."""
        with self.db.write() as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == Status.IN_PROGRESS.value)
                .values(preempt_requested=True)
            )
            if result.rowcount:
                q.record_event(conn, job_id, ev.PreemptRequested(), now)
        return bool(result.rowcount)

    def mark_deleted(self, job_id: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    deleted_at=now,
                    video_key=None,
                    thumbnail_key=None,
                    spritesheet_key=None,
                    checkpoint_key=None,
                )
            )
            q.record_event(conn, job_id, ev.Deleted(), now)

    # ---- workers ------------------------------------------------------------------------
    def register_worker(
        self,
        worker_id: str,
        model: str,
        hostname: str,
        now: float,
        *,
        session_key: int | None = None,
        holds: Sequence[str] = (),
    ) -> None:
        """`session_key`: the advisory lock the worker's session holds (see `WorkerSession`);
        `holds`: the models it serves, the one on its accelerator first (`model`)."""
        with self.db.write() as conn:
            conn.execute(
                insert(workers).values(
                    id=worker_id,
                    model=model,
                    hostname=hostname,
                    started_at=now,
                    heartbeat_at=now,
                    session_key=session_key,
                    holds=json.dumps(list(holds)),
                )
            )

    def report_holds(self, worker_id: str, holds: Sequence[str]) -> None:
        """After a model switch: the models it serves, the one on its accelerator first."""
        with self.db.write(durable=False) as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(holds=json.dumps(list(holds)))
            )

    def stop_worker(self, worker_id: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(workers)
                .where(workers.c.id == worker_id)
                .values(stopped_at=now, current_job_id=None)
            )

    def claim(
        self,
        *,
        worker_id: str,
        now: float,
        lease_seconds: float,
        lease_token: str,
    ) -> list[Job]:
        """Takes the jobs the dispatcher assigned to this worker (several: a batch, run
        together), if any, in one transaction, all under one lease token; either way the
        worker's row is marked as seen (its idle heartbeat). Which jobs a worker runs is the
        policy's decision (`controller.dispatch`), never the claim's.

        Claims are not flushed to disk before the answer (PostgreSQL `synchronous_commit=off`):
        a claim lost in a server crash leaves the job queued, and its worker is fenced out.
        """
        params = {
            "now": now,
            "worker_id": worker_id,
            "token": lease_token,
            "expires": now + lease_seconds,
        }
        return self.db.backend.claim(self.db, params)

    # ---- dispatching --------------------------------------------------------------------
    def scheduling_rows(self, job_ids: Sequence[str]) -> dict[str, SchedulingRow]:
        """What the dispatcher needs of these jobs, by id (deleted or unknown ones absent)."""
        found: dict[str, SchedulingRow] = {}
        ids = list(job_ids)
        for start in range(0, len(ids), 500):
            query = select(*_SCHEDULING_COLUMNS).where(
                jobs.c.id.in_(ids[start : start + 500]), jobs.c.deleted_at.is_(None)
            )
            with self.db.read() as conn:
                for row in conn.execute(query):
                    found[row.id] = SchedulingRow(*row)
        return found

    def active_rows(self) -> list[SchedulingRow]:
        """Every queued and running job: the dispatcher's starting point."""
        query = select(*_SCHEDULING_COLUMNS).where(
            jobs.c.status.in_(q.ACTIVE_VALUES), jobs.c.deleted_at.is_(None)
        )
        with self.db.read() as conn:
            return [SchedulingRow(*row) for row in conn.execute(query)]

    def live_workers(self) -> list[WorkerRow]:
        """Workers that have not stopped, with what they last reported."""
        query = (
            select(
                workers.c.id,
                workers.c.model,
                workers.c.hostname,
                workers.c.heartbeat_at,
                workers.c.current_job_id,
                workers.c.session_key,
                workers.c.holds,
            )
            .where(workers.c.stopped_at.is_(None))
            .order_by(workers.c.started_at, workers.c.id)
        )
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [
            WorkerRow(r[0], r[1], r[2], float(r[3]), r[4], r[5], tuple(json.loads(r[6] or "[]")))
            for r in rows
        ]

    def assign(self, pairs: Sequence[tuple[str, str]]) -> set[str]:
        """Gives each queued job (id, worker) to its worker; returns the jobs that were still
        queued and unassigned (the others were cancelled or assigned meanwhile). Not flushed
        before the answer: an assignment lost in a server crash leaves its job queued, and the
        next dispatcher gives it out again."""
        if not pairs:
            return set()
        with self.db.write(durable=False) as conn:
            return set(self.db.backend.run_bulk(conn, q.ASSIGN, self._assign, pairs))

    def save_forecasts(self, forecasts: Sequence[tuple[str, int, float | None]]) -> None:
        """Stores (job, queue position, predicted start) for jobs still queued."""
        if not forecasts:
            return
        with self.db.write(durable=False) as conn:
            self.db.backend.run_bulk(conn, q.FORECAST, self._forecast, forecasts)

    def unassign(self, job_id: str, worker_id: str) -> bool:
        """Takes an unclaimed assignment back; False when the worker claimed it already."""
        with self.db.write(durable=False) as conn:
            result = conn.execute(
                update(jobs)
                .where(
                    jobs.c.id == job_id,
                    jobs.c.assigned_worker == worker_id,
                    jobs.c.status == Status.QUEUED.value,
                )
                .values(assigned_worker=None)
            )
        return bool(result.rowcount)

    def clear_assignments(self) -> int:
        """A new dispatcher starts from no assignments: those of its predecessor are void."""
        with self.db.write(durable=False) as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.assigned_worker.is_not(None), jobs.c.status == Status.QUEUED.value)
                .values(assigned_worker=None)
            )
        return int(result.rowcount)

    def save_pool_targets(self, targets: Sequence[PoolTarget], now: float) -> None:
        with self.db.write(durable=False) as conn:
            conn.execute(delete(pool_targets))
            if targets:
                conn.execute(
                    insert(pool_targets),
                    [{**t._asdict(), "updated_at": now} for t in targets],
                )

    def pool_targets(self) -> list[tuple[PoolTarget, float]]:
        """The leading controller's latest autoscaling answer per pool, with its time."""
        with self.db.read() as conn:
            rows = conn.execute(select(pool_targets).order_by(pool_targets.c.model)).all()
        return [
            (
                PoolTarget(
                    r.model,
                    int(r.desired),
                    int(r.live),
                    int(r.busy),
                    int(r.queued),
                    float(r.backlog_gpu_s),
                    float(r.arrival_gpu_s_per_s),
                    int(r.late),
                ),
                float(r.updated_at),
            )
            for r in rows
        ]

    def leased_with(self, worker_id: str, lease_token: str) -> list[Job]:
        """The jobs a claim with this token took, if that claim committed although its
        answer was lost (the database went away at that moment)."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(jobs)
                .where(
                    jobs.c.status == Status.IN_PROGRESS.value,
                    jobs.c.lease_token == lease_token,
                    jobs.c.worker_id == worker_id,
                )
                .order_by(jobs.c.seq)
            ).all()
        return [Job.from_row(row) for row in rows]

    def _fenced(
        self, conn: Connection, job_id: str, token: str, statement: Any, params: dict[str, Any]
    ) -> Any:
        """Runs a worker's UPDATE only while it still holds the lease (the fencing token)."""
        bound = {
            "fence_id": job_id,
            "fence_token": token,
            **{f"b_{k}": v for k, v in params.items()},
        }
        row = conn.execute(statement, bound).first()
        if row is None:
            raise LeaseLost(f"Lease on {job_id} is no longer held by this worker.")
        return row

    def _fenced_values(self, conn: Connection, job_id: str, token: str, **values: Any) -> Any:
        statement = (
            update(jobs)
            .where(*q.fence())
            .values(**values)
            .returning(jobs.c.attempt, jobs.c.step, jobs.c.checkpoint_step)
        )
        return self._fenced(conn, job_id, token, statement, {})

    def heartbeat(
        self,
        job_id: str,
        token: str,
        *,
        now: float,
        lease_seconds: float,
        step: int,
        total_steps: int,
        progress: int,
        stage: Stage,
        stage_changed: bool = False,
    ) -> WorkerFlags:
        """Extends the lease and records progress; answers with the user's and scheduler's asks."""
        with self.db.write(durable=False) as conn:
            row = self._fenced(
                conn,
                job_id,
                token,
                q.heartbeat(),
                {
                    "lease_expires_at": now + lease_seconds,
                    "step": step,
                    "total_steps": total_steps,
                    "progress": progress,
                    "stage": stage.value,
                },
            )
            if stage_changed:
                q.record_event(
                    conn, job_id, ev.StageChanged(attempt=row.attempt, stage=stage.value), now
                )
                conn.execute(q.worker_alive(), {"w_id": row.worker_id, "w_now": now})
        return WorkerFlags(
            cancel_requested=bool(row.cancel_requested),
            preempt_requested=bool(row.preempt_requested),
        )

    def finishing(self, job_id: str, token: str, *, worker_id: str, now: float) -> None:
        """Records that the attempt's last model step has begun (`ev.Finishing`): the
        dispatcher may give its worker the next job (the worker is marked seen, so that it
        is not taken for a silent one). A hint: not flushed before the answer, since losing
        it only means the worker is seen free when the step ends."""
        statement = select(jobs.c.attempt).where(*q.fence()).with_for_update()
        with self.db.write(durable=False) as conn:
            row = self._fenced(conn, job_id, token, statement, {})
            event = ev.Finishing(attempt=row.attempt, worker_id=worker_id)
            q.record_event(conn, job_id, event, now)
            conn.execute(q.worker_alive(), {"w_id": worker_id, "w_now": now})

    def save_checkpoint(self, job_id: str, token: str, *, step: int, key: str, now: float) -> None:
        """Not flushed before the answer: losing it in a server crash costs one interval."""
        with self.db.write(durable=False) as conn:
            row = self._fenced_values(conn, job_id, token, checkpoint_step=step, checkpoint_key=key)
            q.record_event(conn, job_id, ev.Checkpointed(attempt=row.attempt, step=step), now)

    def complete(
        self,
        job_id: str,
        token: str,
        *,
        now: float,
        expires_at: float,
        video_key: str,
        thumbnail_key: str,
        spritesheet_key: str,
        first_step: int,
    ) -> None:
        """Publishes the outputs; `first_step` is the first step this attempt computed."""
        done = self.db.backend.complete(
            self.db,
            {
                "fence_id": job_id,
                "fence_token": token,
                "now": now,
                "expires_at": expires_at,
                "video_key": video_key,
                "thumbnail_key": thumbnail_key,
                "spritesheet_key": spritesheet_key,
                "first_step": first_step,
            },
        )
        if not done:
            raise LeaseLost(f"Lease on {job_id} is no longer held by this worker.")

    def finish(
        self,
        job_id: str,
        token: str,
        *,
        status: Status,
        code: str,
        message: str,
        now: float,
        refund: bool = False,
    ) -> None:
        """Ends a running job without output; `refund` gives the daily quota back."""
        with self.db.write() as conn:
            row = self._fenced_values(
                conn,
                job_id,
                token,
                **_ended(status, code, message, now),
                lease_token=None,
                lease_expires_at=None,
                checkpoint_key=None,
                quota_refunded=refund,
            )
            payload: ev.Payload
            if status is Status.CANCELLED:
                payload = ev.Cancelled(
                    while_status="in_progress", attempt=row.attempt, step=row.step
                )
            else:
                payload = ev.Failed(attempt=row.attempt, code=code, step=row.step)
            q.record_event(conn, job_id, payload, now)

    def release(self, job_id: str, token: str, *, now: float, reason: str) -> None:
        """Hands a running job back to the queue (drain, preemption); the attempt is not held
        against it, a preemption is counted (the policy limits them per job)."""
        with self.db.write() as conn:
            row = self._fenced_values(
                conn,
                job_id,
                token,
                status=Status.QUEUED.value,
                stage=Stage.WAITING_FOR_GPU.value,
                attempt=jobs.c.attempt - 1,
                worker_id=None,
                lease_token=None,
                lease_expires_at=None,
                not_before=now,
                preempt_requested=False,
                preemptions=jobs.c.preemptions + int(reason == ev.PREEMPTED),
            )
            q.record_event(conn, job_id, ev.Released(reason=reason, step=row.checkpoint_step), now)

    # ---- recovery -----------------------------------------------------------------------
    def reap(
        self,
        *,
        now: float,
        only_expired: bool,
        backoff: Callable[[int], float],
    ) -> list[Reaped]:
        """Requeues jobs whose lease ran out (or, at an embedded restart, every running job),
        or fails them once lost workers made no progress `max_attempts` times."""
        cond = jobs.c.status == Status.IN_PROGRESS.value
        if only_expired:
            cond = and_(cond, jobs.c.lease_expires_at < now)
        detected_by = "lease" if only_expired else "restart"
        with self.db.write() as conn:
            rows = conn.execute(select(jobs).where(cond).with_for_update(skip_locked=True)).all()
            return [
                _lose(conn, Job.from_row(r), now, backoff, detected_by=detected_by) for r in rows
            ]

    def running_on_workers(self) -> list[RunningOnWorker]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.lease_token, jobs.c.worker_id, workers.c.session_key)
                .join(workers, workers.c.id == jobs.c.worker_id)
                .where(jobs.c.status == Status.IN_PROGRESS.value)
            ).all()
        return [RunningOnWorker(r[0], r[1], r[2], r[3]) for r in rows]

    def held_session_keys(self) -> set[int] | None:
        """Worker session locks held right now; None where the database cannot tell."""
        with self.db.read() as conn:
            return self.db.backend.held_session_keys(conn)

    def reap_sessions(
        self,
        lost: Sequence[RunningOnWorker],
        *,
        now: float,
        backoff: Callable[[int], float],
    ) -> list[Reaped]:
        """Requeues jobs whose worker's database session ended (the process died), if the
        same attempt still holds them, and marks those workers stopped."""
        out: list[Reaped] = []
        with self.db.write() as conn:
            for item in lost:
                row = conn.execute(
                    select(jobs)
                    .where(
                        jobs.c.id == item.job_id,
                        jobs.c.lease_token == item.lease_token,
                        jobs.c.status == Status.IN_PROGRESS.value,
                    )
                    .with_for_update(skip_locked=True)
                ).first()
                if row is not None:
                    out.append(_lose(conn, Job.from_row(row), now, backoff, detected_by="session"))
                conn.execute(
                    update(workers)
                    .where(workers.c.id == item.worker_id, workers.c.stopped_at.is_(None))
                    .values(stopped_at=now, current_job_id=None)
                )
        return out

    def expired_content(self, now: float, limit: int = 100) -> Sequence[Job]:
        """Videos past `expires_at` that still hold content, the longest expired first."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(jobs)
                .where(jobs.c.video_key.is_not(None), jobs.c.expires_at < now)
                .order_by(jobs.c.expires_at)
                .limit(limit)
            ).all()
        return [Job.from_row(r) for r in rows]

    def clear_content(self, job_ids: Sequence[str], now: float) -> list[str]:
        """Forgets the content keys of expired videos whose objects are gone, each with its
        `expired` event, in one transaction; returns the ones it changed (a second call, as
        after a crash between the two steps, changes nothing)."""
        if not job_ids:
            return []
        with self.db.write() as conn:
            cleared = list(
                conn.execute(
                    update(jobs)
                    .where(
                        jobs.c.id.in_(list(job_ids)),
                        jobs.c.video_key.is_not(None),
                        jobs.c.expires_at < now,
                    )
                    .values(video_key=None, thumbnail_key=None, spritesheet_key=None)
                    .returning(jobs.c.id)
                ).scalars()
            )
            if cleared:
                q.record_events(conn, [q.event_params(j, ev.Expired(), now) for j in cleared])
        return cleared

    def forget_prompts(self, created_before: float, limit: int) -> int:
        """Replaces the prompt of up to `limit` finished jobs created before `created_before`
        by its SHA-256 (`prompt_sha256`; the text becomes empty); returns how many. Running
        and queued jobs keep theirs until they end."""
        with self.db.write() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.prompt)
                .where(
                    jobs.c.prompt_sha256.is_(None),
                    jobs.c.created_at < created_before,
                    jobs.c.status.not_in(q.ACTIVE_VALUES),
                )
                .order_by(jobs.c.created_at)
                .limit(limit)
            ).all()
            forgotten = [
                (job_id, hashlib.sha256(prompt.encode()).hexdigest(), "") for job_id, prompt in rows
            ]
            changed = self.db.backend.run_bulk(conn, q.FORGET_PROMPT, self._forget, forgotten)
        return len(changed)

    def prune_idempotency_keys(self, older_than: float) -> int:
        with self.db.write() as conn:
            result = conn.execute(q.prune_idempotency(), {"before": older_than})
        return result.rowcount or 0


def _ended(status: Status, code: str, message: str, now: float) -> dict[str, Any]:
    """The columns every terminal transition without output sets."""
    return dict(
        status=status.value,
        stage=Stage.DONE.value,
        completed_at=now,
        error_code=code,
        error_message=message,
    )


def _lose(
    conn: Connection,
    job: Job,
    now: float,
    backoff: Callable[[int], float],
    *,
    detected_by: str,
) -> Reaped:
    """The worker running `job` is gone. The loss is held against the job only when its
    attempt checkpointed nothing past where it resumed: a job that kills every worker at the
    same step is poison, one whose workers die while it moves on is not."""
    counted = job.checkpoint_step <= job.attempt_start_step
    strikes = job.strikes + int(counted)
    lost = ev.WorkerLost(
        attempt=job.attempt,
        worker_id=job.worker_id,
        step=job.step,
        checkpoint_step=job.checkpoint_step,
        counted=counted,
        detected_by=detected_by,
    )
    q.record_event(conn, job.id, lost, now)
    values: dict[str, Any] = dict(
        worker_id=None, lease_token=None, lease_expires_at=None, strikes=strikes
    )
    if job.cancel_requested:
        values.update(_ended(Status.CANCELLED, "cancelled", "The job was cancelled.", now))
        cancelled = ev.Cancelled(while_status="in_progress", attempt=job.attempt, step=job.step)
        q.record_event(conn, job.id, cancelled, now)
    elif strikes >= job.max_attempts:
        message = (
            f"The worker running this job was lost {strikes} times at the same point "
            f"(step {job.checkpoint_step}); giving up. It does not count against your "
            "daily quota."
        )
        values.update(_ended(Status.FAILED, "worker_lost", message, now), quota_refunded=True)
        q.record_event(
            conn, job.id, ev.Failed(attempt=job.attempt, code="worker_lost", step=job.step), now
        )
    else:
        values.update(
            status=Status.QUEUED.value,
            stage=Stage.WAITING_FOR_GPU.value,
            not_before=now + (backoff(strikes) if counted else 0.0),
        )
    conn.execute(update(jobs).where(jobs.c.id == job.id).values(**values))
    return Reaped(
        job.id, job.attempt, requeued=values["status"] == Status.QUEUED.value, counted=counted
    )
