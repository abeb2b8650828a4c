"""The durable queue: job rows, their events, leases, checkpoints and idempotency keys.

Every state change happens in one transaction together with its `job_events` row.
Worker-side writes are fenced by the lease token: a worker that lost its lease cannot
heartbeat, checkpoint or publish.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from reelgen.domain.errors import Conflict, LeaseLost
from reelgen.domain.jobs import DAY_S, Job, JobEvent, Stage, Status
from reelgen.store import queries as q
from reelgen.store.database import Database
from reelgen.store.schema import job_events, jobs, workers


@dataclass(frozen=True, slots=True)
class UsageView:
    """What admission control needs to know about a user, read inside the submit transaction."""

    active: int
    today: int
    oldest_today: float | None


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


@dataclass(frozen=True, slots=True)
class Reaped:
    job_id: str
    attempt: int
    requeued: bool


def _event(conn: Connection, job_id: str, kind: str, now: float, **data: Any) -> None:
    conn.execute(
        q.insert_event(), {"job_id": job_id, "at": now, "kind": kind, "data": json.dumps(data)}
    )


def _driver_row(conn: Connection, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """One statement straight on the psycopg connection; the first row as a dict."""
    from psycopg.rows import dict_row

    with conn.connection.driver_connection.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchone()


class JobStore:
    def __init__(self, db: Database):
        self.db = db

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
        """
        user_id, now = row["user_id"], row["created_at"]
        with self.db.write() as conn:
            if self.db.dialect != "sqlite":  # SQLite's BEGIN IMMEDIATE already serialises
                conn.execute(q.lock_user(), {"user_id": user_id})
            if idempotency is not None:
                existing = conn.execute(
                    q.idempotent_job(), {"user_id": user_id, "key": idempotency[1]}
                ).first()
                if existing is not None:
                    if existing._request_hash != request_hash:
                        raise Conflict(
                            "This Idempotency-Key was already used with a different request "
                            "body; use a new key for a new request.",
                            code="idempotency_key_reused",
                        )
                    return Job.from_row(existing), False
            active, today, oldest = conn.execute(
                q.user_usage(), {"user_id": user_id, "since": now - DAY_S}
            ).one()
            admit(UsageView(active=active, today=today, oldest_today=oldest))
            job = Job.from_row(conn.execute(q.insert_job(), row).one())
            _event(conn, job.id, "created", now, attempt=0)
            if idempotency is not None:
                conn.execute(
                    q.insert_idempotency_key(),
                    {
                        "user_id": user_id,
                        "key": idempotency[1],
                        "request_hash": request_hash,
                        "job_id": job.id,
                        "created_at": now,
                    },
                )
        return job, True

    # ---- reads --------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self.db.read() as conn:
            row = conn.execute(q.job_by_id(), {"id": job_id}).first()
        return None if row is None else Job.from_row(row)

    def list_for_user(
        self, user_id: str, *, after_seq: int | None, limit: int, descending: bool
    ) -> list[Job]:
        query = select(jobs).where(jobs.c.user_id == user_id, jobs.c.deleted_at.is_(None))
        if after_seq is not None:
            query = query.where(jobs.c.seq < after_seq if descending else jobs.c.seq > after_seq)
        query = query.order_by(jobs.c.seq.desc() if descending else jobs.c.seq.asc()).limit(limit)
        with self.db.read() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def queue_stats(self, job: Job, now: float) -> tuple[int, float, int]:
        """(queued jobs ranked ahead of this one, seconds of work ahead, live workers)."""
        params = {"model": job.model, "rank_at": job.rank_at, "alive_since": now - 60}
        with self.db.read() as conn:
            count, queued_s, running_s, live = conn.execute(q.queue_stats(), params).one()
        return int(count), float(queued_s) + float(running_s), int(live)

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
        query = (
            select(job_events)
            .where(job_events.c.job_id == job_id, job_events.c.id > after_id)
            .order_by(job_events.c.id)
        )
        with self.db.read() as conn:
            return [
                JobEvent(id=r.id, job_id=r.job_id, at=r.at, kind=r.kind, data=json.loads(r.data))
                for r in conn.execute(query)
            ]

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
                        status=Status.CANCELLED.value,
                        stage=Stage.DONE.value,
                        completed_at=now,
                        error_code="cancelled",
                        error_message="The job was cancelled before it started.",
                    )
                )
                _event(conn, job_id, "cancelled", now, while_status="queued")
            elif job.status is Status.IN_PROGRESS and not job.cancel_requested:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
                _event(conn, job_id, "cancel_requested", now, step=job.step)
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).one()
        return Job.from_row(row)

    def request_preempt(self, job_id: str, now: float) -> bool:
        """Asks the running job's worker to checkpoint and hand the job back."""
        with self.db.write() as conn:
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == Status.IN_PROGRESS.value)
                .values(preempt_requested=True)
            )
            if result.rowcount:
                _event(conn, job_id, "preempt_requested", now)
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
            _event(conn, job_id, "deleted", now)

    # ---- workers ------------------------------------------------------------------------
    def register_worker(self, worker_id: str, model: str, hostname: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                insert(workers).values(
                    id=worker_id, model=model, hostname=hostname, started_at=now, heartbeat_at=now
                )
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
        model: str,
        now: float,
        lease_seconds: float,
        lease_token: str,
    ) -> Job | None:
        """Takes the lowest-ranked ready job for `model` in one transaction; either way the
        worker's row is marked as seen (its idle heartbeat).

        Claims are not flushed to disk before the answer (PostgreSQL `synchronous_commit=off`):
        a claim lost in a server crash leaves the job queued, and its worker is fenced out.
        """
        params = {
            "model": model,
            "now": now,
            "worker_id": worker_id,
            "token": lease_token,
            "expires": now + lease_seconds,
        }
        if self.db.dialect == "postgresql":
            with self.db.autocommit() as conn:
                row = _driver_row(conn, q.PG_CLAIM, params)
            return None if row is None else Job.from_mapping(row)
        with self.db.write() as conn:
            chosen = conn.execute(q.next_queued(), params).scalar()
            if chosen is None:
                conn.execute(q.worker_seen(), {"w_id": worker_id, "w_now": now, "w_job": None})
                return None
            job = Job.from_row(
                conn.execute(
                    q.claim_row(),
                    {**params, "claim_id": chosen, "claim_worker": worker_id, "claim_now": now},
                ).one()
            )
            _event(
                conn,
                job.id,
                "started",
                now,
                attempt=job.attempt,
                worker_id=worker_id,
                resume_step=job.checkpoint_step,
            )
            conn.execute(q.worker_seen(), {"w_id": worker_id, "w_now": now, "w_job": job.id})
        return job

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
                _event(conn, job_id, "stage", now, stage=stage.value, attempt=row.attempt)
        return WorkerFlags(
            cancel_requested=bool(row.cancel_requested),
            preempt_requested=bool(row.preempt_requested),
        )

    def save_checkpoint(self, job_id: str, token: str, *, step: int, key: str, now: float) -> None:
        """Not flushed before the answer: losing it in a server crash costs one interval."""
        with self.db.write(durable=False) as conn:
            row = self._fenced_values(conn, job_id, token, checkpoint_step=step, checkpoint_key=key)
            _event(conn, job_id, "checkpoint", now, step=step, attempt=row.attempt)

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
        if self.db.dialect == "postgresql":
            with self.db.autocommit() as conn:
                done = _driver_row(
                    conn,
                    q.PG_COMPLETE,
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
            if done is None:
                raise LeaseLost(f"Lease on {job_id} is no longer held by this worker.")
            return
        with self.db.write() as conn:
            row = self._fenced(
                conn,
                job_id,
                token,
                q.complete(),
                {
                    "completed_at": now,
                    "expires_at": expires_at,
                    "video_key": video_key,
                    "thumbnail_key": thumbnail_key,
                    "spritesheet_key": spritesheet_key,
                },
            )
            _event(conn, job_id, "completed", now, attempt=row.attempt, first_step=first_step)

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
                status=status.value,
                stage=Stage.DONE.value,
                completed_at=now,
                error_code=code,
                error_message=message,
                lease_token=None,
                lease_expires_at=None,
                checkpoint_key=None,
                quota_refunded=refund,
            )
            _event(conn, job_id, status.value, now, attempt=row.attempt, code=code, step=row.step)

    def release(self, job_id: str, token: str, *, now: float, reason: str) -> None:
        """Hands a running job back to the queue (drain); the attempt is not held against it."""
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
            )
            _event(conn, job_id, "released", now, reason=reason, step=row.checkpoint_step)

    # ---- recovery -----------------------------------------------------------------------
    def reap(
        self,
        *,
        now: float,
        only_expired: bool,
        backoff: Callable[[int], float],
    ) -> list[Reaped]:
        """Requeues jobs whose worker is gone, or fails them once attempts are used up."""
        cond = jobs.c.status == Status.IN_PROGRESS.value
        if only_expired:
            cond = and_(cond, jobs.c.lease_expires_at < now)
        out: list[Reaped] = []
        with self.db.write() as conn:
            rows = conn.execute(select(jobs).where(cond).with_for_update(skip_locked=True)).all()
            for row in rows:
                job = Job.from_row(row)
                _event(
                    conn,
                    job.id,
                    "worker_lost",
                    now,
                    attempt=job.attempt,
                    worker_id=job.worker_id,
                    step=job.step,
                    checkpoint_step=job.checkpoint_step,
                )
                base = dict(worker_id=None, lease_token=None, lease_expires_at=None)
                if job.cancel_requested:
                    values = dict(
                        status=Status.CANCELLED.value,
                        stage=Stage.DONE.value,
                        completed_at=now,
                        error_code="cancelled",
                        error_message="The job was cancelled.",
                    )
                    _event(conn, job.id, "cancelled", now, attempt=job.attempt)
                elif job.attempt >= job.max_attempts:
                    values = dict(
                        status=Status.FAILED.value,
                        stage=Stage.DONE.value,
                        completed_at=now,
                        error_code="worker_lost",
                        error_message=(
                            f"The worker running this job was lost {job.attempt} times; "
                            "giving up. It does not count against your daily quota."
                        ),
                        quota_refunded=True,
                    )
                    _event(conn, job.id, "failed", now, attempt=job.attempt, code="worker_lost")
                else:
                    values = dict(
                        status=Status.QUEUED.value,
                        stage=Stage.WAITING_FOR_GPU.value,
                        not_before=now + backoff(job.attempt),
                    )
                conn.execute(update(jobs).where(jobs.c.id == job.id).values(**base, **values))
                out.append(
                    Reaped(job.id, job.attempt, requeued=values["status"] == Status.QUEUED.value)
                )
        return out

    def expired_content(self, now: float, limit: int = 100) -> Sequence[Job]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(jobs)
                .where(jobs.c.expires_at < now, jobs.c.video_key.is_not(None))
                .limit(limit)
            ).all()
        return [Job.from_row(r) for r in rows]

    def clear_content(self, job_id: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(video_key=None, thumbnail_key=None, spritesheet_key=None)
            )
            _event(conn, job_id, "expired", now)

    def prune_idempotency_keys(self, older_than: float) -> int:
        with self.db.write() as conn:
            result = conn.execute(q.prune_idempotency(), {"before": older_than})
        return result.rowcount or 0
