"""an index of the videos that still hold content, by expiry: the garbage collector's scan

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_expiring",
        "jobs",
        ["expires_at"],
        sqlite_where=sa.text("video_key IS NOT NULL"),
        postgresql_where=sa.text("video_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_expiring", table_name="jobs")
