"""The SQL of the claim, the send transitions and the reaper, for both databases side by side.

Each query is a dict keyed by dialect name. Where the two databases agree the text is
shared. Every write after a claim names the claim's `lease_token` in its WHERE clause:
that is the fence that stops a worker whose lease was taken over from writing.
All times come from the database's clock (`NOW`).
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    TextClause,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    null,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

NOW = {
    "postgresql": "extract(epoch from clock_timestamp())::float8",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}

RANDOM_KEY = {
    "postgresql": "replace(gen_random_uuid()::text, '-', '')",
    "sqlite": "lower(hex(randomblob(16)))",
}


def expansion_key(dialect: str, contact_id: ColumnElement[int]) -> ColumnElement[str]:
    """The idempotency keys of one expansion: 16 random hex digits drawn for it, then the
    contact's id moved by a random offset, in 16 hex digits. As unique as `RANDOM_KEY`
    (the pair task, contact is), as hard to guess from outside, and in contact order: the
    unique index on the key is filled from one place instead of at a million random
    ones, the 6 s that were a third of making a task of a million on PostgreSQL."""
    shifted = contact_id + secrets.randbelow(1 << 62)
    digits = (
        func.lpad(func.to_hex(shifted), 16, "0")
        if dialect == "postgresql"
        else func.printf("%016x", shifted)
    )
    return literal(secrets.token_hex(8)).concat(digits)


def each(sql_by_dialect: dict[str, str]) -> dict[str, str]:
    """One text per dialect, with `{now}` replaced by that database's clock."""
    return {dialect: sql.replace("{now}", NOW[dialect]) for dialect, sql in sql_by_dialect.items()}


def both(sql: str) -> dict[str, str]:
    """The same text for both databases."""
    return each({"postgresql": sql, "sqlite": sql})


SELECT_NOW = both("SELECT {now}")

# -- the claim, step 1: lock the pace row -------------------------------------------------
LOCK_SERVICE = each(
    {
        "postgresql": """
        SELECT id, enabled, frozen, interval_seconds, daily_quota, next_send_at,
               paused_until, quota_day, quota_used, {now} AS now
        FROM services WHERE id = :service_id FOR UPDATE""",
        # BEGIN IMMEDIATE already holds the database's write lock.
        "sqlite": """
        SELECT id, enabled, frozen, interval_seconds, daily_quota, next_send_at,
               paused_until, quota_day, quota_used, {now} AS now
        FROM services WHERE id = :service_id""",
    }
)

# -- step 2: the running tasks this service may send for, best priority first ----------------
ELIGIBLE_TASKS = both("""
    SELECT t.id, t.priority FROM tasks t
    WHERE t.status = 'running'
      AND (NOT EXISTS (SELECT 1 FROM task_services ts WHERE ts.task_id = t.id)
           OR EXISTS (SELECT 1 FROM task_services ts
                      WHERE ts.task_id = t.id AND ts.service_id = :service_id))
    ORDER BY t.priority DESC, t.id""")

# -- step 3: claim up to :n rows. PostgreSQL joins by primary key on an ARRAY so the
# planner cannot hash the whole table; :n is always a number, never NULL. `:after` is the
# worker's watermark: the scan starts past the rows it already claimed instead of
# filtering the whole sent prefix of a big task again on every claim. ---------------------
_CLAIM_SET = """
    SET status = 'allocated', service_id = :service_id, lease_token = :token,
        lease_expires_at = :lease_until, claimed_by = :owner"""
_CLAIM_RETURNING = "RETURNING id, task_id, contact_id, idempotency_key, attempts"
CLAIM = {
    "postgresql": f"""
        UPDATE sub_tasks {_CLAIM_SET}
        WHERE id = ANY(ARRAY(
            SELECT id FROM sub_tasks
            WHERE status = 'pending' AND task_id IN :task_ids AND next_attempt_at <= :now
              AND id >= :after
              AND (pinned_service_id IS NULL OR pinned_service_id = :service_id)
            ORDER BY id LIMIT :n
            FOR UPDATE SKIP LOCKED))
        {_CLAIM_RETURNING}""",
    "sqlite": f"""
        UPDATE sub_tasks {_CLAIM_SET}
        WHERE id IN (
            SELECT id FROM sub_tasks
            WHERE status = 'pending' AND task_id IN :task_ids AND next_attempt_at <= :now
              AND id >= :after
              AND (pinned_service_id IS NULL OR pinned_service_id = :service_id)
            ORDER BY id LIMIT :n)
        {_CLAIM_RETURNING}""",
}

