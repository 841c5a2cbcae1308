"""Sub-tasks without foreign keys to their task, contact and services

A foreign key is checked row by row: making a task of a million spent 9 of its 16 s on
PostgreSQL looking up the same task and each contact a million times. Tasks and services
are never deleted; a contact is deleted with its sub-tasks by `delete_contact`, which
waits for any expansion under way (`edm.db.audience_lock`). The keys to `sub_tasks`
(send attempts, events) stay.

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


def downgrade() -> None:
    with op.batch_alter_table("sub_tasks") as batch_op:
        for name, (column, table, ondelete) in REFERENCES.items():
            batch_op.create_foreign_key(name, table, [column], ["id"], ondelete=ondelete)
