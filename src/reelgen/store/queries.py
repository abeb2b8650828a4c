"""Hot-path statements, each built once on first use and executed with bound parameters.

Building a SQLAlchemy statement costs more than running it on SQLite; these paths run on
every submit, poll, claim and heartbeat, so they are built once and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Delete,
    Insert,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.sql.dml import ReturningInsert, ReturningUpdate, Update

from reelgen.domain import events as ev
from reelgen.domain.jobs import ACTIVE, Status
from reelgen.store.schema import (
    api_keys,
    idempotency_keys,
    job_events,
    jobs,
    moderation_audit,
    users,
    workers,
)

ACTIVE_VALUES = [s.value for s in ACTIVE]
MAX_CLAIM = 64
"""The most jobs one claim takes (a batch is far smaller: `REELGEN_MAX_BATCH`)."""


@cache
def job_by_id() -> Select[Any]:
    return select(jobs).where(jobs.c.id == bindparam("id"))


@cache
def insert_jobs() -> ReturningInsert[Any]:
    """Many jobs in one statement; their rows come back in the order given."""
    return insert(jobs).returning(*jobs.c, sort_by_parameter_order=True)


@cache
def insert_event() -> Insert:
    return insert(job_events)


@cache
def insert_idempotency_key() -> Insert:
    return insert(idempotency_keys)


@cache
def insert_audit() -> Insert:
    return insert(moderation_audit)


@cache
def idempotent_job() -> Select[Any]:
    return (
        select(jobs)
        .join(idempotency_keys, idempotency_keys.c.job_id == jobs.c.id)
        .add_columns(idempotency_keys.c.request_hash.label("_request_hash"))
        .where(
            idempotency_keys.c.user_id == bindparam("user_id"),
            idempotency_keys.c.key == bindparam("key"),
        )
    )


@cache
def lock_user() -> Select[Any]:
    return select(users.c.id).where(users.c.id == bindparam("user_id")).with_for_update()


@cache
def user_usage() -> Select[Any]:
    """(active jobs, jobs and estimated GPU-seconds in the window, its oldest job) of one
    user's jobs in the tiers `tiers` (one quota class)."""
    mine = and_(
        jobs.c.user_id == bindparam("user_id"),
        jobs.c.tier.in_(bindparam("tiers", expanding=True)),
    )
    window = and_(mine, jobs.c.created_at > bindparam("since"), jobs.c.quota_refunded.is_(False))
    day = (
        select(
            func.count().label("n"),
            func.coalesce(func.sum(jobs.c.estimated_seconds), 0.0).label("gpu_s"),
            func.min(jobs.c.created_at).label("oldest"),
        )
        .where(window)
        .subquery()
    )
    return select(
        select(func.count()).where(mine, jobs.c.status.in_(ACTIVE_VALUES)).scalar_subquery(),
        day.c.n,
        day.c.gpu_s,
        day.c.oldest,
    ).select_from(day)


@cache
def user_for_key() -> Select[Any]:
    return (
        select(
            users.c.id,
            users.c.name,
            users.c.tier,
            api_keys.c.allow_batch,
            api_keys.c.role,
            api_keys.c.likeness_consent,
            api_keys.c.age_verified,
        )
        .join(api_keys, api_keys.c.user_id == users.c.id)
        .where(api_keys.c.key_hash == bindparam("key_hash"), api_keys.c.revoked_at.is_(None))
    )


@cache
def assigned_jobs() -> Select[Any]:
    """The queued jobs the dispatcher gave `worker_id` (several: a batch)."""
    return (
        select(jobs.c.id)
        .where(
            jobs.c.assigned_worker == bindparam("worker_id"),
            jobs.c.status == Status.QUEUED.value,
        )
        .order_by(jobs.c.seq)
        .limit(MAX_CLAIM)
        .with_for_update()
    )


