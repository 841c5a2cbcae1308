"""Incidents and their alert deliveries, the repair record, timed freezes, sub-tasks by
contact (what suppressed a contact; deleting a contact)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_index("ix_sub_tasks_contact_id", "sub_tasks", ["contact_id"])
    with op.batch_alter_table("services") as batch_op:
        batch_op.add_column(sa.Column("frozen_until", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("unfrozen_at", sa.Float(), nullable=True))
    op.create_table(
        "incidents",
        sa.Column("id", BigId, nullable=False),
        sa.Column("check_name", sa.String(50), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.Column("alerted_at", sa.Float(), nullable=True),
        sa.Column("value", sa.Text(), nullable=True),
        sa.Column("threshold", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("instance_id", sa.String(100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_incidents")),
    )
    # At most one open incident per check, whichever instance saw it first.
    op.create_index(
        "ux_incidents_open_check",
        "incidents",
        ["check_name"],
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_index("ix_incidents_check_opened", "incidents", ["check_name", "opened_at"])
    op.create_table(
        "alert_deliveries",
        sa.Column("id", BigId, nullable=False),
        sa.Column("incident_id", BigId, nullable=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["incident_id"],
            ["incidents.id"],
            name=op.f("fk_alert_deliveries_incident_id_incidents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_deliveries")),
    )
    op.create_index("ix_alert_deliveries_due", "alert_deliveries", ["status", "next_attempt_at"])
    op.create_table(
        "repairs",
        sa.Column("id", BigId, nullable=False),
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("instance_id", sa.String(100), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_repairs")),
    )
    op.create_index("ix_repairs_at", "repairs", ["at"])


def downgrade() -> None:
    op.drop_index("ix_repairs_at", table_name="repairs")
    op.drop_table("repairs")
    op.drop_index("ix_alert_deliveries_due", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
    op.drop_index("ix_incidents_check_opened", table_name="incidents")
    op.drop_index("ux_incidents_open_check", table_name="incidents")
    op.drop_table("incidents")
    with op.batch_alter_table("services") as batch_op:
        batch_op.drop_column("unfrozen_at")
        batch_op.drop_column("frozen_until")
    op.drop_index("ix_sub_tasks_contact_id", table_name="sub_tasks")
