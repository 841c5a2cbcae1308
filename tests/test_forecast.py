"""A task's ETA and a campaign's plan: the arithmetic on services of known paces and
quotas, at a fixed instant (noon UTC on 2030-01-01), and `edm plan`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import typer
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.cli import plan as plan_cli
from edm.config import Settings
from edm.forecast import Day, Eta, ForecastInputError, plan, task_eta
from tests.helpers import make_contacts

NOON = datetime(2030, 1, 1, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2030, 1, 2, tzinfo=UTC).timestamp()
SETTINGS = Settings()


def eta(engine: Engine, task_id: int, now: float = NOON) -> Eta:
    return task_eta(engine, task_id, now=now, settings=SETTINGS)


def running_task(
    engine: Engine, contacts: int, services: list[str] | None = None, priority: int = 0
) -> int:
    make_contacts(engine, contacts)
    return tasks_mod.create_task(
        engine, "t", "s", text_body="x", services=services, start=True, priority=priority
    )


def share(found: Eta, name: str) -> int:
    return next(s.share for s in found.services if s.name == name)


def update(engine: Engine, sql: str, **params: object) -> None:
    with engine.begin() as conn:
        conn.execute(text(sql), params)


def test_one_service_at_one_a_second_takes_a_thousand_seconds(engine: Engine) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0)
    task_id = running_task(engine, 1000)
    found = eta(engine, task_id)
    assert found.ends_at == pytest.approx(NOON + 1000)
    assert found.seconds_left == pytest.approx(1000)
    assert (found.remaining, found.held, found.reason) == (1000, 0, None)
    assert share(found, "a") == 1000
    assert found.notes[0] == "ends about 12:16 UTC (in 17 min)"
    assert "a has no live worker: counted as if one ran (edm worker)" in found.notes
    assert found.days == [Day("2030-01-01", 1000, [])]


def test_two_services_add_up_and_a_provider_pause_delays_one(engine: Engine) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0)
    services_mod.add_service(engine, "b", "sandbox", 0.25)
    task_id = running_task(engine, 1000)
    found = eta(engine, task_id)
    assert found.ends_at == pytest.approx(NOON + 200)  # 1 + 4 emails a second
    assert (share(found, "a"), share(found, "b")) == (200, 800)

    # b waits 100 s for its provider: a sends 100 alone, then both the other 900 at 5/s.
    update(engine, "UPDATE services SET paused_until = :t WHERE name = 'b'", t=NOON + 100)
    found = eta(engine, task_id)
    assert found.ends_at == pytest.approx(NOON + 280)
    assert (share(found, "a"), share(found, "b")) == (280, 720)
    assert "b is paused by its provider until 12:01 UTC" in found.notes


def test_a_quota_spent_today_moves_the_rest_to_tomorrow(engine: Engine) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0, daily_quota=1000)
    update(engine, "UPDATE services SET quota_day = '2030-01-01', quota_used = 400")
    task_id = running_task(engine, 1000)
    found = eta(engine, task_id)
    # 600 left today by 12:10, the other 400 from midnight.
    assert found.ends_at == pytest.approx(MIDNIGHT + 400)
    assert found.notes[0] == (
        "ends about 2030-01-02 00:06 UTC (in 12.1 h); a reaches its daily quota at 12:10 UTC,"
        " after which nothing sends it until the quotas reset at 2030-01-02 00:00 UTC"
    )
    assert found.days == [Day("2030-01-01", 600, ["a"]), Day("2030-01-02", 400, [])]
    a = found.services[0]
    assert (a.quota_left, a.daily_quota, a.quota_reached) == (600, 1000, [NOON + 600])


def test_a_quota_spent_leaves_the_other_service_sending(engine: Engine) -> None:
    services_mod.add_service(engine, "glodamarket.fun", "sandbox", 1.0, daily_quota=500)
    services_mod.add_service(engine, "glodamarket.store", "sandbox", 1.0)
    task_id = running_task(engine, 2000)
    found = eta(engine, task_id)
    assert found.ends_at == pytest.approx(NOON + 1500)
    assert found.notes[0] == (
        "ends about 12:25 UTC (in 25 min); glodamarket.fun reaches its daily quota at 12:08"
        " UTC, after which only glodamarket.store sends"
    )
    assert (share(found, "glodamarket.fun"), share(found, "glodamarket.store")) == (500, 1500)


def test_a_frozen_or_disabled_service_does_not_count(engine: Engine) -> None:
    for name in ("a", "b", "c"):
        services_mod.add_service(engine, name, "sandbox", 1.0)
    services_mod.set_frozen(engine, "b", True, "401 from the provider")
    services_mod.set_enabled(engine, "c", False)
    task_id = running_task(engine, 1000)
    found = eta(engine, task_id)
    assert found.ends_at == pytest.approx(NOON + 1000)
    by_name = {s.name: s for s in found.services}
    assert by_name["a"].counted and by_name["a"].share == 1000
    assert not by_name["b"].counted and by_name["b"].why_not == "is frozen (401 from the provider)"
    assert by_name["c"].why_not == "is disabled" and by_name["c"].share == 0
    assert "b is frozen (401 from the provider): not counted" in found.notes
    assert "c is disabled: not counted" in found.notes


def test_nothing_eligible_has_no_end_and_says_why(engine: Engine) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0)
    services_mod.add_service(engine, "b", "sandbox", 1.0, daily_quota=0)
    task_id = running_task(engine, 10, services=["a", "b"])
    services_mod.set_frozen(engine, "a", True, "bounces")
    found = eta(engine, task_id)
    assert found.ends_at is None and found.seconds_left is None
    assert (
        found.reason
        == "nothing can send task 1 (t): a is frozen (bounces); b has a daily quota of 0"
    )
    assert found.notes[0] == found.reason and found.held == 10 and found.remaining == 0

    tasks_mod.pause_task(engine, task_id)
    found = eta(engine, task_id)
    assert found.reason == (
        "task 1 (t) is paused (paused by an operator): nothing is sent until it is resumed"
        " (edm task resume 1)"
    )


def test_pinned_rows_count_only_for_their_service(engine: Engine) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0)
    b = services_mod.add_service(engine, "b", "sandbox", 1.0)
    task_id = running_task(engine, 1000)
    # 600 same-key resends only b may make: a sends the other 400 and then has nothing.
    update(
        engine,
        "UPDATE sub_tasks SET pinned_service_id = :b, service_id = :b"
        " WHERE id IN (SELECT id FROM sub_tasks ORDER BY id LIMIT 600)",
        b=b,
    )
    found = eta(engine, task_id)
    assert found.ends_at == pytest.approx(NOON + 600)
    assert (share(found, "a"), share(found, "b")) == (400, 600)

    services_mod.set_frozen(engine, "b", True, "down")
    found = eta(engine, task_id)
    assert (found.remaining, found.held) == (400, 600)
    assert found.ends_at == pytest.approx(NOON + 400)
    assert any(
        note.startswith("600 sub-tasks pinned to a service that cannot send")
        for note in found.notes
    )


def test_rows_in_flight_hold_their_slots_and_unknown_ones_follow_the_policy(
    engine: Engine,
) -> None:
    a = services_mod.add_service(engine, "a", "sandbox", 1.0)
    m = services_mod.add_service(engine, "m", "smtp", 1.0, options={"host": "localhost"})
    task_id = running_task(engine, 1000, services=["a"])
    # A claim of 10 rows moved a's next slot 10 s on; 10 others are of unknown outcome on
    # an SMTP service (no same-key resend) of an at-most-once task: they will be failed.
    update(engine, "UPDATE services SET next_send_at = :t WHERE id = :a", t=NOON + 10, a=a)
    update(
        engine,
        "UPDATE sub_tasks SET status = 'allocated', service_id = :a, lease_token = 'x',"
        " lease_expires_at = :t WHERE id <= 10",
        a=a,
        t=NOON + 30,
    )
    update(
        engine,
        "UPDATE sub_tasks SET status = 'unknown', service_id = :m, attempts = 1 WHERE id > 990",
        m=m,
    )
    found = eta(engine, task_id)
    assert found.remaining == 990
    assert found.ends_at == pytest.approx(NOON + 990)
    assert share(found, "a") == 990
    assert (
        "10 sub-tasks of unknown outcome will be failed (the task's delivery policy, or no"
        " attempts left), not resent: not counted" in found.notes
    )


def test_a_higher_priority_task_is_served_first(engine: Engine) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0)
    make_contacts(engine, 500)
    low = tasks_mod.create_task(engine, "low", "s", text_body="x", start=True)
    high = tasks_mod.create_task(engine, "high", "s", text_body="x", start=True, priority=5)
    assert eta(engine, high).ends_at == pytest.approx(NOON + 500)
    found = eta(engine, low)
    assert found.ends_at == pytest.approx(NOON + 1000)
    assert found.services[0].serves_first == [high]
    assert found.services[0].starts_at == pytest.approx(NOON + 500)
    assert (
        f"a sends for task {high} first (as the claim does: a higher priority, or an older task"
        " at the same priority): it starts on this one at 12:08 UTC"
    ) in found.notes


def test_the_counts_task_show_read_give_the_same_eta(engine: Engine) -> None:
    """`edm task show` hands the ETA the counts it read; with pinned rows, rows in flight
    and another running task served first, the answer is the one the ETA counts itself,
    and counts that say otherwise change it (they are used)."""
    from edm.task_views import show_task

    services_mod.add_service(engine, "a", "sandbox", 1.0)
    b = services_mod.add_service(engine, "b", "sandbox", 1.0)
    make_contacts(engine, 500)
    low = tasks_mod.create_task(engine, "low", "s", text_body="x", start=True)
    tasks_mod.create_task(engine, "high", "s", text_body="x", start=True, priority=5)
    update(
        engine,
        "UPDATE sub_tasks SET pinned_service_id = :b WHERE task_id = :low AND id % 5 = 0",
        b=b,
        low=low,
    )
    update(
        engine,
        "UPDATE sub_tasks SET status = 'allocated', service_id = :b, lease_token ="
        " 'x', lease_expires_at = :t WHERE task_id = :low AND id % 7 = 1",
        b=b,
        low=low,
        t=NOON + 30,
    )
    counts = show_task(engine, low).counts
    alone = eta(engine, low)
    given = task_eta(engine, low, now=NOON, settings=SETTINGS, counts=counts)
    assert given == alone and alone.remaining > 0
    fewer = task_eta(
        engine,
        low,
        now=NOON,
        settings=SETTINGS,
        counts={**counts, "pending": counts["pending"] - 50},
    )
    assert fewer.remaining == alone.remaining - 50


def test_an_unpaced_service_goes_at_its_measured_pace_else_an_assumed_one(
    engine: Engine,
) -> None:
    a = services_mod.add_service(engine, "a", "sandbox", 0.0)
    task_id = running_task(engine, 1000)
    found = eta(engine, task_id)
    assert found.ends_at == pytest.approx(NOON + 100)  # 10 emails a second, assumed
    assert found.services[0].pace_from == "assumed"
    assert any("assumed 10 emails a second" in note for note in found.notes)

    # Eleven accepted calls half a second apart over the last 10 minutes: 2 a second.
    with engine.begin() as conn:
        for i in range(11):
            conn.execute(
                text(
                    "INSERT INTO send_attempts (sub_task_id, service_id, lease_token, started_at,"
                    " finished_at, outcome, fenced) VALUES (1, :a, 'x', :t, :t, 'sent', false)"
                ),
                {"a": a, "t": NOON - 60 + 0.5 * i},
            )
    found = eta(engine, task_id)
    assert found.services[0].pace_from == "measured"
    assert found.ends_at == pytest.approx(NOON + 500)


def test_a_plan_counts_todays_quota_only_when_it_starts_today(engine: Engine) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0, daily_quota=1000)
    update(engine, "UPDATE services SET quota_day = '2030-01-01', quota_used = 900")
    today = plan(engine, 2500, ["a"], NOON + 3600, now=NOON, settings=SETTINGS)
    assert today.starts_at == NOON + 3600
    assert [(d.date, d.sent, d.quota_reached) for d in today.days] == [
        ("2030-01-01", 100, ["a"]),
        ("2030-01-02", 1000, ["a"]),
        ("2030-01-03", 1000, ["a"]),
        ("2030-01-04", 400, []),
    ]
    assert today.ends_at == pytest.approx(MIDNIGHT + 2 * 86400 + 400)
    assert "daily quotas stop it on 3 days" in today.notes[0]

    tomorrow = plan(engine, 2500, ["a"], MIDNIGHT + 3600, now=NOON, settings=SETTINGS)
    assert [d.sent for d in tomorrow.days] == [1000, 1000, 500]
    assert tomorrow.duration_seconds == pytest.approx(2 * 86400 - 3600 + 500)
    assert tomorrow.as_dict()["recipients"] == 2500


def test_a_plan_waits_for_running_tasks_and_refuses_bad_input(engine: Engine) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0)
    services_mod.add_service(engine, "b", "sandbox", 1.0)
    found = plan(engine, 3600, [], None, now=NOON, settings=SETTINGS)
    assert found.ends_at == pytest.approx(NOON + 1800) and found.starts_at == NOON
    running_task(engine, 600, services=["a"])
    found = plan(engine, 3600, ["a"], None, now=NOON, settings=SETTINGS)
    assert found.ends_at == pytest.approx(NOON + 4200)  # after the running task's 600
    assert found.services[0].serves_first == [1]

    with pytest.raises(ForecastInputError, match="unknown service 'c'"):
        plan(engine, 10, ["a", "c"], None, now=NOON, settings=SETTINGS)
    with pytest.raises(ForecastInputError, match="is in the past"):
        plan(engine, 10, ["a"], NOON - 3600, now=NOON, settings=SETTINGS)
    with pytest.raises(ForecastInputError, match="--recipients must be a whole number"):
        plan(engine, 0, ["a"], None, now=NOON, settings=SETTINGS)


def test_a_plan_with_nothing_to_send_through_or_beyond_a_year(engine: Engine) -> None:
    found = plan(engine, 10, [], None, now=NOON, settings=SETTINGS)
    assert found.ends_at is None
    assert found.reason == (
        "a campaign of 10 has no service to send through: add one with `edm service add`"
    )
    services_mod.add_service(engine, "a", "sandbox", 60.0, daily_quota=1)
    found = plan(engine, 1000, ["a"], None, now=NOON, settings=SETTINGS)
    assert found.ends_at is None
    assert (
        found.reason
        == "a campaign of 1,000 would take more than 366 days at these paces and quotas"
    )


# -- `edm plan`, on a Typer app of its own until the owner registers it ----------------------------
def cli(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command("plan")(plan_cli.plan)
    app.command("other")(lambda: None)  # two commands: `plan` stays a sub-command
    result = CliRunner().invoke(app, list(args), terminal_width=200)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_the_plan_command(engine: Engine, env: dict[str, str]) -> None:
    services_mod.add_service(engine, "a", "sandbox", 1.0, daily_quota=5000)
    code, out, err = cli("plan", "--recipients", "100", "--services", "a", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["duration_seconds"] == pytest.approx(100)
    assert shown["services"][0]["share"] == 100 and shown["recipients"] == 100
    code, out, err = cli("plan", "--recipients", "100", "--services", "a", "--start", "now")
    assert code == 0, err
    assert "recipients" in out and "takes" in out and "ends about" in out

    for args, message in (
        (("--services", "nope"), "error: --services: unknown service 'nope' (known: a)"),
        (("--services", "a", "--start", "soon"), "error: --start must be an ISO 8601 time"),
        (("--services", "a", "--start", "2001-01-01T00:00Z"), "is in the past"),
        (("--services", " , "), "error: --services names no service"),
    ):
        code, out, err = cli("plan", "--recipients", "5", *args)
        assert code == 1 and out == "" and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1
    code, _, _ = cli("plan", "--recipients", "0", "--services", "a")
    assert code == 2  # typer's own range check