# -- step 4: advance pace and quota by what was actually claimed ----------------------------
ADVANCE_PACE = both("""
    UPDATE services SET next_send_at = :next_send_at, quota_day = :quota_day,
                        quota_used = :quota_used
    WHERE id = :service_id""")

# Slots a claim did not use (its rows settled before any call) go back to the pace row,
# but only while no later claim has booked past them: the compare on `next_send_at` is
# what keeps two sends from ever sharing a slot.
REFUND_PACE = both("""
    UPDATE services SET next_send_at = :pace_end - :seconds
    WHERE id = :service_id AND next_send_at = :pace_end""")

REFUND_QUOTA = both("""
    UPDATE services
    SET quota_used = CASE WHEN quota_used > :n THEN quota_used - :n ELSE 0 END
    WHERE id = :service_id AND quota_day = :quota_day""")

CLAIMED_CONTACTS = both("""
    SELECT id, email, name, fields, status FROM contacts WHERE id IN :ids""")

TASK_CONTENT = both("""
    SELECT id, subject, html, text_body, from_addr FROM tasks WHERE id = :task_id""")

# -- allocated -> sending, committed before the provider is called ---------------------------
MARK_SENDING = both("""
    UPDATE sub_tasks
    SET status = 'sending', sending_at = {now}, attempts = attempts + 1,
        first_sending_at = coalesce(first_sending_at, {now}),
        lease_expires_at = {now} + :lease_seconds
    WHERE id IN :ids AND lease_token = :token AND status = 'allocated'
      AND task_id IN (SELECT id FROM tasks WHERE status = 'running')
    RETURNING id, attempts""")

# Claimed rows that will not be sent now (task paused, worker stopping) go back.
RELEASE = both("""
    UPDATE sub_tasks
    SET status = 'pending', lease_token = NULL, lease_expires_at = NULL
    WHERE id IN :ids AND lease_token = :token AND status = 'allocated'""")

# Settled before sending: suppressed contact (skipped) or a template that fails (failed).
SETTLE_ALLOCATED = both("""
    UPDATE sub_tasks
    SET status = :status, last_error = :error, error_class = :error_class,
        finished_at = {now}, lease_expires_at = NULL
    WHERE id = :id AND lease_token = :token AND status = 'allocated'""")

# -- outcomes of the provider call ------------------------------------------------------------
# Every `sent` outcome of a group in one statement; RETURNING tells whose fence held.
_SENT_SET = """
    SET status = 'sent', provider_message_id = v.message_id, sent_at = {now},
        finished_at = {now}, lease_expires_at = NULL, last_error = NULL, error_class = NULL"""
MARK_SENT_MANY = each(
    {
        "postgresql": f"""
        UPDATE sub_tasks AS s {_SENT_SET}
        FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(id bigint, message_id text)
        WHERE s.id = v.id AND s.lease_token = :token AND s.status = 'sending'
        RETURNING s.id""",
        "sqlite": f"""
        UPDATE sub_tasks {_SENT_SET}
        FROM (SELECT json_extract(value, '$.id') AS id,
                     json_extract(value, '$.message_id') AS message_id
              FROM json_each(:rows)) AS v
        WHERE sub_tasks.id = v.id AND sub_tasks.lease_token = :token
          AND sub_tasks.status = 'sending'
        RETURNING sub_tasks.id""",
    }
)

MARK_RETRY = both("""
    UPDATE sub_tasks
    SET status = 'pending', next_attempt_at = {now} + :delay, lease_token = NULL,
        lease_expires_at = NULL, pinned_service_id = NULL, attempts = attempts - :refund,
        last_error = :error, error_class = :error_class
    WHERE id = :id AND lease_token = :token AND status = 'sending'""")

MARK_FINAL = both("""
    UPDATE sub_tasks
    SET status = :status, last_error = :error, error_class = :error_class,
        finished_at = {now}, lease_expires_at = NULL
    WHERE id = :id AND lease_token = :token AND status = 'sending'""")

MARK_UNKNOWN = both("""
    UPDATE sub_tasks
    SET status = 'unknown', last_error = :error, error_class = 'unknown',
        lease_expires_at = NULL
    WHERE id = :id AND lease_token = :token AND status = 'sending'""")

