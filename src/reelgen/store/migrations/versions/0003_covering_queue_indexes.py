"""covering indexes for the queue position and the quota window

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Queue position and quota reads count and sum from the index alone, without a table
    # lookup per row.
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.create_index("ix_jobs_queue", "jobs", ["status", "model", "rank_at", "estimated_seconds"])
    op.drop_index("ix_jobs_user_created", table_name="jobs")
    op.create_index("ix_jobs_user_created", "jobs", ["user_id", "created_at", "quota_refunded"])


def downgrade() -> None:
    op.drop_index("ix_jobs_user_created", table_name="jobs")
    op.create_index("ix_jobs_user_created", "jobs", ["user_id", "created_at"])
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.create_index("ix_jobs_queue", "jobs", ["status", "model", "rank_at"])
