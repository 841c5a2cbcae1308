"""Health checks: each turns bad under the fault it watches and back to ok once it is
repaired or fixed, the same through `edm health`, `GET /health` and the checks
themselves; an unreachable database is critical, never a traceback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import Settings, get_settings
from edm.contacts.suppression import reactivate
from edm.db.engine import make_engine
from edm.events.intake import log_request
from edm.events.pipeline import process_batch
from edm.health.checks import CRITICAL, OK, WARN, CachedChecks, CheckResult, run_checks
from edm.health.repair import repair
from edm.scheduler.maintenance import run_upkeep
from edm.task_views import task_funnel
from tests.api_server import api_server, emptied
from tests.helpers import Worker, edm, make_contacts, wait_for

SETTINGS = Settings(
    health_heartbeat_seconds=5.0,
    maintenance_seconds=0.2,
    health_cache_seconds=0,
    health_invariants_seconds=0,
)


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with api_server(db, SETTINGS) as client:
        yield client


@pytest.fixture
def database(db: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The module's database, emptied, and `edm` commands pointed at it."""
    monkeypatch.setenv("EDM_DATABASE_URL", db.url.render_as_string(hide_password=False))
    monkeypatch.setenv("EDM_HEALTH_HEARTBEAT_SECONDS", "5")
    get_settings.cache_clear()
    yield emptied(db)
    get_settings.cache_clear()


def check(engine: Engine, name: str, settings: Settings = SETTINGS) -> CheckResult:
    return next(result for result in run_checks(engine, settings) if result.name == name)


def beat(engine: Engine, service_id: int, age: float = 0.0) -> None:
    """A running worker's heartbeat for the service, `age` seconds old."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM worker_heartbeats WHERE service_id = :s"), {"s": service_id})
        conn.execute(
            text(
                "INSERT INTO worker_heartbeats (instance_id, service_id, hostname, pid, state,"
                " started_at, beat_at, restarts) VALUES ('i1', :s, 'h', 1, 'running', :t, :t, 0)"
            ),
            {"s": service_id, "t": time.time() - age},
        )


def running_task(engine: Engine, contacts: int = 3) -> int:
    services_mod.add_service(engine, "s", "sandbox", 0.0)
    beat(engine, 1)
    make_contacts(engine, contacts)
    return tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)


def send_all(engine: Engine) -> None:
    """Every sub-task sent through service 1, each with its send attempt, as a worker
    leaves them."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'sent', service_id = 1, sent_at = 1000,"
                " finished_at = 1000, provider_message_id = 'pm-' || id"
            )
        )
        conn.execute(
            text(
                "INSERT INTO send_attempts (sub_task_id, service_id, lease_token, started_at,"
                " finished_at, outcome, provider_message_id)"
                " SELECT id, 1, 'x', 999, 1000, 'sent', provider_message_id FROM sub_tasks"
            )
        )


def test_a_healthy_installation_is_ok_everywhere(database: Engine, client: httpx.Client) -> None:
    running_task(database)
    send_all(database)
    results = run_checks(database, SETTINGS)
    assert {r.name: r.status for r in results} == {
        "database": OK,
        "services_running": OK,
        "frozen_services": OK,
        "past_lease": OK,
        "queue_age": OK,
        "unknown_outcomes": OK,
        "events": OK,
        "invariants": OK,
        "webhook_silence": OK,
        "send_success": OK,
        "reputation": OK,
    }
    answer = client.get("/health")
    assert answer.status_code == 200 and answer.json()["status"] == OK
    code, stdout, _ = edm("health", "--json")
    assert code == 0 and json.loads(stdout)["status"] == OK