# Every call of a group in one statement: its rows travel as one JSON array.
_ATTEMPT_COLUMNS = """
    INSERT INTO send_attempts (sub_task_id, service_id, lease_token, started_at, finished_at,
                               outcome, provider_message_id, error, fenced)"""
LOG_ATTEMPTS_MANY = each(
    {
        "postgresql": f"""{_ATTEMPT_COLUMNS}
        SELECT v.sub_task_id, :service_id, :token, v.started_at, {{now}}, v.outcome,
               v.message_id, v.error, v.fenced
        FROM jsonb_to_recordset(CAST(:rows AS jsonb))
             AS v(sub_task_id bigint, started_at float8, outcome text, message_id text,
                  error text, fenced boolean)""",
        "sqlite": f"""{_ATTEMPT_COLUMNS}
        SELECT json_extract(value, '$.sub_task_id'), :service_id, :token,
               json_extract(value, '$.started_at'), {{now}}, json_extract(value, '$.outcome'),
               json_extract(value, '$.message_id'), json_extract(value, '$.error'),
               json_extract(value, '$.fenced')
        FROM json_each(:rows)""",
    }
)

MARK_CONTACT_INVALID = both("""
    UPDATE contacts SET status = 'invalid', status_reason = :reason, updated_at = {now}
    WHERE id = (SELECT contact_id FROM sub_tasks WHERE id = :sub_task_id)
      AND status = 'active'""")

FREEZE_SERVICE = both("""
    UPDATE services SET frozen = true, frozen_reason = :reason, frozen_at = {now},
                        last_error = :reason, last_error_at = {now}
    WHERE id = :service_id""")

PAUSE_SERVICE = both("""
    UPDATE services SET paused_until = {now} + :seconds
    WHERE id = :service_id AND paused_until < {now} + :seconds""")

RECORD_SERVICE_ERROR = both("""
    UPDATE services SET last_error = :error, last_error_at = {now} WHERE id = :service_id""")

# -- the reaper: safe to run in every instance at once -----------------------------------------
REAP_ALLOCATED = both("""
    UPDATE sub_tasks SET status = 'pending', lease_token = NULL, lease_expires_at = NULL
    WHERE status = 'allocated' AND lease_expires_at < {now}""")

REAP_SENDING = both("""
    UPDATE sub_tasks
    SET status = 'unknown', lease_expires_at = NULL, error_class = 'unknown',
        last_error = 'lease ran out while sending: outcome unknown'
    WHERE status = 'sending' AND lease_expires_at < {now}""")

# Claims of a worker that is gone come back without waiting out their leases: those of an
# instance whose heartbeat stopped (`:dead_seconds`), and those a crashed worker of a live
# instance left (`RELEASE_WORKER`, run before its replacement starts). The status list
# matches the in-flight index's predicate so that this walks only in-flight rows.
_RELEASE_SET = """
    SET status = CASE WHEN status = 'allocated' THEN 'pending' ELSE 'unknown' END,
        error_class = CASE WHEN status = 'allocated' THEN error_class ELSE 'unknown' END,
        last_error = CASE WHEN status = 'allocated' THEN last_error
                          ELSE :reason END,
        lease_token = CASE WHEN status = 'allocated' THEN NULL ELSE lease_token END,
        lease_expires_at = NULL, claimed_by = NULL"""
RELEASE_DEAD_INSTANCES = both(f"""
    UPDATE sub_tasks {_RELEASE_SET}
    WHERE status IN ('allocated', 'sending')
      AND claimed_by IN (SELECT instance_id FROM worker_heartbeats GROUP BY instance_id
                         HAVING max(beat_at) < {{now}} - :dead_seconds)""")
RELEASE_WORKER = both(f"""
    UPDATE sub_tasks {_RELEASE_SET}
    WHERE status IN ('allocated', 'sending') AND claimed_by = :owner
      AND service_id = :service_id""")

# Heartbeats of instances gone for a day: nothing is left to release for them.
FORGET_OLD_HEARTBEATS = both("""
    DELETE FROM worker_heartbeats WHERE beat_at < {now} - 86400""")

