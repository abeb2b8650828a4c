"""jobs keep only a hash of their prompt once its retention runs out

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("prompt_sha256", sa.String(64), nullable=True))
    op.create_index(
        "ix_jobs_prompt_kept",
        "jobs",
        ["created_at"],
        sqlite_where=sa.text("prompt_sha256 IS NULL"),
        postgresql_where=sa.text("prompt_sha256 IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_prompt_kept", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("prompt_sha256")
