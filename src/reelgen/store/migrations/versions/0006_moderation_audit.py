"""the moderation audit log; API keys get a role (admin keys review held jobs) and a
recorded likeness consent

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "moderation_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("categories", sa.Text(), nullable=False),
        sa.Column("scores", sa.Text(), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("quarantine_key", sa.String(300), nullable=True),
    )
    op.create_index("ix_moderation_audit_job", "moderation_audit", ["job_id"])
    op.create_index("ix_moderation_audit_at", "moderation_audit", ["at"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="user"))
        batch.add_column(
            sa.Column("likeness_consent", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("likeness_consent")
        batch.drop_column("role")
    op.drop_index("ix_moderation_audit_at", table_name="moderation_audit")
    op.drop_index("ix_moderation_audit_job", table_name="moderation_audit")
    op.drop_table("moderation_audit")