def test_a_service_without_a_live_worker_is_critical(
    database: Engine, client: httpx.Client
) -> None:
    services_mod.add_service(database, "glodamarket.fun", "sandbox", 0.0)
    services_mod.add_service(database, "glodamarket.store", "sandbox", 0.0)
    beat(database, 1)
    beat(database, 2, age=60)  # its worker stopped beating a minute ago
    result = check(database, "services_running")
    assert (result.status, result.value) == (CRITICAL, "1/2")
    assert "glodamarket.store has no live worker since" in result.message
    answer = client.get("/health")
    assert answer.status_code == 503 and answer.json()["status"] == CRITICAL
    code, stdout, _ = edm("health")
    assert code == 1 and "glodamarket.store" in stdout

    beat(database, 2)  # a worker for it again
    assert check(database, "services_running").value == "2/2"
    assert check(database, "services_running").status == OK
    # A frozen service needs no worker; it is reported as frozen, with its reason.
    services_mod.set_frozen(database, "glodamarket.store", True, "401 from the provider")
    beat(database, 2, age=60)
    assert check(database, "services_running").status == OK
    frozen = check(database, "frozen_services")
    assert frozen.status == WARN and "401 from the provider" in frozen.message
    services_mod.set_frozen(database, "glodamarket.store", False)
    assert check(database, "frozen_services").status == OK


def test_sub_tasks_past_their_lease_until_the_reaper_takes_them_back(database: Engine) -> None:
    task_id = running_task(database, contacts=3)
    with database.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'allocated', lease_token = 'x', claimed_by = 'gone',"
                " lease_expires_at = :t WHERE task_id = :task"
            ),
            {"t": time.time() - 30, "task": task_id},
        )
    result = check(database, "past_lease")
    assert (result.status, result.value) == (WARN, 3)
    with database.begin() as conn:  # one lease ran out long ago
        conn.execute(text("UPDATE sub_tasks SET lease_expires_at = :t WHERE id = 1"), {"t": 1.0})
    assert check(database, "past_lease").status == CRITICAL
    run_upkeep(database, SETTINGS)
    assert check(database, "past_lease").status == OK


def test_a_queue_that_does_not_move(database: Engine) -> None:
    task_id = running_task(database)
    assert check(database, "queue_age").status == OK
    with database.begin() as conn:  # started 10 minutes ago, nothing sent since
        conn.execute(
            text("UPDATE tasks SET started_at = :t WHERE id = :task"),
            {"t": time.time() - 600, "task": task_id},
        )
    result = check(database, "queue_age")
    assert result.status == WARN and f"task {task_id} (t) has not moved for" in result.message
    with database.begin() as conn:
        conn.execute(text("UPDATE tasks SET started_at = 1 WHERE id = :task"), {"task": task_id})
    assert check(database, "queue_age").status == CRITICAL
    # A long task that keeps sending at its pace is moving, however long ago it started.
    with database.begin() as conn:
        conn.execute(
            text("UPDATE sub_tasks SET status = 'sent', finished_at = :t WHERE id = 1"),
            {"t": time.time() - 5},
        )
    assert check(database, "queue_age").status == OK
    with database.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET finished_at = 1 WHERE id = 1"))
    assert check(database, "queue_age").status == CRITICAL
    # With its only service frozen, the wait is the frozen service's (reported there).
    services_mod.set_frozen(database, "s", True, "by hand")
    assert check(database, "queue_age").status == OK


def test_unknown_outcomes_and_troubled_events(database: Engine) -> None:
    running_task(database)
    with database.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET status = 'unknown', finished_at = 1 WHERE id = 1"))
    assert check(database, "unknown_outcomes").status == WARN
    with database.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET status = 'sent' WHERE id = 1"))
    assert check(database, "unknown_outcomes").status == OK

    log_request(database, "generic", {}, b"{broken")
    body = {"event": "opened", "timestamp": 5, "provider_message_id": "nobody"}
    log_request(database, "generic", {}, json.dumps(body).encode())
    process_batch(database)
    with database.begin() as conn:  # the unmatched event came in 20 minutes ago
        conn.execute(text("UPDATE events SET created_at = :t"), {"t": time.time() - 1200})
    result = check(database, "events")
    assert result.status == WARN
    assert result.value == {"unmatched": 1, "error": 0, "invalid": 1}
    assert "1 events still unmatched" in result.message


