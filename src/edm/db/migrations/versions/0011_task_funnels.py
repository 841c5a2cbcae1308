"""Each task's funnel kept in a row of its own, counted from its sub-tasks once here

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
FACTS = (
    "delivered",
    "opened",
    "clicked",
    "hard_bounced",
    "soft_bounced",
    "complained",
    "unsubscribed",
)


def upgrade() -> None:
    op.create_table(
        "task_funnels",
        sa.Column("task_id", BigId, nullable=False),
        *(sa.Column(fact, sa.Integer(), server_default="0", nullable=False) for fact in FACTS),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_task_funnels_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_task_funnels")),
    )  # fmt: skip
    op.execute(f"""
        INSERT INTO task_funnels (task_id, {", ".join(FACTS)})
        SELECT task_id, count(delivered_at), count(opened_at), count(clicked_at),
               sum(CASE WHEN bounce_type = 'hard' THEN 1 ELSE 0 END),
               sum(CASE WHEN bounce_type = 'soft' THEN 1 ELSE 0 END),
               count(complained_at), count(unsubscribed_at)
        FROM sub_tasks GROUP BY task_id""")


def downgrade() -> None:
    op.drop_table("task_funnels")
