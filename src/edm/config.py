"""Settings read from EDM_* environment variables.

Every timing knob lives here so tests can shrink intervals and leases to fractions of a
second without touching code.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edm.db.location import default_database_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDM_", extra="ignore")

    # repr=False: the URL may carry a password.
    database_url: str = Field(default_factory=default_database_url, repr=False)
    # Where recipients reach this instance (unsubscribe links, webhooks).
    public_url: str = "http://localhost:8000"
    # Signs unsubscribe tokens. Empty: a random key is made once and kept in the database,
    # so every instance sharing the database signs alike.
    secret_key: str = ""

    # Claiming and leases.
    lease_seconds: float = Field(30.0, gt=0, description="lease on a claimed or sending sub-task")
    batch_size: int = Field(50, ge=1, description="most sub-tasks one claim may take")
    lookahead_seconds: float = Field(
        1.0, ge=0, description="how far ahead a paced claim may book slots"
    )
    max_in_flight: int = Field(200, ge=1, description="claimed but unfinished sub-tasks per worker")
    # How long a claim's watermark (the lowest row worth scanning) is trusted before the scan
    # starts from a task's first row again: a retried or released row below it waits up to
    # this much longer than its back-off. The expected size of a message is read as often.
    rescan_seconds: float = Field(5.0, gt=0)
    max_in_flight_bytes: int = Field(
        32 * 1024 * 1024, ge=1, description="rendered messages a worker holds at once, in bytes"
    )
    # An instance whose heartbeat is older than this is dead: its claims are released
    # without waiting out their leases.
    instance_dead_seconds: float = Field(10.0, gt=0)

    # Templates.
    max_template_bytes: int = Field(1024 * 1024, ge=1, description="per template, UTF-8")
    template_failure_limit: int = Field(
        10, ge=1, description="consecutive template failures in a task before it is paused"
    )

    # Webhooks. The generic endpoint's token (Bearer, or Basic password); empty: only the
    # installation's sandbox token, kept in the database, is accepted.
    webhook_token: str = Field("", repr=False)
    webhook_max_bytes: int = Field(1024 * 1024, ge=1, description="largest webhook body")
    # Webhook events that match no sub-task yet are tried again for this long, then given up.
    unmatched_retry_seconds: float = Field(3600.0, ge=0)
    # This many soft bounces of one contact within this many days make it `bounced`.
    soft_bounce_limit: int = Field(3, ge=1)
    soft_bounce_days: float = Field(30.0, gt=0)

    # Retries.
    max_attempts: int = Field(5, ge=1)
    retry_base_seconds: float = Field(30.0, ge=0)
    retry_max_seconds: float = Field(3600.0, ge=0)

    # Loops.
    idle_poll_seconds: float = Field(1.0, gt=0, description="sleep of a worker with no work")
    supervisor_seconds: float = Field(2.0, gt=0, description="how often services are re-read")
    maintenance_seconds: float = Field(1.0, gt=0, description="reaper/reconciler period")
    restart_backoff_seconds: float = Field(1.0, gt=0)
    restart_backoff_max_seconds: float = Field(60.0, gt=0)
    shutdown_grace_seconds: float = Field(8.0, gt=0, description="SIGTERM to exit, at most")
    repair_seconds: float = Field(60.0, gt=0, description="how often upkeep also repairs")

    # Health checks (`edm health`, `GET /health`): the thresholds.
    health_cache_seconds: float = Field(
        5.0, ge=0, description="how long GET /health reuses the checks' results"
    )
    health_heartbeat_seconds: float = Field(
        15.0, gt=0, description="a service without a heartbeat this long has no live worker"
    )
    health_invariants_seconds: float = Field(
        300.0,
        ge=0,
        description="how often a process recounts the invariants while they hold",
    )
    health_lease_critical_rows: int = Field(100, ge=0)
    health_lease_critical_seconds: float = Field(600.0, gt=0)
    health_queue_warn_seconds: float = Field(300.0, gt=0)
    health_queue_critical_seconds: float = Field(1800.0, gt=0)
    health_unknown_warn_seconds: float = Field(600.0, gt=0)
    health_unmatched_warn_seconds: float = Field(600.0, gt=0)
    health_events_window_seconds: float = Field(3600.0, gt=0)
    webhook_silence_seconds: float = Field(
        3600.0, gt=0, description="a provider that was sent to must post within this long"
    )
    health_webhook_grace_seconds: float = Field(600.0, ge=0)
    health_success_window_seconds: float = Field(900.0, gt=0)
    health_success_warn: float = Field(0.95, ge=0, le=1)
    health_success_critical: float = Field(0.80, ge=0, le=1)
    health_success_min_calls: int = Field(20, ge=1)
    health_reputation_window_seconds: float = Field(86400.0, gt=0)
    health_reputation_min_sent: int = Field(200, ge=1)
    # Sends younger than this are not judged yet: their bounces may still be on the way.
    health_reputation_settle_seconds: float = Field(300.0, ge=0)
    health_bounce_warn: float = Field(0.02, ge=0, le=1)
    health_bounce_critical: float = Field(0.05, ge=0, le=1)
    health_complaint_warn: float = Field(0.001, ge=0, le=1)
    health_complaint_critical: float = Field(0.003, ge=0, le=1)

    # Alerts: a check turning critical (and back) is posted to each of these URLs.
    alert_webhooks: str = Field(
        "", repr=False, description="comma-separated URLs that receive alerts as JSON"
    )
    alert_seconds: float = Field(10.0, gt=0, description="how often the checks are judged")
    alert_cooldown_seconds: float = Field(
        900.0, ge=0, description="after an alert, the same check alerts again no sooner"
    )
    alert_timeout_seconds: float = Field(5.0, gt=0, description="per POST to a receiver")
    alert_retry_base_seconds: float = Field(5.0, gt=0)
    alert_retry_max_seconds: float = Field(600.0, gt=0)
    alert_max_attempts: int = Field(20, ge=1, description="before a notification is given up")

    # Repair: a service whose sender reputation is critical is frozen this long.
    reputation_freeze_seconds: float = Field(3600.0, gt=0)

    # Metrics: gauges read from the database are kept this long between scrapes.
    metrics_cache_seconds: float = Field(5.0, ge=0)

    @property
    def alert_urls(self) -> list[str]:
        return [url.strip() for url in self.alert_webhooks.split(",") if url.strip()]

    @field_validator("alert_webhooks")
    @classmethod
    def _http_urls(cls, value: str) -> str:
        for url in (part.strip() for part in value.split(",")):
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"not an http(s) URL: {url!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _default_when_empty(cls, value: str) -> str:
        """An empty EDM_DATABASE_URL means the default, as in `db.location`."""
        return value.strip() or default_database_url()


@lru_cache
def get_settings() -> Settings:
    return Settings()