def test_an_unreachable_database_is_critical(database: Engine) -> None:
    away = make_engine("postgresql://postgres@127.0.0.1:1/edm?connect_timeout=2")
    (result,) = run_checks(away, SETTINGS)
    assert result.name == "database" and result.status == CRITICAL
    assert "unreachable" in result.message
    with api_server(away, SETTINGS) as unreachable:
        answer = unreachable.get("/health")
        assert answer.status_code == 503 and answer.json()["checks"][0]["status"] == CRITICAL


def test_a_worker_killed_stops_its_heartbeat(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "s", "sandbox", 0.0)
    quick = Settings(health_heartbeat_seconds=1.0)

    def status() -> str:
        return next(r for r in run_checks(engine, quick) if r.name == "services_running").status

    worker = Worker(env, tmp_path)
    try:
        wait_for(lambda: status() == OK, 15, "a live worker")
        worker.kill()  # SIGKILL: nothing is cleaned up, the heartbeat just stops
        wait_for(lambda: status() == CRITICAL, 10, "the dead worker noticed")
        worker = Worker(env, tmp_path)
        wait_for(lambda: status() == OK, 15, "the new worker noticed")
    finally:
        worker.kill()


def test_invariants_broken_by_hand_are_critical(database: Engine, client: httpx.Client) -> None:
    task_id = running_task(database, contacts=3)
    send_all(database)
    body = [
        {"event": "opened", "provider_message_id": "pm-1", "timestamp": 2000, "event_id": "o1"},
        {"event": "clicked", "provider_message_id": "pm-2", "timestamp": 2100, "event_id": "c2"},
        {"event": "bounce", "provider_message_id": "pm-3", "timestamp": 2200, "event_id": "b3",
         "data": {"bounce_type": "hard"}},
    ]  # fmt: skip
    log_request(database, "generic", {}, json.dumps(body).encode())
    process_batch(database)
    assert check(database, "invariants").status == OK

    with database.begin() as conn:  # a delivery fact changed by hand
        conn.execute(text("UPDATE sub_tasks SET open_count = 5 WHERE id = 1"))
    result = check(database, "invariants")
    assert result.status == CRITICAL and result.value["facts_not_from_events"] == 1
    assert "1 sub-tasks whose delivery facts differ from their applied events" in result.message
    assert client.get("/health").status_code == 503
    with database.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET open_count = 1 WHERE id = 1"))
    assert check(database, "invariants").status == OK

    with database.begin() as conn:  # a hard bounce turned soft by hand
        conn.execute(text("UPDATE sub_tasks SET bounce_type = 'soft' WHERE id = 3"))
    assert check(database, "invariants").value["facts_not_from_events"] == 1
    with database.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET bounce_type = 'hard' WHERE id = 3"))

    with database.begin() as conn:  # a task marked completed with a row still to send
        conn.execute(text("UPDATE sub_tasks SET status = 'pending' WHERE id = 2"))
        conn.execute(text("UPDATE tasks SET status = 'completed' WHERE id = :t"), {"t": task_id})
    result = check(database, "invariants")
    assert result.status == CRITICAL and result.value["open_in_completed"] == 1
    with database.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET status = 'sent' WHERE id = 2"))
    assert check(database, "invariants").status == OK

    with database.begin() as conn:  # a claim without its lease
        conn.execute(text("UPDATE sub_tasks SET status = 'allocated' WHERE id = 2"))
    assert check(database, "invariants").value["leased_without_lease"] == 1
    with database.begin() as conn:  # sent, with no attempt on record
        conn.execute(text("UPDATE sub_tasks SET status = 'sent' WHERE id = 2"))
        conn.execute(text("DELETE FROM send_attempts WHERE sub_task_id = 2"))
    assert check(database, "invariants").value == {
        "leased_without_lease": 0,
        "open_in_completed": 0,
        "sent_without_attempt": 1,
        "facts_not_from_events": 0,
        "suppressed_without_cause": 0,
        "funnels_not_kept": 0,
    }
    with database.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO send_attempts (sub_task_id, service_id, lease_token,"
                " started_at, finished_at, outcome) VALUES (2, 1, 'l', 1, 2, 'sent')"
            )
        )
        # the funnel a task page reads, changed by hand
        conn.execute(text("UPDATE task_funnels SET opened = 7 WHERE task_id = :t"), {"t": task_id})
    result = check(database, "invariants")
    assert result.status == CRITICAL and result.value["funnels_not_kept"] == 1
    assert "1 tasks whose kept funnel differs from their sub-tasks' facts" in result.message
    repaired = {r.kind: r for r in repair(database, SETTINGS)}["funnels"]
    assert repaired.count == 1 and f"funnels of tasks {task_id} counted again" in repaired.detail
    assert check(database, "invariants").status == OK
    assert task_funnel(database, task_id)["opened"] == 1