def fence() -> tuple[ColumnElement[bool], ...]:
    """The lease check every worker write carries: same job, same token, still running."""
    return (
        jobs.c.id == bindparam("fence_id"),
        jobs.c.lease_token == bindparam("fence_token"),
        jobs.c.status == Status.IN_PROGRESS.value,
    )


@cache
def heartbeat() -> ReturningUpdate[Any]:
    progress: BindParameter[int] = bindparam("b_progress")
    return (
        update(jobs)
        .where(*fence())
        .values(
            lease_expires_at=bindparam("b_lease_expires_at"),
            step=bindparam("b_step"),
            total_steps=bindparam("b_total_steps"),
            progress=case((jobs.c.progress > progress, jobs.c.progress), else_=progress),
            stage=bindparam("b_stage"),
        )
        .returning(
            jobs.c.attempt, jobs.c.cancel_requested, jobs.c.preempt_requested, jobs.c.worker_id
        )
    )


@cache
def complete() -> ReturningUpdate[Any]:
    return (
        update(jobs)
        .where(*fence())
        .values(
            status=Status.COMPLETED.value,
            stage="done",
            progress=100,
            completed_at=bindparam("b_completed_at"),
            expires_at=bindparam("b_expires_at"),
            video_key=bindparam("b_video_key"),
            thumbnail_key=bindparam("b_thumbnail_key"),
            spritesheet_key=bindparam("b_spritesheet_key"),
            lease_token=None,
            lease_expires_at=None,
            checkpoint_key=None,
        )
        .returning(jobs.c.attempt)
    )


@cache
def prune_idempotency() -> Delete:
    return delete(idempotency_keys).where(idempotency_keys.c.created_at < bindparam("before"))


@cache
def claim_row() -> ReturningUpdate[Any]:
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("claim_id"))
        .values(
            status=Status.IN_PROGRESS.value,
            stage="generating",
            attempt=jobs.c.attempt + 1,
            worker_id=bindparam("claim_worker"),
            lease_token=bindparam("token"),
            lease_expires_at=bindparam("expires"),
            started_at=func.coalesce(jobs.c.started_at, bindparam("claim_now")),
            preempt_requested=False,
            attempt_start_step=jobs.c.checkpoint_step,
            assigned_worker=None,
            queue_position=None,
            eta_at=None,
        )
        .returning(*jobs.c)
    )


@cache
def worker_alive() -> Update:
    """A busy worker's sign of life, where the dispatcher may count it free again soon (a
    stage change, its job's last step): an idle worker not seen for a while gets no work."""
    return (
        update(workers)
        .where(workers.c.id == bindparam("w_id"), workers.c.stopped_at.is_(None))
        .values(heartbeat_at=bindparam("w_now"))
    )


@cache
def worker_seen() -> Update:
    return (
        update(workers)
        .where(workers.c.id == bindparam("w_id"))
        .values(heartbeat_at=bindparam("w_now"), current_job_id=bindparam("w_job"))
    )


# The two statements a worker sends per job on PostgreSQL, run on the driver directly
# (psycopg `%(name)s` parameters): at hundreds of jobs a second per worker process the
# SQLAlchemy layer would cost more CPU than PostgreSQL spends on them.

