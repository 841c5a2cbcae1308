"""Indexes the health checks read by: attempts and sent rows per service by time, webhook
requests per provider by time

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_send_attempts_service_finished", "send_attempts", ["service_id", "finished_at"]
    )
    op.create_index("ix_sub_tasks_service_sent", "sub_tasks", ["service_id", "sent_at"])
    op.create_index(
        "ix_webhook_requests_provider_received", "webhook_requests", ["provider", "received_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_requests_provider_received", table_name="webhook_requests")
    op.drop_index("ix_sub_tasks_service_sent", table_name="sub_tasks")
    op.drop_index("ix_send_attempts_service_finished", table_name="send_attempts")