# -- the reconciler: unknown rows of tasks that are not paused ---------------------------------
UNKNOWN_ROWS = both("""
    SELECT s.id, s.service_id, s.first_sending_at, s.attempts, t.status AS task_status,
           t.delivery_policy
    FROM sub_tasks s JOIN tasks t ON t.id = s.task_id
    WHERE s.status = 'unknown' AND t.status <> 'paused'
    ORDER BY s.id LIMIT :limit""")

RESEND_SAME_KEY = both("""
    UPDATE sub_tasks
    SET status = 'pending', pinned_service_id = service_id, next_attempt_at = {now} + :delay,
        lease_token = NULL
    WHERE id = :id AND status = 'unknown'""")

REQUEUE_UNKNOWN = both("""
    UPDATE sub_tasks
    SET status = 'pending', pinned_service_id = NULL, next_attempt_at = {now} + :delay,
        lease_token = NULL
    WHERE id = :id AND status = 'unknown'""")

FAIL_UNKNOWN = both("""
    UPDATE sub_tasks
    SET status = 'failed', error_class = 'unknown', last_error = :reason, finished_at = {now}
    WHERE id = :id AND status = 'unknown'""")

# A task whose templates keep failing at send time is paused before it burns through its
# audience; `status_reason` tells the operator why.
PAUSE_TASK_WITH_REASON = both("""
    UPDATE tasks SET status = 'paused', status_reason = :reason
    WHERE id = :task_id AND status = 'running'""")

# What a worker should expect a message of a running task to weigh, in characters: the
# HTML counts twice, as a text part is made from it when a task has none.
RUNNING_TEMPLATE_CHARS = both("""
    SELECT max(length(subject) + 2 * coalesce(length(html), 0) + coalesce(length(text_body), 0))
    FROM tasks WHERE status = 'running'""")

# -- task upkeep ---------------------------------------------------------------------------------
# `status <> 'active'` is the predicate of the partial index of suppressed contacts, word
# for word (SQLite uses a partial index only then): the few suppressed contacts are found
# there, where reading every contact and every pending row of a task of a million took
# half a second on each pass of upkeep.
SKIP_SUPPRESSED = both("""
    UPDATE sub_tasks
    SET status = 'skipped', finished_at = {now},
        last_error = 'contact is ' || (SELECT c.status FROM contacts c
                                       WHERE c.id = sub_tasks.contact_id)
    WHERE status = 'pending'
      AND contact_id IN (SELECT id FROM contacts WHERE status <> 'active')""")

COMPLETE_TASKS = both("""
    UPDATE tasks SET status = 'completed', completed_at = {now}
    WHERE status = 'running'
      AND NOT EXISTS (SELECT 1 FROM sub_tasks s WHERE s.task_id = tasks.id
                      AND s.status IN ('pending', 'allocated', 'sending', 'unknown'))""")

START_SCHEDULED = both("""
    UPDATE tasks SET status = 'running', started_at = {now}
    WHERE status = 'scheduled' AND scheduled_at <= {now}""")


# An expansion reads contacts and writes their sub-tasks; deleting a contact deletes its
# sub-tasks. No foreign key ties the two (migration 0010), so they wait for each other
# instead: an expansion holds this lock shared, a delete exclusively, from before its
# first read. SQLite runs one write transaction at a time already.
_EXPANSION_LOCK = 7270534


def hold_expansion_lock(conn: Connection, *, exclusive: bool) -> None:
    if conn.dialect.name == "postgresql":
        how = "" if exclusive else "_shared"
        conn.execute(text(f"SELECT pg_advisory_xact_lock{how}({_EXPANSION_LOCK})"))


def expand_task(
    dialect: str, task_id: int, audience: ColumnElement[bool], *, new: bool = False
) -> Insert:
    """One sub-task per contact of the audience (a filter on `contacts`, see
    `edm.audience.selection`): `pending` for an active contact, `skipped` with the reason for
    a suppressed one. Contacts that already have one are left alone, so running it again
    adds only the new ones. Built with SQLAlchemy: the audience carries bound parameters.

    A `new` task (made in this transaction) has no sub-task yet: the plain INSERT skips
    ON CONFLICT's check of each row against the pair's unique index before inserting it
    (1.2 s of the 20 s a million rows took on PostgreSQL). In contact order, so that the
    indexes on the pair and the ids are filled from one end."""
    from edm.db.dialects import insert_into
    from edm.db.models import Contact, SubTask

    c = Contact.__table__
    active = c.c.status == "active"
    rows = (
        select(
            literal(task_id),
            c.c.id,
            case((active, literal("pending")), else_=literal("skipped")),
            expansion_key(dialect, c.c.id),
            case((active, null()), else_=literal("contact is ").concat(c.c.status)),
            case((active, null()), else_=literal_column(NOW[dialect])),
        )
        .where(audience)
        .order_by(c.c.id)
    )
    columns = ["task_id", "contact_id", "status", "idempotency_key", "last_error", "finished_at"]
    statement = insert_into(dialect, SubTask.__table__).from_select(columns, rows)
    if new:
        return statement
    return statement.on_conflict_do_nothing(index_elements=["contact_id", "task_id"])