PG_CLAIM = f"""
WITH next AS (
    SELECT id, seq FROM jobs
    WHERE assigned_worker = %(worker_id)s AND status = 'queued'
    ORDER BY seq
    LIMIT {MAX_CLAIM}
    FOR UPDATE
), claimed AS (
    UPDATE jobs SET
        status = 'in_progress', stage = 'generating', attempt = jobs.attempt + 1,
        worker_id = %(worker_id)s, lease_token = %(token)s, lease_expires_at = %(expires)s,
        started_at = COALESCE(jobs.started_at, %(now)s), preempt_requested = false,
        attempt_start_step = jobs.checkpoint_step, assigned_worker = NULL,
        queue_position = NULL, eta_at = NULL
    FROM next WHERE jobs.id = next.id
    RETURNING jobs.*, next.seq AS claim_order
), started AS (
    INSERT INTO job_events (job_id, at, kind, data)
    SELECT id, %(now)s, 'started', json_build_object(
        'attempt', attempt, 'worker_id', CAST(%(worker_id)s AS text),
        'resume_step', checkpoint_step)::text
    FROM claimed
), seen AS (
    UPDATE workers SET heartbeat_at = %(now)s,
        current_job_id = (SELECT id FROM claimed ORDER BY claim_order LIMIT 1)
    WHERE id = %(worker_id)s
), lazy_commit AS (
    -- a lost claim is harmless (the job stays queued, its worker is fenced out),
    -- so this one statement's transaction does not wait for the disk
    SELECT set_config('synchronous_commit', 'off', true)
)
SELECT claimed.* FROM claimed CROSS JOIN lazy_commit ORDER BY claim_order
"""
"""The whole claim in one statement, run in autocommit: take the jobs the dispatcher assigned
to this worker, lease them, record `started` for each, mark the worker. `FOR UPDATE`, not
`SKIP LOCKED`: only the assigned worker claims these rows, so waiting out a short lock (a
cancel, a forecast being stored) takes the whole batch, where skipping would leave one of
it assigned while the others run."""

PG_COMPLETE = """
WITH done AS (
    UPDATE jobs SET
        status = 'completed', stage = 'done', progress = 100, completed_at = %(now)s,
        expires_at = %(expires_at)s, video_key = %(video_key)s,
        thumbnail_key = %(thumbnail_key)s, spritesheet_key = %(spritesheet_key)s,
        lease_token = NULL, lease_expires_at = NULL, checkpoint_key = NULL
    WHERE id = %(fence_id)s AND lease_token = %(fence_token)s AND status = 'in_progress'
    RETURNING id, attempt
), completed AS (
    INSERT INTO job_events (job_id, at, kind, data)
    SELECT id, %(now)s, 'completed', json_build_object(
        'attempt', attempt, 'first_step', CAST(%(first_step)s AS integer))::text
    FROM done
)
SELECT attempt FROM done
"""
"""Fenced completion and its `completed` event in one statement."""


@dataclass(frozen=True, slots=True)
class BulkUpdate:
    """One UPDATE applied to many jobs, each with its own values: `columns` are the values
    per job (the first is the job id), `sets` assigns columns from them, `where` guards each
    row (columns qualified with `jobs.`). Each backend turns it into its fastest form
    (`Backend.bulk_update`)."""

    columns: tuple[tuple[str, str], ...]
    """(name, PostgreSQL type)"""
    sets: tuple[tuple[str, str], ...]
    """(jobs column, value name)"""
    where: str


ASSIGN = BulkUpdate(
    columns=(("id", "text"), ("worker", "text")),
    sets=(("assigned_worker", "worker"),),
    where="jobs.status = 'queued' AND jobs.assigned_worker IS NULL",
)
FORECAST = BulkUpdate(
    columns=(("id", "text"), ("position", "integer"), ("eta", "double precision")),
    sets=(("queue_position", "position"), ("eta_at", "eta")),
    where="jobs.status = 'queued'",
)


FORGET_PROMPT = BulkUpdate(
    columns=(("id", "text"), ("digest", "text"), ("blank", "text")),
    sets=(("prompt", "blank"), ("prompt_sha256", "digest")),
    where="jobs.prompt_sha256 IS NULL",
)


def event_params(job_id: str, payload: ev.Payload, now: float) -> dict[str, Any]:
    return {"job_id": job_id, "at": now, "kind": payload.kind.value, "data": ev.encode(payload)}


def record_event(conn: Connection, job_id: str, payload: ev.Payload, now: float) -> None:
    """Writes a job event inside the caller's transaction, beside the change it records."""
    conn.execute(insert_event(), event_params(job_id, payload, now))


def record_events(conn: Connection, events: list[dict[str, Any]]) -> None:
    """Several `event_params` in one statement."""
    conn.execute(insert_event(), events)
