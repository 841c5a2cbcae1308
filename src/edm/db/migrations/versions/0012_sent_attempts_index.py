"""A service's accepted sends by time, from the index alone: its measured pace (count, first
and last in the last hour) on the dashboard and in `edm diagnose`, where the index on all
attempts made each count visit every attempt's row to read its outcome

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

SENT = sa.text("outcome = 'sent'")


def upgrade() -> None:
    op.create_index(
        "ix_send_attempts_service_sent",
        "send_attempts",
        ["service_id", "finished_at"],
        sqlite_where=SENT,
        postgresql_where=SENT,
    )


def downgrade() -> None:
    op.drop_index("ix_send_attempts_service_sent", table_name="send_attempts")