# -- checks at task create, on the task's audience ------------------------------------------
_AUDIENCE = """contacts c JOIN sub_tasks s ON s.contact_id = c.id
        WHERE s.task_id = :task_id AND s.status = 'pending'"""


# A field is missing when the contact's JSON has no such key (a JSON column on PostgreSQL:
# cast to jsonb for the key test). Asked of the audience's active contacts, not of the
# new task's pending rows: inside the transaction that made them, the planner's statistics
# say the task has none, and it joined a million rows one by one (1.4 s). Whether any
# contact lacks it first: that stops at the first one, where counting them reads every
# contact of the audience, and the count is needed only for the error.
def lacking_field(dialect: str, field: str) -> ColumnElement[bool]:
    """The contact's fields have no key `field` (a condition on `contacts`)."""
    from edm.db.models import Contact

    fields = Contact.__table__.c.fields
    if dialect == "postgresql":
        return ~func.jsonb_exists(cast(fields, JSONB), field)
    # A template's field is a name (`{{ city }}`): quoted, it is one key of the top level.
    return func.json_type(fields, f'$."{field}"').is_(None)


AUDIENCE_FIELD_NAMES = {
    "postgresql": """
        SELECT DISTINCT k
        FROM contacts c JOIN sub_tasks s ON s.contact_id = c.id,
             jsonb_object_keys(CAST(c.fields AS jsonb)) AS k
        WHERE s.task_id = :task_id AND s.status = 'pending' ORDER BY k LIMIT :limit""",
    "sqlite": """
        SELECT DISTINCT j.key
        FROM contacts c JOIN sub_tasks s ON s.contact_id = c.id, json_each(c.fields) AS j
        WHERE s.task_id = :task_id AND s.status = 'pending' ORDER BY j.key LIMIT :limit""",
}

# Ordered by `s.id`: the order of the index of a task's pending rows, so the LIMIT stops
# the scan. Ordered by the contact, the planner sorted instead, joining all of a million
# rows first (1.2 s): inside the transaction that made them its statistics say the task
# has none.
AUDIENCE_SAMPLE = both(f"""
    SELECT c.id, c.email, c.name, c.fields, c.status FROM {_AUDIENCE}
    ORDER BY s.id LIMIT :limit""")

# Whether any pending sub-task's contact can still be sent to (one may have bounced since
# the task was created: upkeep skips its row). EXISTS stops at the first.
AUDIENCE_PENDING = both("""
    SELECT EXISTS (SELECT 1 FROM sub_tasks s JOIN contacts c ON c.id = s.contact_id
    WHERE s.task_id = :task_id AND s.status = 'pending' AND c.status = 'active')""")


CANCEL_SUBTASKS = both("""
    UPDATE sub_tasks SET status = 'cancelled', finished_at = {now}, lease_expires_at = NULL
    WHERE task_id = :task_id AND status IN ('pending', 'allocated')""")

# -- what `task show` and `task list` read ---------------------------------------------------------
_TASK_COLUMNS = """id, name, status, status_reason, delivery_policy, priority, created_at,
    scheduled_at, started_at, completed_at, audience_where"""
