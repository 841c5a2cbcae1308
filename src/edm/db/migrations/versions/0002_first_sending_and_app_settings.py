"""first_sending_at on sub-tasks; app_settings for the shared signing key

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
    with op.batch_alter_table("sub_tasks") as batch_op:
        batch_op.add_column(sa.Column("first_sending_at", sa.Float(), nullable=True))
    op.create_table(
        "app_settings",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_app_settings")),
    )


def downgrade() -> None:
    op.drop_table("app_settings")
    with op.batch_alter_table("sub_tasks") as batch_op:
        batch_op.drop_column("first_sending_at")
