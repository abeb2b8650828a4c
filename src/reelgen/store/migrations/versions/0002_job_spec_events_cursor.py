"""job spec columns, poison strikes, event cursor, worker session keys

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("requested_model", sa.String(128), nullable=True))
        batch.add_column(sa.Column("fps", sa.Integer(), nullable=False, server_default="24"))
        batch.add_column(
            sa.Column("operation", sa.String(16), nullable=False, server_default="create")
        )
        batch.add_column(sa.Column("strikes", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("attempt_start_step", sa.Integer(), nullable=False, server_default="0")
        )
        batch.alter_column("remixed_from", new_column_name="parent_id")
    op.execute("UPDATE jobs SET requested_model = model WHERE requested_model IS NULL")
    op.execute("UPDATE jobs SET operation = 'remix' WHERE parent_id IS NOT NULL")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("requested_model", existing_type=sa.String(128), nullable=False)

    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("tx", sa.BigInteger(), nullable=False, server_default="0"))
        batch.create_index("ix_job_events_cursor", ["tx", "id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        # The writing transaction's id, so readers can wait for transactions still open.
        op.execute(
            "ALTER TABLE job_events ALTER COLUMN tx SET DEFAULT pg_current_xact_id()::text::bigint"
        )

    op.create_table(
        "event_cursors",
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("tx", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("consumer"),
    )
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("session_key", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("session_key")
    op.drop_table("event_cursors")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_index("ix_job_events_cursor")
        batch.drop_column("tx")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("parent_id", new_column_name="remixed_from")
        for name in ("attempt_start_step", "strikes", "operation", "fps", "requested_model"):
            batch.drop_column(name)