def test_invariants_that_hold_are_recounted_once_per_period_and_a_violation_each_time(
    database: Engine,
) -> None:
    hourly = SETTINGS.model_copy(update={"health_invariants_seconds": 3600})
    task_id = running_task(database, contacts=3)
    send_all(database)
    assert check(database, "invariants", hourly).status == OK
    with database.begin() as conn:  # broken by hand after a recount that held
        conn.execute(
            text("INSERT INTO task_funnels (task_id, opened) VALUES (:t, 7)"), {"t": task_id}
        )
    held = check(database, "invariants", hourly)
    assert held.status == OK and held.message.startswith("every invariant held when last")
    assert check(database, "invariants").status == CRITICAL  # recounted: period 0
    broken = check(database, "invariants", hourly)  # a violation is not kept for the hour
    assert broken.status == CRITICAL and broken.value["funnels_not_kept"] == 1
    repair(database, SETTINGS)
    assert check(database, "invariants", hourly).message == "every invariant holds"


def test_the_loops_sweep_facts_once_per_period_while_the_sweeps_find_nothing(
    database: Engine,
) -> None:
    from edm.health.repair import scheduled

    hourly = SETTINGS.model_copy(update={"health_invariants_seconds": 3600})
    running_task(database, contacts=3)
    send_all(database)
    scheduled(database, hourly, sweep=True)  # clean
    with database.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET open_count = 9 WHERE id = 1"))
    assert "facts" not in {r.kind for r in scheduled(database, hourly)}  # not due for an hour
    found = {r.kind: r.count for r in scheduled(database, SETTINGS)}  # period 0: due
    assert (found["facts"], found["funnels"]) == (1, 0)
    with database.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET open_count = 9 WHERE id = 1"))
    # The last sweep found something: the next is due whatever the period.
    assert {r.kind: r.count for r in scheduled(database, hourly)}["facts"] == 1


def test_a_contact_suppressed_by_hand_is_critical_until_reactivated(database: Engine) -> None:
    running_task(database, contacts=3)
    send_all(database)
    # The hard bounce suppresses contact 3 with its event behind it: not a violation.
    body = [{"event": "bounce", "provider_message_id": "pm-3", "timestamp": 2200,
             "event_id": "b3", "data": {"bounce_type": "hard"}}]  # fmt: skip
    log_request(database, "generic", {}, json.dumps(body).encode())
    process_batch(database)
    with database.begin() as conn:  # an import's word is an operator's action
        conn.execute(
            text("UPDATE contacts SET status = 'unsubscribed', status_reason = 'import:"
                 " unsubscribed' WHERE email = 'user00000@example.com'")
        )  # fmt: skip
    assert check(database, "invariants").status == OK

    with database.begin() as conn:  # complained, with no complaint on record
        conn.execute(
            text("UPDATE contacts SET status = 'complained', status_reason = 'spam complaint'"
                 " WHERE email = 'user00001@example.com'")
        )  # fmt: skip
    result = check(database, "invariants")
    assert result.status == CRITICAL and result.value["suppressed_without_cause"] == 1
    assert "edm contacts reactivate" in result.message
    repair(database, Settings())  # no machine can tell what the person meant
    assert check(database, "invariants").status == CRITICAL

    assert [r.email for r in reactivate(database, ["user00001@example.com"]).reactivated] == [
        "user00001@example.com"
    ]
    assert check(database, "invariants").status == OK


