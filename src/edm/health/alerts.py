"""Alerts: a check turning critical is an incident, announced once, and its recovery once.

The incident is a row (`incidents`, at most one open per check), so however many
instances judge the checks, one of them opens it and queues its alert, in the same
transaction. A check that alerted stays quiet for EDM_ALERT_COOLDOWN_SECONDS: an incident
opened meanwhile (a flapping check) alerts only if it is still open when the cool-down
ends, and then its recovery is announced too. Notifications wait in `alert_deliveries`
until a receiver takes them: any instance posts them, from its own thread, retrying a
receiver that is down with back-off; sending never waits for them.

An unreachable database cannot hold an incident: that one is logged by every instance
and left to Prometheus (`EdmDatabaseUnreachable` in deploy/prometheus/alerts.yml).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from edm.config import Settings
from edm.db import health_queries as hq
from edm.db.outage import log_failure
from edm.db.queries import SELECT_NOW, query
from edm.health.checks import CRITICAL, CheckResult, run_checks
from edm.health.repair import INSTANCE

log = logging.getLogger(__name__)

DELIVERIES_PER_PASS = 20


def payload(
    kind: str, check: str, status: str, message: str, *, now: float, instance: str, **extra: Any
) -> dict[str, Any]:
    """The JSON posted to a receiver; `text` makes it a Slack (and Mattermost) message."""
    heading = {"alert": "CRITICAL", "recovery": "RECOVERED", "repair": "REPAIRED"}[kind]
    return {
        "kind": kind,
        "check": check,
        "status": status,
        "message": message,
        "instance": instance,
        "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        **extra,
        "text": f"[edm] {heading} {check}: {message}",
    }


def _queue(
    conn: Connection, settings: Settings, kind: str, body: dict[str, Any], incident: int | None
) -> None:
    urls = settings.alert_urls
    if urls:
        conn.execute(
            query(hq.QUEUE_DELIVERY, conn.dialect.name),
            [
                {"incident_id": incident, "kind": kind, "url": url, "payload": json.dumps(body)}
                for url in urls
            ],
        )


def notify_repair(
    conn: Connection, settings: Settings, *, check: str, message: str, now: float
) -> None:
    """Announce, in the caller's transaction, a repair a person should know of (a freeze)."""
    log.error("repair: %s", message, extra={"action": "alert", "check": check, "kind": "repair"})
    body = payload("repair", check, CRITICAL, message, now=now, instance=INSTANCE)
    _queue(conn, settings, "repair", body, None)


def judge(
    engine: Engine,
    settings: Settings,
    results: list[CheckResult] | None = None,
    instance: str = INSTANCE,
) -> list[str]:
    """Open, alert and resolve incidents from the checks' results (default: run them now);
    what this call did, as `alert CHECK`, `held CHECK`, `recovery CHECK`, `resolved CHECK`."""
    results = run_checks(engine, settings) if results is None else results
    if any(r.name == "database" and r.status == CRITICAL for r in results):
        return []  # nowhere to keep the incident: see the module's docstring
    dialect = engine.dialect.name
    done: list[str] = []
    with engine.connect() as conn:
        open_now = {row.check_name: row for row in conn.execute(query(hq.OPEN_INCIDENTS, dialect))}
    for result in results:
        if result.status == CRITICAL and result.name not in open_now:
            done += _open(engine, settings, result, instance)
        elif result.status != CRITICAL and result.name in open_now:
            done += _resolve(engine, settings, result, open_now[result.name], instance)
        elif result.status == CRITICAL and open_now[result.name].alerted_at is None:
            with engine.begin() as conn:
                done += _alert_if_due(conn, settings, result, open_now[result.name].id, instance)
    return done


def _open(engine: Engine, settings: Settings, result: CheckResult, instance: str) -> list[str]:
    dialect = engine.dialect.name
    try:
        with engine.begin() as conn:
            conn.execute(
                query(hq.OPEN_INCIDENT, dialect),
                {
                    "check": result.name,
                    "value": json.dumps(result.value, default=str),
                    "threshold": result.threshold,
                    "message": result.message,
                    "instance": instance,
                },
            )
            incident = conn.execute(query(hq.INCIDENT_ID, dialect), {"check": result.name})
            return _alert_if_due(conn, settings, result, incident.scalar_one(), instance)
    except IntegrityError:
        return []  # another instance opened it first


def _alert_if_due(
    conn: Connection, settings: Settings, result: CheckResult, incident: int, instance: str
) -> list[str]:
    marked = conn.execute(
        query(hq.MARK_ALERTED, conn.dialect.name),
        {"id": incident, "check": result.name, "cooldown": settings.alert_cooldown_seconds},
    ).rowcount
    if not marked:
        return [f"held {result.name}"]
    now = float(conn.execute(query(SELECT_NOW, conn.dialect.name)).scalar_one())
    log.error(
        "alert: %s is critical: %s",
        result.name,
        result.message,
        extra={"action": "alert", "check": result.name, "incident": incident},
    )
    body = payload(
        "alert",
        result.name,
        result.status,
        result.message,
        now=now,
        instance=instance,
        value=result.value,
        threshold=result.threshold,
        incident=incident,
    )
    _queue(conn, settings, "alert", body, incident)
    return [f"alert {result.name}"]


