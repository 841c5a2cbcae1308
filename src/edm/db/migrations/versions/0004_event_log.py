"""webhook_requests (the raw event log) and events (tracking facts, once each);
an index on sub_tasks.provider_message_id for matching

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "webhook_requests",
        sa.Column("id", BigId, nullable=False),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="received", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("processed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_requests")),
    )
    op.create_index(
        "ix_webhook_requests_status_received", "webhook_requests", ["status", "received_at"]
    )
    op.create_table(
        "events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("request_id", BigId, nullable=True),
        sa.Column("provider", sa.String(length=50), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=False),
        sa.Column("event", sa.String(length=20), nullable=False),
        sa.Column("occurred_at", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=20), server_default="received", nullable=False),
        sa.Column("duplicates", sa.Integer(), server_default="0", nullable=False),
        sa.Column("ref_sub_task_id", sa.BigInteger(), nullable=True),
        sa.Column("ref_task_id", sa.BigInteger(), nullable=True),
        sa.Column("provider_message_id", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("sub_task_id", BigId, nullable=True),
        sa.Column("matched_by", sa.String(length=30), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("applied_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["webhook_requests.id"],
            name=op.f("fk_events_request_id_webhook_requests"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["sub_task_id"],
            ["sub_tasks.id"],
            name=op.f("fk_events_sub_task_id_sub_tasks"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("provider", "dedupe_key", name=op.f("uq_events_provider_dedupe_key")),
    )
    op.create_index("ix_events_status_created", "events", ["status", "created_at"])
    op.create_index("ix_events_sub_task_id", "events", ["sub_task_id"])
    op.create_index("ix_sub_tasks_provider_message_id", "sub_tasks", ["provider_message_id"])


def downgrade() -> None:
    op.drop_index("ix_sub_tasks_provider_message_id", table_name="sub_tasks")
    op.drop_table("events")
    op.drop_table("webhook_requests")