def attempts(engine: Engine, service_id: int, outcomes: dict[str, int], age: float) -> None:
    """Provider calls of a service, finished `age` seconds ago."""
    rows = [outcome for outcome, n in outcomes.items() for _ in range(n)]
    at = time.time() - age
    with engine.begin() as conn:
        for n, outcome in enumerate(rows):
            conn.execute(
                text(
                    "INSERT INTO send_attempts (sub_task_id, service_id, lease_token, started_at,"
                    " finished_at, outcome) VALUES (:sub, :service, 'x', :t, :t, :outcome)"
                ),
                {
                    "sub": n % 3 + 1,
                    "service": service_id,
                    "t": at,
                    "outcome": outcome,
                },
            )


def test_a_provider_that_was_sent_to_but_never_calls_back(database: Engine) -> None:
    running_task(database)  # service 1: a sandbox without events posts no webhooks
    options = {"api_user": "u", "api_key": "k"}
    services_mod.add_service(database, "glodamarket.fun", "engagelab", 0.0, options=options)
    attempts(database, 1, {"sent": 3}, age=1200)
    assert check(database, "webhook_silence").status == OK
    attempts(database, 2, {"sent": 3}, age=1200)  # 20 minutes ago, past the grace
    result = check(database, "webhook_silence")
    assert result.status == CRITICAL and result.value == {"engagelab": "silent"}
    assert "no engagelab webhook since never though glodamarket.fun sent" in result.message
    log_request(database, "engagelab", {}, b"[]")
    assert check(database, "webhook_silence").value == {"engagelab": "ok"}


def test_send_success_rate_per_service(database: Engine) -> None:
    running_task(database)
    attempts(database, 1, {"sent": 18, "transient": 1}, age=60)
    assert check(database, "send_success").status == OK  # 19 calls: too few to judge
    attempts(database, 1, {"service": 1}, age=60)
    result = check(database, "send_success")
    assert (result.status, result.value) == (WARN, {"s": 0.9})
    attempts(database, 1, {"service": 5}, age=60)
    assert check(database, "send_success").status == CRITICAL
    assert "s accepted 72.0% of 25 calls" in check(database, "send_success").message


def test_sender_reputation_per_service(database: Engine) -> None:
    running_task(database, contacts=200)
    send_all(database)
    now = time.time()

    def facts(sql: str, age: float = 1000) -> None:
        with database.begin() as conn:
            conn.execute(text(sql), {"t": now - age})

    facts("UPDATE sub_tasks SET sent_at = :t, delivered_at = :t")
    assert check(database, "reputation").status == OK
    facts("UPDATE sub_tasks SET bounce_type = 'hard', delivered_at = NULL WHERE id <= 6")
    result = check(database, "reputation")
    assert result.status == WARN and "s: hard bounces 3.0%" in result.message
    # Sent a minute ago: their bounces may still be on the way, so they are not judged yet.
    facts("UPDATE sub_tasks SET sent_at = :t", age=60)
    assert check(database, "reputation").status == OK
    facts("UPDATE sub_tasks SET sent_at = :t")
    facts("UPDATE sub_tasks SET bounce_type = 'hard', delivered_at = NULL WHERE id <= 12")
    assert check(database, "reputation").status == CRITICAL
    facts("UPDATE sub_tasks SET bounce_type = NULL, delivered_at = :t")
    facts("UPDATE sub_tasks SET complained_at = :t WHERE id = 1")  # 1 of 200 delivered: 0.5 %
    result = check(database, "reputation")
    assert result.status == CRITICAL and "s: complaints 0.5%" in result.message


