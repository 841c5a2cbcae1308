"""Prometheus metrics: what each process counts, and gauges read from the database.

Counters and histograms live in the process that did the work (a worker's sends, a
server's webhook requests), labelled alike in every instance so Prometheus can add them
up. Gauges come from the database, which every instance shares, so any one server's
scrape tells the whole installation; they are read with a few aggregate queries per
scrape, kept `EDM_METRICS_CACHE_SECONDS`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from edm.config import Settings
from edm.db import health_queries as hq
from edm.db.queries import SELECT_NOW, query
from edm.health.checks import SEVERITY, CachedChecks
from edm.scheduler.pace import utc_day

log = logging.getLogger(__name__)

# What this process did. One registry per process: every app and worker in it adds to it.
PROCESS = CollectorRegistry()
ProcessCollector(registry=PROCESS)

SENDS = Counter(
    "edm_sends", "Provider calls by service and result", ["service", "result"], registry=PROCESS
)
SEND_SECONDS = Histogram(
    "edm_send_duration_seconds",
    "Time a provider call took, by service",
    ["service"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=PROCESS,
)
WEBHOOK_REQUESTS = Counter(
    "edm_webhook_requests",
    "Webhook requests by provider and answer code",
    ["provider", "code"],
    registry=PROCESS,
)
EVENTS = Counter(
    "edm_events",
    "Webhook events by provider, type and what became of them",
    ["provider", "type", "result"],
    registry=PROCESS,
)
REPAIRS = Counter("edm_repairs", "Things repaired, by kind", ["kind"], registry=PROCESS)
ALERTS = Counter("edm_alerts", "Alert notifications delivered, by kind", ["kind"], registry=PROCESS)


def count_events(provider: str, kind: str, result: str, n: int = 1) -> None:
    EVENTS.labels(provider, kind, result).inc(n)


def process_metrics() -> bytes:
    """This process's own metrics, in the text format (`edm worker --metrics-port`)."""
    return generate_latest(PROCESS)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Serve this process's metrics on `port` from a daemon thread (a worker without a
    server)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=PROCESS)


class DatabaseCollector(Collector):
    """The installation's state as gauges: services, running tasks' queues, the funnel,
    webhook recency and the health checks."""

    def __init__(self, engine: Engine, settings: Settings, checks: CachedChecks) -> None:
        self.engine = engine
        self.settings = settings
        self.checks = checks
        self._lock = threading.Lock()
        self._families: list[Metric] = []
        self._at = float("-inf")

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._at >= self.settings.metrics_cache_seconds:
                self._families = list(self._read())
                self._at = time.monotonic()
            families = self._families
        yield from families

    def _read(self) -> Iterable[Metric]:
        results = self.checks.results()
        health = GaugeMetricFamily(
            "edm_health_check_status",
            "Each health check: 0 ok, 1 warn, 2 critical",
            labels=["check"],
        )
        for result in results:
            health.add_metric([result.name], SEVERITY[result.status])
        up = GaugeMetricFamily("edm_up", "1 when the database answered this scrape")
        try:
            families = self._from_database()
        except Exception as exc:  # noqa: BLE001 - a scrape reports an outage, never fails
            log.warning("metrics: the database did not answer: %s", exc)
            up.add_metric([], 0)
            return [up, health]
        up.add_metric([], 1)
        return [up, health, *families]

    def _from_database(self) -> list[Metric]:
        dialect = self.engine.dialect.name
        with self.engine.connect() as conn:
            now = float(conn.execute(query(SELECT_NOW, dialect)).scalar_one())
            services = conn.execute(query(hq.METRIC_SERVICES, dialect)).all()
            sub_tasks = conn.execute(query(hq.METRIC_SUB_TASKS, dialect)).all()
            funnel = conn.execute(query(hq.METRIC_FUNNEL, dialect)).one()
            webhooks = conn.execute(query(hq.LAST_WEBHOOKS, dialect)).all()
            past_lease = conn.execute(
                query(hq.PAST_LEASE, dialect), {"grace": max(self.settings.maintenance_seconds, 1)}
            ).one()
            unknown = conn.execute(query(hq.UNKNOWN_OUTCOMES, dialect)).one()
        return [
            *_service_families(services, now, self.settings.health_heartbeat_seconds),
            _family(
                "edm_subtasks",
                "Sub-tasks of running tasks by status",
                ["task", "status"],
                [([str(row.task_id), row.status], row.n) for row in sub_tasks],
            ),
            _family(
                "edm_funnel",
                "Sub-tasks of running tasks that reached each stage",
                ["stage"],
                [([stage], value) for stage, value in funnel._mapping.items()],
            ),
            _family(
                "edm_subtasks_past_lease", "Sub-tasks past their lease", [], [([], past_lease.rows)]
            ),
            _family(
                "edm_unknown_outcomes",
                "Sub-tasks whose send outcome is unknown",
                [],
                [([], unknown.rows)],
            ),
            _family(
                "edm_webhook_last_seconds",
                "Seconds since the last webhook request, by provider",
                ["provider"],
                [([row.provider], max(now - float(row.last), 0.0)) for row in webhooks],
            ),
        ]


def _family(
    name: str, documentation: str, labels: list[str], samples: list[tuple[list[str], Any]]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, float(value or 0))
    return family


def _service_families(services: list[Any], now: float, heartbeat_seconds: float) -> list[Metric]:
    today = utc_day(now)
    rows: dict[str, list[tuple[list[str], Any]]] = {
        "up": [],
        "enabled": [],
        "frozen": [],
        "paused": [],
        "interval_seconds": [],
        "quota_used": [],
        "quota_remaining": [],
    }
    for s in services:
        label = [s.name]
        used = int(s.quota_used) if s.quota_day == today else 0
        rows["up"].append(
            (label, s.last_beat is not None and s.last_beat >= now - heartbeat_seconds)
        )
        rows["enabled"].append((label, bool(s.enabled)))
        rows["frozen"].append((label, bool(s.frozen)))
        rows["paused"].append((label, float(s.paused_until or 0) > now))
        rows["interval_seconds"].append((label, s.interval_seconds))
        rows["quota_used"].append((label, used))
        if s.daily_quota is not None:
            rows["quota_remaining"].append((label, max(int(s.daily_quota) - used, 0)))
    described = {
        "up": "1 when the service has a live worker (a heartbeat from any instance)",
        "enabled": "1 when the service is enabled",
        "frozen": "1 when the service is frozen",
        "paused": "1 while the provider asked the service to pause (rate limit)",
        "interval_seconds": "The configured pace: one email every N seconds (0: unpaced)",
        "quota_used": "Sends counted against today's quota (UTC day)",
        "quota_remaining": "Sends left in today's quota, for services with one",
    }
    return [
        _family(f"edm_service_{key}", described[key], ["service"], samples)
        for key, samples in rows.items()
    ]


def metrics_registry(engine: Engine, settings: Settings, checks: CachedChecks) -> CollectorRegistry:
    """A server's registry: the database's gauges (the process's own are rendered beside)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine, settings, checks))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text of one scrape: this process's metrics, then the installation's."""
    return generate_latest(PROCESS) + generate_latest(registry)
