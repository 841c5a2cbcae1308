"""`edm report` and the report's API: send attempts, sub-tasks and events inserted with
known times and facts give exactly the counts, rates, pace and lag they imply; the API's
plan and ETA answer as `edm.forecast` does."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import typer
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.api.app import create_app
from edm.api.resources import report as report_api
from edm.api_tokens import create_token
from edm.cli import report as report_cli
from edm.config import Settings
from edm.report import ReportInputError, report
from tests.api_server import api_server
from tests.helpers import make_contacts

HOUR = 3600.0


def insert(engine: Engine, table: str, rows: list[dict]) -> None:
    columns = list(rows[0])
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
    )
    with engine.begin() as conn:
        conn.execute(text(sql), rows)


def set_rows(engine: Engine, ids: list[int], **values: object) -> None:
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    with engine.begin() as conn:
        for sub_task_id in ids:
            conn.execute(
                text(f"UPDATE sub_tasks SET {assignments} WHERE id = :id"),
                {**values, "id": sub_task_id},
            )


def attempt(sub_task_id: int, service_id: int, at: float, outcome: str = "sent") -> dict:
    return {
        "sub_task_id": sub_task_id,
        "service_id": service_id,
        "lease_token": "x",
        "started_at": at - 0.1,
        "finished_at": at,
        "outcome": outcome,
        "fenced": False,
    }


def event(key: str, occurred: float, lag: float, provider: str = "generic") -> dict:
    return {
        "provider": provider,
        "dedupe_key": key,
        "event": "delivered",
        "occurred_at": occurred,
        "created_at": occurred + lag,
        "status": "applied",
        "data": "{}",
        "duplicates": 0,
        "attempts": 0,
    }


def history(engine: Engine, now: float) -> int:
    """Ten sub-tasks of one task through `a` (every 2 s set) and `b` (unpaced), with known
    facts: what the report must find over the last hour before `now`."""
    a = services_mod.add_service(engine, "a", "sandbox", 2.0)
    b = services_mod.add_service(engine, "b", "sandbox", 0.0)
    make_contacts(engine, 10)
    task_id = tasks_mod.create_task(engine, "spring", "s", text_body="x", start=True)
    start = now - 600
    # 1-6 sent by a, two seconds apart: 5 delivered, 3 opened, 1 clicked, 1 complained,
    # and 6 bounced hard without delivery.
    for i in range(1, 7):
        set_rows(engine, [i], status="sent", service_id=a, sent_at=start + 2 * (i - 1))
    set_rows(engine, [1, 2, 3, 4, 5], delivered_at=now - 60)
    set_rows(engine, [1, 2, 3], opened_at=now - 50)
    set_rows(engine, [1], clicked_at=now - 40)
    set_rows(engine, [2], complained_at=now - 30)
    set_rows(engine, [6], bounced_at=now - 20, bounce_type="hard")
    # 7 failed on a (its address refused), 8 of unknown outcome on b, 9 sent by b now and
    # 10 by b long ago (outside the window).
    set_rows(
        engine, [7], status="failed", service_id=a, error_class="recipient", finished_at=now - 300
    )
    set_rows(engine, [8], status="unknown", service_id=b, error_class="unknown")
    set_rows(engine, [9], status="sent", service_id=b, sent_at=now - 100)
    set_rows(engine, [10], status="sent", service_id=b, sent_at=now - 5 * HOUR)
    insert(
        engine,
        "send_attempts",
        [attempt(i, a, start + 2 * (i - 1)) for i in range(1, 7)]
        + [
            attempt(1, a, start - 100, "transient"),
            attempt(7, a, now - 300, "recipient"),
            attempt(8, b, now - 200, "unknown"),
            attempt(9, b, now - 100),
            attempt(10, b, now - 5 * HOUR),
        ],
    )
    # Webhook lags of 1, 2, 3, 4 and 10 s in the window; one outside it, and our own
    # unsubscribe link (not a webhook), are not counted.
    lags = [4.0, 1.0, 10.0, 3.0, 2.0]
    events = [event(f"e{i}", now - 500 + i, lag) for i, lag in enumerate(lags)]
    events += [event("old", now - 5 * HOUR, 99.0), event("own", now - 100, 50.0, "edm")]
    insert(engine, "events", events)
    return task_id


def test_the_figures_are_exactly_what_the_rows_say(engine: Engine) -> None:
    now = time.time()
    task_id = history(engine, now)
    found = report(engine, HOUR, now=now)
    assert (found.now, found.since, found.window_seconds) == (now, now - HOUR, HOUR)
    a, b = found.services
    assert (a.name, a.calls, a.sends, a.sent) == ("a", 8, 6, 6)
    assert a.rates == {
        "delivered": 5 / 6,
        "opened": 3 / 6,
        "clicked": 1 / 6,
        "bounced": 1 / 6,
        "hard_bounced": 1 / 6,
        "complained": 1 / 6,
        "unsubscribed": 0.0,
    }
    assert a.seconds_per_email == pytest.approx(2.0) and a.per_minute == pytest.approx(30.0)
    assert a.interval_seconds == 2.0
    assert a.errors == {"transient": 1, "recipient": 1} and a.failed == {"recipient": 1}
    assert (a.unknown_outcomes, a.unknown_now) == (0, 0)
    assert (b.calls, b.sends, b.sent, b.seconds_per_email) == (2, 1, 1, None)
    assert b.errors == {"unknown": 1} and (b.unknown_outcomes, b.unknown_now) == (1, 1)
    assert b.rates["delivered"] == 0.0

    (task,) = found.tasks
    assert (task.id, task.name, task.status) == (task_id, "spring", "running")
    assert (task.calls, task.sends, task.sent, task.unknown_now) == (10, 7, 7, 1)
    assert task.facts["delivered"] == 5 and task.failed == {"recipient": 1}
    # From a's first accepted call (now - 600) to b's (now - 100), over 6 gaps.
    assert task.seconds_per_email == pytest.approx(500 / 6)
    assert found.total.sends == 7 and found.total.seconds_per_email == pytest.approx(500 / 6)
    assert found.total.errors == {"transient": 1, "recipient": 1, "unknown": 1}

    lag = found.webhook_lag
    assert (lag.events, lag.median_seconds, lag.p95_seconds, lag.max_seconds) == (
        pytest.approx(5),
        pytest.approx(3.0),
        pytest.approx(10.0),
        pytest.approx(10.0),
    )
    # A window reaching back past the old rows takes them in.
    wider = report(engine, 6 * HOUR, now=now)
    assert wider.services[1].sends == 2 and wider.webhook_lag.events == 6
    json.dumps(found.as_dict())  # what --json and the API print
    with pytest.raises(ReportInputError):
        report(engine, 0.0)


def test_an_empty_window(engine: Engine) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0)
    found = report(engine, HOUR)
    (a,) = found.services
    assert (a.calls, a.sends, a.seconds_per_email, a.rates["delivered"]) == (0, 0, None, None)
    assert found.tasks == [] and found.webhook_lag.events == 0
    assert found.webhook_lag.median_seconds is None


# -- `edm report`, on a Typer app of its own until the owner registers it --------------------------
def cli(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command("report")(report_cli.report)
    app.command("other")(lambda: None)  # two commands: `report` stays a sub-command
    result = CliRunner().invoke(app, list(args), terminal_width=200)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_the_report_command(engine: Engine, env: dict[str, str]) -> None:
    history(engine, time.time())
    code, out, err = cli("report", "--since", "90m", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["window_seconds"] == 5400
    assert [s["sends"] for s in shown["services"]] == [6, 1]
    assert shown["services"][0]["rates"]["delivered"] == pytest.approx(5 / 6)
    assert shown["tasks"][0]["name"] == "spring" and shown["webhook_lag"]["events"] == 5
    code, out, err = cli("report")
    assert code == 0, err
    assert "all services" in out and "task 1 spring" in out and "83.3%" in out
    assert "webhook lag over 6 events: median 3 s, p95 99 s" in out  # 24 h: the old one too

    for since, message in (
        ("24x", "error: --since must be a duration such as 30m, 2h or 1d, not '24x'"),
        ("0", "error: --since must be more than 0, not '0'"),
        ("99999d", "error: --since must be at most 3650 days, not '99999d'"),
    ):
        code, out, err = cli("report", "--since", since)
        assert code == 1 and out == "" and err.startswith(message), err
        assert len(err.strip().splitlines()) == 1


# -- the API ---------------------------------------------------------------------------------------
def _app_with_report(engine: Engine, settings: Settings):  # type: ignore[no-untyped-def]
    """The app, with the report's router if the app does not include it yet."""
    app = create_app(engine, settings)
    if not any(getattr(route, "path", None) == "/api/report" for route in app.routes):
        app.include_router(report_api.router)
    return app


