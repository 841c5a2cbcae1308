"""Indexes of sub-tasks for tasks of a million: sent rows of a task by time (its recent
pace, its sends per minute, its split by service), pending rows pinned to a service, and
the indexes on the provider's message id and on a service's sends made partial, so that
expanding a task does not fill them with a million NULLs

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

SENT = sa.text("status = 'sent'")
HAS_MESSAGE_ID = sa.text("provider_message_id IS NOT NULL")
HAS_SENT_AT = sa.text("sent_at IS NOT NULL")
PINNED = sa.text("status = 'pending' AND pinned_service_id IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_sub_tasks_task_sent",
        "sub_tasks",
        ["task_id", "sent_at", "service_id"],
        sqlite_where=SENT,
        postgresql_where=SENT,
    )
    op.create_index(
        "ix_sub_tasks_pinned",
        "sub_tasks",
        ["task_id", "pinned_service_id"],
        sqlite_where=PINNED,
        postgresql_where=PINNED,
    )
    op.drop_index("ix_sub_tasks_provider_message_id", table_name="sub_tasks")
    op.create_index(
        "ix_sub_tasks_provider_message_id",
        "sub_tasks",
        ["provider_message_id"],
        sqlite_where=HAS_MESSAGE_ID,
        postgresql_where=HAS_MESSAGE_ID,
    )
    op.drop_index("ix_sub_tasks_service_sent", table_name="sub_tasks")
    op.create_index(
        "ix_sub_tasks_service_sent",
        "sub_tasks",
        ["service_id", "sent_at"],
        sqlite_where=HAS_SENT_AT,
        postgresql_where=HAS_SENT_AT,
    )


def downgrade() -> None:
    op.drop_index("ix_sub_tasks_service_sent", table_name="sub_tasks")
    op.create_index("ix_sub_tasks_service_sent", "sub_tasks", ["service_id", "sent_at"])
    op.drop_index("ix_sub_tasks_provider_message_id", table_name="sub_tasks")
    op.create_index("ix_sub_tasks_provider_message_id", "sub_tasks", ["provider_message_id"])
    op.drop_index("ix_sub_tasks_pinned", table_name="sub_tasks")
    op.drop_index("ix_sub_tasks_task_sent", table_name="sub_tasks")
