"""dispatcher assignments and forecasts instead of a rank, preemption counts, the models a
worker holds, quotas per quota class in GPU-seconds

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("assigned_worker", sa.String(64), nullable=True))
        batch.add_column(sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("queue_position", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("eta_at", sa.Float(), nullable=True))
        batch.create_index("ix_jobs_assigned", ["assigned_worker", "status"], unique=False)
    # Who runs next is the dispatcher's decision now, not an order in SQL.
    op.drop_index("ix_jobs_queue", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("rank_at")
    # Quota reads count and sum one quota class (tiers) from the index alone.
    op.drop_index("ix_jobs_user_status", table_name="jobs")
    op.create_index("ix_jobs_user_status", "jobs", ["user_id", "status", "tier"])
    op.drop_index("ix_jobs_user_created", table_name="jobs")
    op.create_index(
        "ix_jobs_user_created",
        "jobs",
        ["user_id", "tier", "created_at", "quota_refunded", "estimated_seconds"],
    )
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("holds", sa.Text(), nullable=True))
    op.create_table(
        "pool_targets",
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=False),
        sa.Column("live", sa.Integer(), nullable=False),
        sa.Column("busy", sa.Integer(), nullable=False),
        sa.Column("queued", sa.Integer(), nullable=False),
        sa.Column("backlog_gpu_s", sa.Float(), nullable=False),
        sa.Column("arrival_gpu_s_per_s", sa.Float(), nullable=False),
        sa.Column("late", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )


def downgrade() -> None:
    op.drop_table("pool_targets")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("holds")
    op.drop_index("ix_jobs_user_created", table_name="jobs")
    op.create_index("ix_jobs_user_created", "jobs", ["user_id", "created_at", "quota_refunded"])
    op.drop_index("ix_jobs_user_status", table_name="jobs")
    op.create_index("ix_jobs_user_status", "jobs", ["user_id", "status"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("rank_at", sa.Float(), nullable=False, server_default="0"))
    op.execute("UPDATE jobs SET rank_at = created_at")
    op.create_index("ix_jobs_queue", "jobs", ["status", "model", "rank_at", "estimated_seconds"])
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_assigned")
        batch.drop_column("eta_at")
        batch.drop_column("queue_position")
        batch.drop_column("preemptions")
        batch.drop_column("assigned_worker")
