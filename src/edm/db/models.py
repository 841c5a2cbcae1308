"""The schema.

Times are stored as epoch seconds (float, UTC) so that pace arithmetic (`next_send_at +
n * interval`) is the same plain SQL on SQLite and PostgreSQL, and always taken from the
database's clock (see `edm.db.queries.NOW`).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A BIGINT primary key that SQLite still treats as its auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer, "sqlite")

CONTACT_STATUSES = ("active", "bounced", "complained", "unsubscribed", "invalid")
TASK_STATUSES = ("draft", "scheduled", "running", "paused", "completed", "cancelled")
SUBTASK_STATUSES = (
    "pending",
    "allocated",
    "sending",
    "sent",
    "unknown",
    "failed",
    "skipped",
    "cancelled",
)
# A sub-task in one of these can still change by sending; a task with none is complete.
ACTIVE_SUBTASK_STATUSES = ("pending", "allocated", "sending", "unknown")
DELIVERY_POLICIES = ("at_most_once", "at_least_once")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        # Only the suppressed: upkeep finds them here. An index of every status made each
        # imported contact a third dearer to write, and an active one is never looked up
        # by its status (a million of them are read in order, not through an index).
        Index(
            "ix_contacts_suppressed",
            "status",
            sqlite_where=text("status <> 'active'"),
            postgresql_where=text("status <> 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    fields: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), server_default="active")
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Service(Base):
    """A sending account. Its row is also the pace row that every claim locks."""

    __tablename__ = "services"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    provider: Mapped[str] = mapped_column(String(50))
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    interval_seconds: Mapped[float] = mapped_column(Float, server_default="0")
    daily_quota: Mapped[int | None] = mapped_column(Integer)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=true())
    frozen: Mapped[bool] = mapped_column(Boolean, server_default=false())
    frozen_reason: Mapped[str | None] = mapped_column(Text)
    frozen_at: Mapped[float | None] = mapped_column(Float)
    # A freeze with an expiry (`edm service freeze --for`, a reputation freeze) is lifted
    # by the repair loop; the last unfreeze starts a fresh reputation window.
    frozen_until: Mapped[float | None] = mapped_column(Float)
    unfrozen_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[float | None] = mapped_column(Float)
    # Pace (GCRA theoretical arrival time), provider back-pressure and quota counters.
    next_send_at: Mapped[float] = mapped_column(Float, server_default="0")
    paused_until: Mapped[float] = mapped_column(Float, server_default="0")
    quota_day: Mapped[str | None] = mapped_column(String(10))
    quota_used: Mapped[int] = mapped_column(Integer, server_default="0")
    # Bumped on every change that a running worker must pick up (options, provider).
    config_version: Mapped[int] = mapped_column(Integer, server_default="1")
    created_at: Mapped[float] = mapped_column(Float)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), server_default="draft", index=True)
    from_addr: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    text_body: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, server_default="0")
    delivery_policy: Mapped[str] = mapped_column(String(20), server_default="at_most_once")
    # Why the task is in its status when a machine put it there (paused after template
    # failures, ...); shown by `task show`.
    status_reason: Mapped[str | None] = mapped_column(Text)
    scheduled_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    completed_at: Mapped[float | None] = mapped_column(Float)
    # The audience's condition on contact fields (edm.audience.condition), canonical text;
    # its lists are in task_lists. None and no lists: every contact.
    audience_where: Mapped[str | None] = mapped_column(Text)


class TaskService(Base):
    """The services a task may use; a task with no rows here may use every service."""

    __tablename__ = "task_services"

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    service_id: Mapped[int] = mapped_column(
        ForeignKey("services.id", ondelete="CASCADE"), primary_key=True
    )


class SubTask(Base):
    __tablename__ = "sub_tasks"
    __table_args__ = (
        # Contact first: the same index finds a contact's sub-tasks (what suppressed it,
        # deleting it); a second index on the contact was a sixth of making a task.
        UniqueConstraint("contact_id", "task_id"),
        # The claim walks this index: only pending rows are in it.
        Index(
            "ix_sub_tasks_claimable",
            "task_id",
            "id",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        # The reaper walks this one: only in-flight rows are in it.
        Index(
            "ix_sub_tasks_in_flight",
            "lease_expires_at",
            sqlite_where=text("status IN ('allocated', 'sending')"),
            postgresql_where=text("status IN ('allocated', 'sending')"),
        ),
        Index("ix_sub_tasks_task_status", "task_id", "status"),
        # A task's sent rows by time: its recent pace, its sends per minute, its split by
        # service, read from the index alone.
        Index(
            "ix_sub_tasks_task_sent",
            "task_id",
            "sent_at",
            "service_id",
            sqlite_where=text("status = 'sent'"),
            postgresql_where=text("status = 'sent'"),
        ),
        # Pending rows pinned to a service (a same-key resend): few, counted by the ETA.
        Index(
            "ix_sub_tasks_pinned",
            "task_id",
            "pinned_service_id",
            sqlite_where=text("status = 'pending' AND pinned_service_id IS NOT NULL"),
            postgresql_where=text("status = 'pending' AND pinned_service_id IS NOT NULL"),
        ),
        # Webhooks name a message by the provider's id (EngageLab `email_id`). Partial, like
        # the next: a task's expansion adds a million rows that have none yet.
        Index(
            "ix_sub_tasks_provider_message_id",
            "provider_message_id",
            sqlite_where=text("provider_message_id IS NOT NULL"),
            postgresql_where=text("provider_message_id IS NOT NULL"),
        ),
        # Sender reputation: what a service sent lately.
        Index(
            "ix_sub_tasks_service_sent",
            "service_id",
            "sent_at",
            sqlite_where=text("sent_at IS NOT NULL"),
            postgresql_where=text("sent_at IS NOT NULL"),
        ),
        Index(
            "ix_sub_tasks_status_unknown",
            "id",
            sqlite_where=text("status = 'unknown'"),
            postgresql_where=text("status = 'unknown'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # No foreign keys from here (see migration 0010): they are checked row by row, most
    # of the time a task of a million took to make. Tasks and services are never deleted;
    # `delete_contact` deletes a contact's sub-tasks with it.
    task_id: Mapped[int] = mapped_column(BigId)
    contact_id: Mapped[int] = mapped_column(BigId)
    status: Mapped[str] = mapped_column(String(20), server_default="pending")
    # The service that has (or last had) the sub-task; `pinned_service_id` forces the
    # next attempt onto one service, so a resend with the same key reaches the provider
    # that can recognise it.
    service_id: Mapped[int | None] = mapped_column(BigId)
    pinned_service_id: Mapped[int | None] = mapped_column(BigId)
    lease_token: Mapped[str | None] = mapped_column(String(32))
    # "<instance id>/<service id>" of the worker holding the claim: when that instance's
    # heartbeat stops, or that worker is restarted, its claims are released at once
    # instead of waiting out the lease.
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[float] = mapped_column(Float, server_default="0")
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    provider_message_id: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(String(20))
    sending_at: Mapped[float | None] = mapped_column(Float)
    # The first call with this idempotency key: a provider's de-duplication window
    # (EngageLab: one hour) runs from here, not from the latest retry.
    first_sending_at: Mapped[float | None] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    # Delivery facts: first-seen times and counters, filled in by tracking events.
    delivered_at: Mapped[float | None] = mapped_column(Float)
    opened_at: Mapped[float | None] = mapped_column(Float)
    open_count: Mapped[int] = mapped_column(Integer, server_default="0")
    clicked_at: Mapped[float | None] = mapped_column(Float)
    click_count: Mapped[int] = mapped_column(Integer, server_default="0")
    bounced_at: Mapped[float | None] = mapped_column(Float)
    bounce_type: Mapped[str | None] = mapped_column(String(10))
    complained_at: Mapped[float | None] = mapped_column(Float)
    unsubscribed_at: Mapped[float | None] = mapped_column(Float)


class SendAttempt(Base):
    """One provider call, appended whatever the fence says, so no real outcome is lost."""

    __tablename__ = "send_attempts"
    # Send success rate: a service's calls lately.
    __table_args__ = (
        Index("ix_send_attempts_service_finished", "service_id", "finished_at"),
        # A service's accepted sends lately (its measured pace), from the index alone.
        Index(
            "ix_send_attempts_service_sent",
            "service_id",
            "finished_at",
            sqlite_where=text("outcome = 'sent'"),
            postgresql_where=text("outcome = 'sent'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sub_task_id: Mapped[int] = mapped_column(
        ForeignKey("sub_tasks.id", ondelete="CASCADE"), index=True
    )
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"))
    lease_token: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(20))  # sent | transient | recipient | ...
    provider_message_id: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    fenced: Mapped[bool] = mapped_column(Boolean, server_default=false())


class WorkerHeartbeat(Base):
    """One row per (instance, service) worker: how health knows a service is really sent for."""

    __tablename__ = "worker_heartbeats"

    instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_id: Mapped[int] = mapped_column(
        ForeignKey("services.id", ondelete="CASCADE"), primary_key=True
    )
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))  # running | restarting | stopped
    started_at: Mapped[float] = mapped_column(Float)
    beat_at: Mapped[float] = mapped_column(Float)
    restarts: Mapped[int] = mapped_column(Integer, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)


class AppSetting(Base):
    """Values an installation makes once and every instance must share (signing key)."""

    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


WEBHOOK_REQUEST_STATUSES = ("received", "processing", "processed", "invalid", "error")
EVENT_STATUSES = ("received", "applied", "unmatched", "given_up", "error", "ignored")


class WebhookRequest(Base):
    """The event log: every authenticated webhook request as it arrived, committed before
    anything is parsed, so no event is lost to a bug or a crash further on."""

    __tablename__ = "webhook_requests"
    __table_args__ = (
        Index("ix_webhook_requests_status_received", "status", "received_at"),
        # Webhook silence: the last request from each provider.
        Index("ix_webhook_requests_provider_received", "provider", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    provider: Mapped[str] = mapped_column(String(50))
    received_at: Mapped[float] = mapped_column(Float)
    headers: Mapped[dict] = mapped_column(JSON, default=dict)  # only those that matter
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), server_default="received")
    error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[float | None] = mapped_column(Float)


class Event(Base):
    """One tracking fact, once: the same fact sent again only counts in `duplicates`."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("provider", "dedupe_key"),
        Index("ix_events_status_created", "status", "created_at"),
        Index("ix_events_sub_task_id", "sub_task_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    request_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhook_requests.id", ondelete="SET NULL")
    )
    provider: Mapped[str] = mapped_column(String(50))
    dedupe_key: Mapped[str] = mapped_column(String(200))
    event: Mapped[str] = mapped_column(String(20))
    occurred_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20), server_default="received")
    duplicates: Mapped[int] = mapped_column(Integer, server_default="0")
    # What the provider told us, kept so an unmatched or failed event can be tried again.
    ref_sub_task_id: Mapped[int | None] = mapped_column(BigInteger)
    ref_task_id: Mapped[int | None] = mapped_column(BigInteger)
    provider_message_id: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(Text)
    recipient: Mapped[str | None] = mapped_column(String(320))
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    # What it was matched to and when it was applied.
    sub_task_id: Mapped[int | None] = mapped_column(ForeignKey("sub_tasks.id", ondelete="SET NULL"))
    matched_by: Mapped[str | None] = mapped_column(String(30))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    applied_at: Mapped[float | None] = mapped_column(Float)


