"""Sub-tasks without foreign keys to their task, contact and services, and with one index
on the contact instead of two

A foreign key is checked row by row: making a task of a million spent 9 of its 16 s on
PostgreSQL looking up the same task and each contact a million times. Tasks and services
are never deleted; a contact is deleted with its sub-tasks by `delete_contact`, which
waits for any expansion under way (`queries.hold_expansion_lock`). The keys to
`sub_tasks` (send attempts, events) stay. The unique pair is turned round, contact first,
so that it also finds a contact's sub-tasks, and the index on the contact alone goes.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

REFERENCES = {
    "fk_sub_tasks_task_id_tasks": ("task_id", "tasks", "CASCADE"),
    "fk_sub_tasks_contact_id_contacts": ("contact_id", "contacts", "CASCADE"),
    "fk_sub_tasks_service_id_services": ("service_id", "services", None),
    "fk_sub_tasks_pinned_service_id_services": ("pinned_service_id", "services", None),
}


def upgrade() -> None:
    # SQLite copies the table without them (`edm.db.migrate` turns its foreign keys off
    # first: dropping the old table would otherwise cascade to the send attempts).
    with op.batch_alter_table("sub_tasks") as batch_op:
        for name in REFERENCES:
            batch_op.drop_constraint(name, type_="foreignkey")
        batch_op.drop_constraint("uq_sub_tasks_task_id_contact_id", type_="unique")
        batch_op.drop_index("ix_sub_tasks_contact_id")
        batch_op.create_unique_constraint(
            "uq_sub_tasks_contact_id_task_id", ["contact_id", "task_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("sub_tasks") as batch_op:
        batch_op.drop_constraint("uq_sub_tasks_contact_id_task_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_sub_tasks_task_id_contact_id", ["task_id", "contact_id"]
        )
        batch_op.create_index("ix_sub_tasks_contact_id", ["contact_id"])
        for name, (column, table, ondelete) in REFERENCES.items():
            batch_op.create_foreign_key(name, table, [column], ["id"], ondelete=ondelete)