def test_repair_sets_facts_again_from_the_event_log(database: Engine) -> None:
    running_task(database, contacts=3)
    send_all(database)
    body = [
        {"event": "opened", "provider_message_id": "pm-1", "timestamp": 2000, "event_id": "o1"},
        {"event": "opened", "provider_message_id": "pm-1", "timestamp": 2500, "event_id": "o2"},
        {"event": "delivered", "provider_message_id": "pm-2", "timestamp": 1900, "event_id": "d2"},
    ]
    log_request(database, "generic", {}, json.dumps(body).encode())
    process_batch(database)
    with database.begin() as conn:  # hand edits: a count, a time, a fact with no event
        conn.execute(text("UPDATE sub_tasks SET open_count = 7, opened_at = 1 WHERE id = 1"))
        conn.execute(text("UPDATE sub_tasks SET delivered_at = NULL WHERE id = 2"))
        conn.execute(text("UPDATE sub_tasks SET clicked_at = 5 WHERE id = 3"))
    assert check(database, "invariants").value["facts_not_from_events"] == 3

    code, stdout, _ = edm("repair", "--dry-run", "--json")
    facts = next(r for r in json.loads(stdout)["repairs"] if r["kind"] == "facts")
    assert code == 0 and facts["count"] == 3 and "would be set again" in facts["detail"]
    assert check(database, "invariants").status == CRITICAL  # a dry run changes nothing

    code, stdout, _ = edm("repair")
    assert code == 0 and "sub-tasks 1, 2, 3 set again" in stdout.replace("\n", " ")
    assert check(database, "invariants").status == OK
    with database.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT open_count, opened_at, delivered_at, clicked_at FROM sub_tasks ORDER BY id"
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        (2, 2000, 2000, None),
        (0, None, 1900, None),
        (0, None, None, None),
    ]
    code, stdout, _ = edm("repair", "--json")  # nothing left to do
    assert {r["kind"]: r["count"] for r in json.loads(stdout)["repairs"]}["facts"] == 0


def test_a_running_worker_repairs_facts_by_itself(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    running_task(engine, contacts=2)
    send_all(engine)
    body = {"event": "opened", "provider_message_id": "pm-1", "timestamp": 2000, "event_id": "o"}
    log_request(engine, "generic", {}, json.dumps(body).encode())
    process_batch(engine)

    def broken() -> int:
        return check(engine, "invariants").value["facts_not_from_events"]

    with engine.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET open_count = 9 WHERE id = 1"))
    worker = Worker(
        {**env, "EDM_REPAIR_SECONDS": "0.3", "EDM_HEALTH_INVARIANTS_SECONDS": "0"}, tmp_path
    )
    try:
        wait_for(lambda: broken() == 0, 15, "the facts repaired at start-up")
        with engine.begin() as conn:
            conn.execute(text("UPDATE sub_tasks SET delivered_at = NULL WHERE id = 1"))
        wait_for(lambda: broken() == 0, 10, "the facts repaired again")
    finally:
        worker.terminate()
    assert "repair facts (1): delivery facts of sub-tasks 1 set again" in worker.stderr
    code, stdout, _ = edm("repair", "--history", "--json")
    facts = [row for row in json.loads(stdout) if row["kind"] == "facts"]
    assert code == 0 and len(facts) == 2, stdout  # both repairs, each with its instance
    assert all(row["count"] == 1 and row["instance_id"] for row in facts)


def test_health_over_http_is_counted_once_per_cache_period(database: Engine) -> None:
    services_mod.add_service(database, "s", "sandbox", 0.0)
    beat(database, 1)
    cached = CachedChecks(database, SETTINGS, seconds=60)
    first = cached.results()
    beat(database, 1, age=600)  # the worker dies; within the period the answer stands
    assert cached.results() is first
    fresh = CachedChecks(database, SETTINGS, seconds=0).results()
    assert next(r for r in fresh if r.name == "services_running").status == CRITICAL


def test_pages_get_the_last_checks_at_once_and_fresh_ones_soon_after(database: Engine) -> None:
    services_mod.add_service(database, "s", "sandbox", 0.0)
    beat(database, 1)
    cached = CachedChecks(database, SETTINGS, seconds=0.2)
    first = cached.recent()  # the first call runs them
    assert next(r for r in first if r.name == "services_running").status == OK
    beat(database, 1, age=600)  # the worker dies
    time.sleep(0.3)
    assert cached.recent() is first  # stale: answered at once, run again behind

    def critical() -> bool:
        checks = cached.recent()
        return next(r for r in checks if r.name == "services_running").status == CRITICAL

    wait_for(critical, 10, "the checks run again in the background")

    # A change made here (a console form) is seen by the next page at once.
    beat(database, 1)
    cached.changed()
    assert next(r for r in cached.recent() if r.name == "services_running").status == OK