class Incident(Base):
    """A check that turned critical, until it is ok again: the row, not a process's memory,
    is what makes one alert per incident however many instances watch."""

    __tablename__ = "incidents"
    __table_args__ = (
        Index(
            "ux_incidents_open_check",
            "check_name",
            unique=True,
            sqlite_where=text("resolved_at IS NULL"),
            postgresql_where=text("resolved_at IS NULL"),
        ),
        Index("ix_incidents_check_opened", "check_name", "opened_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    check_name: Mapped[str] = mapped_column(String(50))
    opened_at: Mapped[float] = mapped_column(Float)
    resolved_at: Mapped[float | None] = mapped_column(Float)
    # When its alert was queued; NULL while the check's cool-down holds it back.
    alerted_at: Mapped[float | None] = mapped_column(Float)
    value: Mapped[str | None] = mapped_column(Text)  # JSON
    threshold: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str] = mapped_column(Text)
    instance_id: Mapped[str] = mapped_column(String(100))


class AlertDelivery(Base):
    """One notification to one receiver, kept until it is delivered: a receiver that is
    down is retried with back-off by any instance, and never holds up sending."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # alert | recovery | repair
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # JSON, as posted
    status: Mapped[str] = mapped_column(String(20), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[float] = mapped_column(Float)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)


class RepairRecord(Base):
    """What a repair fixed, where and when: `edm repair --history`."""

    __tablename__ = "repairs"
    __table_args__ = (Index("ix_repairs_at", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(30))
    count: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text)
    instance_id: Mapped[str] = mapped_column(String(100))
    at: Mapped[float] = mapped_column(Float)


class ContactList(Base):
    """A named list of contacts; a contact belongs to any number of lists."""

    __tablename__ = "lists"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class ListMember(Base):
    __tablename__ = "list_members"
    __table_args__ = (Index("ix_list_members_contact_id", "contact_id"),)

    list_id: Mapped[int] = mapped_column(
        ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True
    )
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    added_at: Mapped[float] = mapped_column(Float)


class TaskFunnel(Base):
    """A task's funnel: its sub-tasks with each delivery fact, kept as facts are applied
    (`edm.funnels`) so that a page need not read every sub-task of a task of a million.
    The invariants check recounts it; the repair loop counts it again if it drifts."""

    __tablename__ = "task_funnels"

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    delivered: Mapped[int] = mapped_column(Integer, server_default="0")
    opened: Mapped[int] = mapped_column(Integer, server_default="0")
    clicked: Mapped[int] = mapped_column(Integer, server_default="0")
    hard_bounced: Mapped[int] = mapped_column(Integer, server_default="0")
    soft_bounced: Mapped[int] = mapped_column(Integer, server_default="0")
    complained: Mapped[int] = mapped_column(Integer, server_default="0")
    unsubscribed: Mapped[int] = mapped_column(Integer, server_default="0")


class TaskList(Base):
    """A list a task sends to, or (`excluded`) whose members it leaves out."""

    __tablename__ = "task_lists"

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    # No cascade: a list a task was built from is not deleted under it.
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id"), primary_key=True)
    excluded: Mapped[bool] = mapped_column(Boolean, server_default=false())


API_ROLES = ("admin", "read")


class ApiToken(Base):
    """A bearer token of the REST API. Only its SHA-256 is kept: the token itself is shown
    once, when it is made."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))  # admin | read
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class ConsoleUser(Base):
    """A person who signs in to the console with a password (`edm user create`). Only a
    salted scrypt hash of the password is kept."""

    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(20))  # admin | read
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[float] = mapped_column(Float)
    password_set_at: Mapped[float] = mapped_column(Float)
    last_login_at: Mapped[float | None] = mapped_column(Float)
