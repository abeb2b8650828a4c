"""Table definitions used by the queries; the migrations create exactly these."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
    true,
)

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("tier", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), ForeignKey("users.id"), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("allow_batch", Boolean, nullable=False, server_default=true()),
    Column("role", String(16), nullable=False, server_default="user"),
    Column("likeness_consent", Boolean, nullable=False, server_default=false()),
    Column("age_verified", Boolean, nullable=False, server_default=false()),
)
"""`role`: `user`, or `admin` (may also decide on jobs held for content review).
`likeness_consent`: the operator recorded that this key's users have the consent of the
real people they depict (their photoreal faces and likenesses are then allowed).
`age_verified`: the operator verified that this key's users are adults (adult categories the
deployment allows apply to them only)."""

jobs = Table(
    "jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("user_id", String(64), ForeignKey("users.id"), nullable=False),
    Column("tier", String(16), nullable=False),
    Column("model", String(64), nullable=False),
    Column("requested_model", String(128), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("seconds", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("fps", Integer, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("style", String(32)),
    Column("reference_key", String(300)),
    Column("parent_id", String(64)),
    Column("operation", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("stage", String(32), nullable=False),
    Column("progress", Integer, nullable=False, default=0),
    Column("step", Integer, nullable=False, default=0),
    Column("total_steps", Integer, nullable=False, default=0),
    Column("estimated_seconds", Float, nullable=False, default=0.0),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("completed_at", Float),
    Column("expires_at", Float),
    Column("not_before", Float, nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    Column("strikes", Integer, nullable=False, default=0),
    Column("attempt_start_step", Integer, nullable=False, default=0),
    Column("worker_id", String(64)),
    Column("lease_token", String(64)),
    Column("lease_expires_at", Float),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("preempt_requested", Boolean, nullable=False, default=False),
    Column("quota_refunded", Boolean, nullable=False, default=False),
    Column("checkpoint_step", Integer, nullable=False, default=0),
    Column("checkpoint_key", String(300)),
    Column("video_key", String(300)),
    Column("thumbnail_key", String(300)),
    Column("spritesheet_key", String(300)),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("deleted_at", Float),
    Column("assigned_worker", String(64)),
    Column("preemptions", Integer, nullable=False, default=0, server_default="0"),
    Column("queue_position", Integer),
    Column("eta_at", Float),
    Column("batch_key", String(200)),
    Column("batch_gain", Float, nullable=False, default=1.0, server_default="1"),
    Column("prompt_sha256", String(64)),
    Column("likeness_consent", Boolean, nullable=False, default=False, server_default=false()),
    Column("age_verified", Boolean, nullable=False, default=False, server_default=false()),
    Index("ix_jobs_user", "user_id", "seq"),
    Index("ix_jobs_user_status", "user_id", "status", "tier"),
    Index(
        "ix_jobs_user_created",
        "user_id",
        "tier",
        "created_at",
        "quota_refunded",
        "estimated_seconds",
    ),
    Index("ix_jobs_lease", "status", "lease_expires_at"),
    Index("ix_jobs_assigned", "assigned_worker", "status"),
    Index(
        "ix_jobs_prompt_kept",
        "created_at",
        sqlite_where=text("prompt_sha256 IS NULL"),
        postgresql_where=text("prompt_sha256 IS NULL"),
    ),
    Index(
        "ix_jobs_expiring",
        "expires_at",
        sqlite_where=text("video_key IS NOT NULL"),
        postgresql_where=text("video_key IS NOT NULL"),
    ),
)
"""`assigned_worker`: the worker the dispatcher gave this queued job to; only that worker
claims it (see `controller.dispatch`). `queue_position` and `eta_at`: the dispatcher's
latest forecast for a queued job (`Scheduler.forecast`). `batch_key` and `batch_gain`:
which jobs may share one run of the model, and what sharing saves (`BatchingModel`); set at
admission, None for a job that runs alone. `prompt_sha256`: set when the prompt's retention
ran out and its text was cleared (only this hash of it is kept)."""

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tx", BigInteger, nullable=False, server_default="0"),
    Column("job_id", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("data", Text, nullable=False),
    Index("ix_job_events_job", "job_id", "id"),
    Index("ix_job_events_cursor", "tx", "id"),
)
"""`tx` is the writing transaction's id on PostgreSQL (a column default set by the migration);
0 on SQLite. Readers page by (`tx`, `id`); see `JobStore.read_events`."""

event_cursors = Table(
    "event_cursors",
    metadata,
    Column("consumer", String(64), primary_key=True),
    Column("tx", BigInteger, nullable=False),
    Column("event_id", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)
"""Where each durable consumer of the event log (webhooks, audit) has read up to."""

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
)

workers = Table(
    "workers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("model", String(64), nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("current_job_id", String(64)),
    Column("stopped_at", Float),
    Column("session_key", BigInteger),
    Column("holds", Text),
)
"""`session_key`: the PostgreSQL advisory lock the worker's own session holds while it lives;
when the process dies the lock goes with its connection and the controller notices at once.
`holds`: JSON list of the models it serves, the one on its accelerator first (the others
are parked in its host memory), as the worker last reported them."""

pool_targets = Table(
    "pool_targets",
    metadata,
    Column("model", String(64), primary_key=True),
    Column("desired", Integer, nullable=False),
    Column("live", Integer, nullable=False),
    Column("busy", Integer, nullable=False),
    Column("queued", Integer, nullable=False),
    Column("backlog_gpu_s", Float, nullable=False),
    Column("arrival_gpu_s_per_s", Float, nullable=False),
    Column("late", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)
"""The leading controller's autoscaling answer per model pool, for the admin endpoint."""

moderation_audit = Table(
    "moderation_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("stage", String(32), nullable=False),
    Column("job_id", String(64)),
    Column("user_id", String(64)),
    Column("action", String(16), nullable=False),
    Column("categories", Text, nullable=False),
    Column("scores", Text, nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("prompt", Text),
    Column("details", Text),
    Column("quarantine_key", String(300)),
    Index("ix_moderation_audit_job", "job_id"),
    Index("ix_moderation_audit_at", "at"),
)
"""Every safety verdict: what was checked (`stage`), the answer, its categories and scores
(JSON), the policy version and a SHA-256 of the content. `job_id` is null for a prompt
refused before a job existed. `prompt` is cleared after the prompt retention period.
`quarantine_key`: where a blocked output's bytes are kept, cleared when they are deleted."""