@pytest.fixture(scope="module")
def client(db: Engine) -> Iterator[httpx.Client]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("edm.api.server.create_app", _app_with_report)
        with api_server(db, Settings()) as client:
            yield client


def test_the_report_plan_and_eta_over_http(database: Engine, client: httpx.Client) -> None:
    task_id = history(database, time.time())
    read = {"Authorization": f"Bearer {create_token(database, 'bi', 'read')}"}
    assert client.get("/api/report").status_code == 401

    answer = client.get("/api/report", params={"since_seconds": 5400}, headers=read)
    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert [s["sends"] for s in shown["services"]] == [6, 1]
    assert shown["services"][0]["seconds_per_email"] == pytest.approx(2.0)
    assert shown["webhook_lag"]["median_seconds"] == pytest.approx(3.0)
    bad = client.get("/api/report", params={"since_seconds": 0}, headers=read)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "since_seconds"

    answer = client.get("/api/plan", params={"recipients": 100, "services": "a"}, headers=read)
    assert answer.status_code == 200, answer.text
    assert answer.json()["duration_seconds"] == pytest.approx(200)  # one every 2 s
    for params, field in (
        ({"recipients": 5, "services": "a,nope"}, "services"),
        ({"recipients": 5, "start": "soon"}, "start"),
        ({"recipients": 5, "start": "2001-01-01T00:00Z"}, "start"),
        ({"recipients": 0}, "recipients"),
    ):
        bad = client.get("/api/plan", params=params, headers=read)
        assert bad.status_code == 400 and bad.json()["error"]["field"] == field, bad.text

    answer = client.get(f"/api/tasks/{task_id}/eta", headers=read)
    assert answer.status_code == 200, answer.text
    eta = answer.json()
    # Sub-task 8 is of unknown outcome on a sandbox (it drops repeated keys): it is resent
    # through b, so nothing is left but it.
    assert (eta["task_id"], eta["status"], eta["remaining"]) == (task_id, "running", 1)
    assert eta["ends_at"] is not None and eta["notes"]
    missing = client.get("/api/tasks/999/eta", headers=read)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