def _resolve(
    engine: Engine, settings: Settings, result: CheckResult, incident: Any, instance: str
) -> list[str]:
    dialect = engine.dialect.name
    with engine.begin() as conn:
        if not conn.execute(query(hq.RESOLVE_INCIDENT, dialect), {"id": incident.id}).rowcount:
            return []  # another instance resolved it
        if incident.alerted_at is None:
            return [f"resolved {result.name}"]  # never announced: nothing to take back
        now = float(conn.execute(query(SELECT_NOW, dialect)).scalar_one())
        log.warning(
            "recovered: %s is %s: %s",
            result.name,
            result.status,
            result.message,
            extra={"action": "recovery", "check": result.name, "incident": incident.id},
        )
        body = payload(
            "recovery",
            result.name,
            result.status,
            result.message,
            now=now,
            instance=instance,
            value=result.value,
            threshold=result.threshold,
            incident=incident.id,
        )
        _queue(conn, settings, "recovery", body, incident.id)
    return [f"recovery {result.name}"]


def deliver_due(engine: Engine, settings: Settings, client: httpx.Client) -> int:
    """Post the notifications that are due; how many were delivered."""
    from edm.health.metrics import ALERTS

    dialect = engine.dialect.name
    hold = settings.alert_timeout_seconds * 2 + 1
    with engine.connect() as conn:
        due = conn.execute(query(hq.DUE_DELIVERIES, dialect), {"limit": DELIVERIES_PER_PASS}).all()
    delivered = 0
    for row in due:
        with engine.begin() as conn:
            taken = conn.execute(
                query(hq.TAKE_DELIVERY, dialect),
                {"id": row.id, "seen": row.next_attempt_at, "hold": hold},
            ).rowcount
        if not taken:
            continue  # another instance is posting it
        error = _post(client, row.url, row.payload, settings.alert_timeout_seconds)
        with engine.begin() as conn:
            if error is None:
                conn.execute(query(hq.DELIVERED, dialect), {"id": row.id})
                ALERTS.labels(row.kind).inc()
                delivered += 1
                continue
            attempts = row.attempts + 1
            gave_up = attempts >= settings.alert_max_attempts
            delay = min(
                settings.alert_retry_base_seconds * 2 ** (attempts - 1),
                settings.alert_retry_max_seconds,
            )
            conn.execute(
                query(hq.DELIVERY_FAILED, dialect),
                {
                    "id": row.id,
                    "status": "given_up" if gave_up else "pending",
                    "delay": delay,
                    "error": error[:500],
                },
            )
        (log.error if gave_up else log.warning)(
            "alert receiver %s: %s (%s)",
            row.url,
            error,
            f"given up after {attempts} tries"
            if gave_up
            else f"try {attempts}, next in {delay:g} s",
            extra={"action": "alert_delivery_failed", "delivery": row.id},
        )
    return delivered


def _post(client: httpx.Client, url: str, body: str, timeout: float) -> str | None:
    """None when the receiver took it (2xx), else why not."""
    try:
        answer = client.post(
            url, content=body, headers={"Content-Type": "application/json"}, timeout=timeout
        )
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if answer.is_success:
        return None
    return f"answered {answer.status_code}"


def _judge_turn(engine: Engine, settings: Settings) -> bool:
    """Whether this instance judges the checks this period (one instance per period)."""
    dialect = engine.dialect.name
    with engine.begin() as conn:
        conn.execute(query(hq.JUDGE_TURN_SEED, dialect))
        return bool(
            conn.execute(
                query(hq.TAKE_JUDGE_TURN, dialect), {"period": settings.alert_seconds * 0.9}
            ).rowcount
        )


class AlertLoop:
    """Judges the checks every EDM_ALERT_SECONDS (when it is this instance's turn) and posts
    what is due, in a thread of its own: a slow receiver never holds up sending."""

    def __init__(self, engine: Engine, settings: Settings, instance: str = INSTANCE) -> None:
        self.engine = engine
        self.settings = settings
        self.instance = instance
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._database_down = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edm-alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.alert_timeout_seconds + 2)

    def _run(self) -> None:
        tick = min(self.settings.alert_seconds, 1.0)
        next_judgement = 0.0
        with httpx.Client() as client:
            while not self._stop.is_set():
                try:
                    if time.monotonic() >= next_judgement:
                        next_judgement = time.monotonic() + self.settings.alert_seconds
                        self._judge()
                    if not self._database_down:  # said once by _judge
                        deliver_due(self.engine, self.settings, client)
                except Exception as exc:  # noqa: BLE001 - the loop outlives any one failure
                    log_failure(log, "alerts: a pass failed; trying again", exc)
                self._stop.wait(tick)

    def _judge(self) -> None:
        try:
            turn = _judge_turn(self.engine, self.settings)
        except Exception as exc:  # noqa: BLE001 - an outage is reported, not raised
            self._database_is(False, str(getattr(exc, "orig", None) or exc).splitlines()[0])
            return
        self._database_is(True, "")
        if turn:
            judge(self.engine, self.settings, instance=self.instance)

    def _database_is(self, reachable: bool, reason: str) -> None:
        """One log line when the database goes away, one when it is back."""
        if reachable == (not self._database_down):
            return
        self._database_down = not reachable
        if reachable:
            log.warning("recovered: the database is reachable again", extra={"action": "recovery"})
        else:
            log.error(
                "alert: the database is unreachable: %s",
                reason,
                extra={"action": "alert", "check": "database"},
            )
