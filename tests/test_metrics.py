"""`GET /metrics` and `edm worker --metrics-port`: real scrapes, read as Prometheus reads
them, and checked by promtool."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import Settings
from edm.db.secrets import webhook_token
from tests.api_server import api_server
from tests.helpers import Worker, make_contacts, wait_for

SETTINGS = Settings(health_cache_seconds=0, metrics_cache_seconds=0, maintenance_seconds=0.2)


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with api_server(db, SETTINGS) as client:
        yield client


def samples(scrape: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) → value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    }


def value(scrape: str, name: str, **labels: str) -> float | None:
    return samples(scrape).get((name, frozenset(labels.items())))


def promtool_accepts(scrape: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing (Debian's prometheus package; .ci/run installs it)")
        pytest.skip("promtool is missing: apt-get install prometheus")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_scrape_tells_the_installation(database: Engine, client: httpx.Client) -> None:
    services_mod.add_service(database, "fast", "sandbox", 0.0, daily_quota=100)
    services_mod.add_service(database, "slow", "sandbox", 30.0)
    services_mod.set_frozen(database, "slow", True, "401 from the provider")
    make_contacts(database, 3)
    task_id = tasks_mod.create_task(database, "t", "fast", text_body="x", start=True)
    with database.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'sent', sent_at = 1000.0, service_id = 1,"
                " provider_message_id = 'pm-' || id WHERE id IN (1, 2)"
            )
        )
    token = webhook_token(database)
    event = {
        "event": "delivered",
        "provider_message_id": "pm-1",
        "timestamp": 2000,
        "event_id": "d1",
    }
    ok = client.post(
        "/api/webhooks/generic", json=[event], headers={"Authorization": f"Bearer {token}"}
    )
    refused = client.post("/api/webhooks/generic", json=[event])
    assert (ok.status_code, refused.status_code) == (200, 401)
    wait_for(
        lambda: value(client.get("/metrics").text, "edm_funnel", stage="delivered") == 1,
        10,
        "the delivery in the funnel",
    )

    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    scrape = answer.text
    promtool_accepts(scrape)
    assert value(scrape, "edm_up") == 1
    assert value(scrape, "edm_webhook_requests_total", provider="generic", code="200") >= 1
    assert value(scrape, "edm_webhook_requests_total", provider="generic", code="401") >= 1
    assert (
        value(scrape, "edm_events_total", provider="generic", type="delivered", result="applied")
        >= 1
    )
    assert value(scrape, "edm_subtasks", task=str(task_id), status="sent") == 2
    assert value(scrape, "edm_subtasks", task=str(task_id), status="pending") == 1
    assert value(scrape, "edm_funnel", stage="sent") == 2
    assert value(scrape, "edm_service_frozen", service="slow") == 1
    assert value(scrape, "edm_service_frozen", service="fast") == 0
    assert value(scrape, "edm_service_interval_seconds", service="slow") == 30
    assert value(scrape, "edm_service_quota_remaining", service="fast") == 100
    assert value(scrape, "edm_service_quota_remaining", service="slow") is None  # no quota
    assert value(scrape, "edm_service_up", service="fast") == 0  # no worker runs
    assert value(scrape, "edm_health_check_status", check="services_running") == 2
    assert value(scrape, "edm_health_check_status", check="frozen_services") == 1
    assert 0 <= value(scrape, "edm_webhook_last_seconds", provider="generic") < 60


def test_a_worker_exposes_its_own_sends(database: Engine, tmp_path: Path) -> None:
    services_mod.add_service(database, "s", "sandbox", 0.0)
    make_contacts(database, 5)
    tasks_mod.create_task(database, "t", "s", text_body="x", start=True)
    port = free_port()
    env = {
        **os.environ,
        "EDM_DATABASE_URL": database.url.render_as_string(hide_password=False),
        "EDM_MAINTENANCE_SECONDS": "0.2",
        "EDM_IDLE_POLL_SECONDS": "0.1",
    }
    worker = Worker(env, tmp_path, "--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    url = f"http://127.0.0.1:{port}/metrics"

    def sent() -> float | None:
        try:
            return value(
                httpx.get(url, timeout=2).text, "edm_sends_total", service="s", result="sent"
            )
        except httpx.TransportError:
            return None

    try:
        wait_for(lambda: sent() == 5, 20, "five sends counted by the worker")
        scrape = httpx.get(url, timeout=2).text
    finally:
        worker.terminate()
    promtool_accepts(scrape)
    assert value(scrape, "edm_send_duration_seconds_count", service="s") == 5
    assert value(scrape, "edm_service_up", service="s") is None  # gauges are the server's


def test_a_scrape_while_the_database_is_away_says_so(tmp_path: Path) -> None:
    from edm.db import open_database

    engine = open_database(f"sqlite:///{tmp_path / 'edm.db'}")
    app_settings = Settings(health_cache_seconds=0, metrics_cache_seconds=0)
    with api_server(engine, app_settings) as client:
        assert value(client.get("/metrics").text, "edm_up") == 1
        (tmp_path / "edm.db").unlink()  # what was the database is gone
        (tmp_path / "edm.db").mkdir()  # and cannot be made again
        engine.dispose()
        scrape = client.get("/metrics").text
    promtool_accepts(scrape)
    assert value(scrape, "edm_up") == 0
    assert value(scrape, "edm_health_check_status", check="database") == 2
