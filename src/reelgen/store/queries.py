"""Hot-path statements, each built once on first use and executed with bound parameters.

Building a SQLAlchemy statement costs more than running it on SQLite; these paths run on
every submit, poll, claim and heartbeat, so they are built once and reused.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import (
    ColumnElement,
    Delete,
    Insert,
    Select,
    and_,
    bindparam,
    case,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.sql.dml import ReturningInsert, ReturningUpdate

from reelgen.domain.jobs import ACTIVE, Status
from reelgen.store.schema import api_keys, idempotency_keys, job_events, jobs, users, workers

ACTIVE_VALUES = [s.value for s in ACTIVE]


@cache
def job_by_id() -> Select:
    return select(jobs).where(jobs.c.id == bindparam("id"))


@cache
def insert_job() -> ReturningInsert:
    return insert(jobs).returning(*jobs.c)


@cache
def insert_event() -> Insert:
    return insert(job_events)


@cache
def insert_idempotency_key() -> Insert:
    return insert(idempotency_keys)


@cache
def idempotent_job() -> Select:
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
def lock_user() -> Select:
    return select(users.c.id).where(users.c.id == bindparam("user_id")).with_for_update()


@cache
def user_usage() -> Select:
    mine = jobs.c.user_id == bindparam("user_id")
    window = and_(mine, jobs.c.created_at > bindparam("since"), jobs.c.quota_refunded.is_(False))
    return select(
        select(func.count()).where(mine, jobs.c.status.in_(ACTIVE_VALUES)).scalar_subquery(),
        select(func.count()).where(window).scalar_subquery(),
        select(func.min(jobs.c.created_at)).where(window).scalar_subquery(),
    )


@cache
def queue_stats() -> Select:
    model = jobs.c.model == bindparam("model")
    queued = and_(
        jobs.c.status == Status.QUEUED.value, model, jobs.c.rank_at < bindparam("rank_at")
    )
    remaining = jobs.c.estimated_seconds * (100 - jobs.c.progress) / 100.0
    return select(
        select(func.count()).where(queued).scalar_subquery(),
        select(func.coalesce(func.sum(jobs.c.estimated_seconds), 0.0))
        .where(queued)
        .scalar_subquery(),
        select(func.coalesce(func.sum(remaining), 0.0))
        .where(jobs.c.status == Status.IN_PROGRESS.value, model)
        .scalar_subquery(),
        select(func.count())
        .where(
            workers.c.model == bindparam("model"),
            workers.c.stopped_at.is_(None),
            workers.c.heartbeat_at > bindparam("alive_since"),
        )
        .scalar_subquery(),
    )


@cache
def user_for_key() -> Select:
    return (
        select(users.c.id, users.c.name, users.c.tier)
        .join(api_keys, api_keys.c.user_id == users.c.id)
        .where(api_keys.c.key_hash == bindparam("key_hash"), api_keys.c.revoked_at.is_(None))
    )


@cache
def next_queued() -> Select:
    return (
        select(jobs.c.id)
        .where(
            jobs.c.status == Status.QUEUED.value,
            jobs.c.model == bindparam("model"),
            jobs.c.not_before <= bindparam("now"),
        )
        .order_by(jobs.c.rank_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def fence() -> tuple[ColumnElement[bool], ...]:
    """The lease check every worker write carries: same job, same token, still running."""
    return (
        jobs.c.id == bindparam("fence_id"),
        jobs.c.lease_token == bindparam("fence_token"),
        jobs.c.status == Status.IN_PROGRESS.value,
    )


@cache
def heartbeat() -> ReturningUpdate:
    progress = bindparam("b_progress")
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
        .returning(jobs.c.attempt, jobs.c.cancel_requested, jobs.c.preempt_requested)
    )


@cache
def complete() -> ReturningUpdate:
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
    from sqlalchemy import delete

    return delete(idempotency_keys).where(idempotency_keys.c.created_at < bindparam("before"))