TASK_ROW = both(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = :task_id")
TASK_ROWS = both(f"SELECT {_TASK_COLUMNS} FROM tasks ORDER BY id")
TASK_LIST_NAMES = both("""
    SELECT l.name, t.excluded FROM task_lists t JOIN lists l ON l.id = t.list_id
    WHERE t.task_id = :task_id ORDER BY l.name""")

TASK_SERVICE_NAMES = both("""
    SELECT s.name FROM services s JOIN task_services ts ON ts.service_id = s.id
    WHERE ts.task_id = :task_id ORDER BY s.name""")

# The clock read in a subquery: once, so that the bound is a constant the index on a task's
# sent rows by time can seek to (a volatile `{now}` in the WHERE is evaluated per row).
TASK_SENT_SINCE = both("""
    SELECT count(*) FROM sub_tasks
    WHERE task_id = :task_id AND status = 'sent' AND sent_at >= (SELECT {now} - :seconds)""")

# The funnel: unique sub-tasks with each delivery fact, derived like the counts.
_FUNNEL_COLUMNS = """count(delivered_at) AS delivered,
           count(opened_at) AS opened,
           count(clicked_at) AS clicked,
           count(*) FILTER (WHERE bounce_type = 'hard') AS hard_bounced,
           count(*) FILTER (WHERE bounce_type = 'soft') AS soft_bounced,
           count(complained_at) AS complained,
           count(unsubscribed_at) AS unsubscribed"""
TASK_FUNNEL = both(f"""
    SELECT {_FUNNEL_COLUMNS}
    FROM sub_tasks WHERE task_id = :task_id""")

# -- a task's funnel, kept (`edm.funnels`) ------------------------------------------------------
# The funnel's facts of some sub-tasks, read before and after a statement changes them,
# and locked (in id order, as applying events locks them): no other transaction changes
# them between the two reads. (SQLite's write lock does this already.)
_FACTS_OF = """
    SELECT id, task_id,
           CASE WHEN delivered_at IS NULL THEN 0 ELSE 1 END AS delivered,
           CASE WHEN opened_at IS NULL THEN 0 ELSE 1 END AS opened,
           CASE WHEN clicked_at IS NULL THEN 0 ELSE 1 END AS clicked,
           CASE WHEN bounce_type = 'hard' THEN 1 ELSE 0 END AS hard_bounced,
           CASE WHEN bounce_type = 'soft' THEN 1 ELSE 0 END AS soft_bounced,
           CASE WHEN complained_at IS NULL THEN 0 ELSE 1 END AS complained,
           CASE WHEN unsubscribed_at IS NULL THEN 0 ELSE 1 END AS unsubscribed
    FROM sub_tasks WHERE id IN :ids ORDER BY id"""
FUNNEL_FACTS_OF = {"postgresql": _FACTS_OF + " FOR UPDATE", "sqlite": _FACTS_OF}
_KEPT = "delivered, opened, clicked, hard_bounced, soft_bounced, complained, unsubscribed"
ADD_TO_FUNNEL = both(f"""
    INSERT INTO task_funnels (task_id, {_KEPT})
    VALUES (:task_id, :delivered, :opened, :clicked, :hard_bounced, :soft_bounced,
            :complained, :unsubscribed)
    ON CONFLICT (task_id) DO UPDATE SET
        delivered = task_funnels.delivered + excluded.delivered,
        opened = task_funnels.opened + excluded.opened,
        clicked = task_funnels.clicked + excluded.clicked,
        hard_bounced = task_funnels.hard_bounced + excluded.hard_bounced,
        soft_bounced = task_funnels.soft_bounced + excluded.soft_bounced,
        complained = task_funnels.complained + excluded.complained,
        unsubscribed = task_funnels.unsubscribed + excluded.unsubscribed""")
KEPT_FUNNEL = both(f"SELECT {_KEPT} FROM task_funnels WHERE task_id = :task_id")
# Tasks whose kept funnel is not their sub-tasks' (a task without one keeps zeros).
_RECOUNTED = f"SELECT task_id, {_FUNNEL_COLUMNS} FROM sub_tasks GROUP BY task_id"
_DIFFERS = " OR ".join(f"coalesce(f.{x}, 0) <> coalesce(r.{x}, 0)" for x in _KEPT.split(", "))
DRIFTED_FUNNELS = f"""
    SELECT t.id FROM tasks t
    LEFT JOIN task_funnels f ON f.task_id = t.id
    LEFT JOIN ({_RECOUNTED}) r ON r.task_id = t.id
    WHERE {_DIFFERS}"""
FUNNELS_NOT_KEPT = both(DRIFTED_FUNNELS + " ORDER BY t.id LIMIT :limit")
# Repair: these tasks' funnels counted again from their sub-tasks.
RECOUNT_FUNNELS = [
    both("DELETE FROM task_funnels WHERE task_id IN :ids"),
    both(f"""
        INSERT INTO task_funnels (task_id, {_KEPT})
        SELECT task_id, {_FUNNEL_COLUMNS} FROM sub_tasks WHERE task_id IN :ids
        GROUP BY task_id"""),
]

# A task's rows by status and by which delivery facts they have: a few dozen groups at
# most, from which `task_views` derives the counts by status, the funnel and the shown
# states in one read. Grouping on the facts costs less than a filtered count per fact and
# per shown state (188 against 223 ms at a million rows).
TASK_TALLY = both("""
    SELECT status, bounce_type,
           delivered_at IS NOT NULL AS delivered, opened_at IS NOT NULL AS opened,
           clicked_at IS NOT NULL AS clicked, complained_at IS NOT NULL AS complained,
           unsubscribed_at IS NOT NULL AS unsubscribed, count(*) AS n
    FROM sub_tasks WHERE task_id = :task_id
    GROUP BY 1, 2, 3, 4, 5, 6, 7""")

# What a task page shows besides its counts: its sent rows by service, and per minute
# since a time (the last 24 hours, or since it started). Both read the index on a task's
# sent rows alone.
TASK_SENT_BY_SERVICE = both("""
    SELECT service_id, count(*) AS n FROM sub_tasks
    WHERE task_id = :task_id AND status = 'sent' GROUP BY service_id""")
# The minute is cut down (PostgreSQL's CAST rounds; SQLite's cuts, and has no floor()
# unless built with its maths functions).
_MINUTE = {"postgresql": "floor(sent_at / 60) * 60", "sqlite": "CAST(sent_at / 60 AS INTEGER) * 60"}
TASK_SENT_PER_MINUTE = {
    dialect: f"""
    SELECT {minute} AS minute, count(*) AS n FROM sub_tasks
    WHERE task_id = :task_id AND status = 'sent' AND sent_at >= :since
    GROUP BY {minute} ORDER BY 1"""
    for dialect, minute in _MINUTE.items()
}

TASK_FAILURE_REASONS = both("""
    SELECT status, error_class, last_error, count(*) AS n FROM sub_tasks
    WHERE task_id = :task_id AND status IN ('failed', 'skipped', 'unknown')
    GROUP BY status, error_class, last_error
    ORDER BY count(*) DESC, status, last_error LIMIT :limit""")

TASK_COUNTS = both("""
    SELECT status, count(*) AS n FROM sub_tasks WHERE task_id = :task_id GROUP BY status""")

# A running task still has work while any of its sub-tasks can change by sending.
RUNNING_WORK_LEFT = both("""
    SELECT count(*) FROM tasks t
    WHERE t.status IN ('running', 'scheduled')
      AND EXISTS (SELECT 1 FROM sub_tasks s WHERE s.task_id = t.id
                  AND s.status IN ('pending', 'allocated', 'sending', 'unknown'))""")


def query(sql_by_dialect: dict[str, str], dialect: str, *expanding: str) -> TextClause:
    """The statement for one dialect, with `IN :name` lists bound as expanding parameters."""
    return _statement(sql_by_dialect[dialect], expanding)


@lru_cache(maxsize=1024)
def _statement(sql: str, expanding: tuple[str, ...]) -> TextClause:
    statement = text(sql)
    if expanding:
        statement = statement.bindparams(*(bindparam(name, expanding=True) for name in expanding))
    return statement


# -- supervisor --------------------------------------------------------------------------------
SERVICES = both("""
    SELECT id, name, provider, options, enabled, frozen, config_version FROM services
    ORDER BY id""")

HEARTBEAT = both("""
    INSERT INTO worker_heartbeats (instance_id, service_id, hostname, pid, state, started_at,
                                   beat_at, restarts, last_error)
    VALUES (:instance_id, :service_id, :hostname, :pid, :state, :started_at, {now}, :restarts,
            :last_error)
    ON CONFLICT (instance_id, service_id) DO UPDATE
    SET state = excluded.state, started_at = excluded.started_at, beat_at = excluded.beat_at,
        restarts = excluded.restarts, last_error = excluded.last_error, pid = excluded.pid""")

FORGET_HEARTBEATS = both("""
    DELETE FROM worker_heartbeats WHERE instance_id = :instance_id""")
