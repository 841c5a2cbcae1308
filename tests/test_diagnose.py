"""`edm diagnose`: it names what keeps a task from finishing, proposes commands that
exist, and once those commands are run the task finishes and the diagnosis is clean."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import Settings
from edm.health.diagnose import diagnose
from edm.scheduler.pace import utc_day
from tests.helpers import (
    Worker,
    edm,
    make_contacts,
    scalar,
    sent_by_service,
    status_counts,
    task_status,
)

SETTINGS = Settings(health_heartbeat_seconds=5.0, maintenance_seconds=0.2)
TOP_KEYS = {
    "scope",
    "task_id",
    "now",
    "ok",
    "tasks",
    "services",
    "events",
    "failing_checks",
    "verdict",
}
TASK_KEYS = {
    "id",
    "name",
    "status",
    "status_reason",
    "delivery_policy",
    "priority",
    "created_at",
    "scheduled_at",
    "started_at",
    "completed_at",
    "services",
    "progress",
    "funnel",
    "sub_tasks",
    "pinned",
    "past_lease",
    "past_lease_oldest_seconds",
    "waiting_retry",
    "next_retry_at",
    "sent_recently",
    "rate_per_minute",
    "minutes_left",
}
SERVICE_KEYS = {
    "id",
    "name",
    "provider",
    "enabled",
    "frozen",
    "frozen_reason",
    "frozen_at",
    "frozen_until",
    "usable",
    "paused_until",
    "live_workers",
    "last_beat",
    "interval_seconds",
    "measured_seconds_per_email",
    "sent_recently",
    "last_sent_at",
    "daily_quota",
    "quota_used",
    "quota_left",
    "quota_resets_at",
    "last_error",
    "last_error_at",
    "sent",
    "pinned_pending",
}
FINDING_KEYS = {"severity", "code", "message", "commands", "task_id", "services"}


def diagnosed(*args: str) -> dict:
    code, stdout, stderr = edm("diagnose", *args, "--json")
    assert code == 0, stderr
    return json.loads(stdout)


def by_code(found: dict) -> dict[str, dict]:
    return {finding["code"]: finding for finding in found["verdict"]}


def beat(engine: Engine, service_id: int) -> None:
    """A running worker's heartbeat for the service, now."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO worker_heartbeats (instance_id, service_id, hostname, pid, state,"
                " started_at, beat_at, restarts) VALUES ('i1', :s, 'h', 1, 'running', :t, :t, 0)"
            ),
            {"s": service_id, "t": time.time()},
        )


def task_ids(engine: Engine, task_id: int) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id FROM sub_tasks WHERE task_id = :t ORDER BY id"), {"t": task_id}
        )
        return [row.id for row in rows]


def test_a_frozen_service_and_stuck_sub_tasks_are_named_and_the_commands_fix_them(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    for name in ("store", "fun"):
        services_mod.add_service(engine, name, "sandbox", 0.02, options={"outbox": str(outbox)})
    make_contacts(engine, 12)
    task_id = tasks_mod.create_task(engine, "spring", "Hi", text_body="x", start=True)
    code, _, _ = edm("service", "freeze", "fun", "--reason", "401 from EngageLab: check api_key")
    assert code == 0
    ids = task_ids(engine, task_id)
    with engine.begin() as conn:
        # Three same-key resends only `fun` may make, and two claims of a worker gone
        # long ago whose leases ran out two minutes back.
        conn.execute(
            text(
                "UPDATE sub_tasks SET pinned_service_id = 2, service_id = 2"
                " WHERE id IN (:a, :b, :c)"
            ),
            {"a": ids[0], "b": ids[1], "c": ids[2]},
        )
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'allocated', service_id = 1, lease_token = 'x',"
                " claimed_by = 'gone/1', lease_expires_at = :t WHERE id IN (:a, :b)"
            ),
            {"t": time.time() - 120, "a": ids[3], "b": ids[4]},
        )

    found = diagnosed(str(task_id))
    assert not found["ok"]
    verdict = by_code(found)
    pinned = verdict["pinned"]
    assert pinned["severity"] == "warn" and pinned["services"] == ["fun"]
    assert "task 1 (spring) has 3 sub-tasks pinned to fun" in pinned["message"]
    assert "frozen since" in pinned["message"] and "401 from EngageLab" in pinned["message"]
    assert pinned["commands"] == ["edm service unfreeze fun"]
    stuck = verdict["past_lease"]
    assert "task 1 (spring) has 2 sub-tasks past their lease" in stuck["message"]
    assert stuck["commands"] == ["edm repair"]
    # No worker runs for `store` and `fun` is frozen: nothing can send, the worst finding.
    assert found["verdict"][0]["code"] == "blocked"
    assert found["verdict"][0]["commands"] == ["edm service unfreeze fun", "edm worker"]
    services = {service["name"]: service for service in found["services"]}
    assert services["fun"]["frozen"] and services["fun"]["pinned_pending"] == 3
    assert services["fun"]["frozen_reason"] == "401 from EngageLab: check api_key"
    assert services["store"]["live_workers"] == 0
    ages = {age["status"]: age for age in found["tasks"][0]["sub_tasks"]}
    assert (ages["allocated"]["count"], ages["pending"]["count"]) == (2, 10)
    assert ages["allocated"]["oldest_id"] == ids[3]
    assert {check["name"] for check in found["failing_checks"]} >= {"frozen_services"}
    code, shown, _ = edm("diagnose", str(task_id))
    assert code == 0
    assert "401 from EngageLab" in shown and "$ edm service unfreeze fun" in shown

    commands = list(dict.fromkeys(c for f in found["verdict"] for c in f["commands"]))
    assert commands == ["edm service unfreeze fun", "edm worker", "edm repair"]
    worker = None
    try:
        for command in commands:
            args = shlex.split(command)
            assert args[0] == "edm"
            if args[1:] == ["worker"]:  # told to exit once idle, so the test can wait for it
                worker = Worker(env, tmp_path, "--exit-when-idle")
            else:
                code, _, stderr = edm(*args[1:])
                assert code == 0, (command, stderr)
        assert worker is not None and worker.wait(30) == 0, worker.stderr
    finally:
        if worker is not None:
            worker.kill()
    assert status_counts(engine, task_id) == {"sent": 12}
    assert task_status(engine, task_id) == "completed"
    assert sent_by_service(engine, task_id)["fun"] >= 3  # the pinned ones went through it

    found = diagnosed(str(task_id))
    assert found["ok"], found["verdict"]
    assert [f["code"] for f in found["verdict"]] == ["completed"]
    assert found["tasks"][0]["progress"] == {"done": 12, "total": 12, "percent": 100.0}
    assert "nothing is wrong" in edm("diagnose", str(task_id))[1]


def test_the_whole_installation_empty_and_with_tasks(engine: Engine, env: dict[str, str]) -> None:
    found = diagnosed()
    assert (found["scope"], found["tasks"], found["services"]) == ("installation", [], [])
    assert found["ok"] and [f["code"] for f in found["verdict"]] == ["idle"]
    code, shown, _ = edm("diagnose")
    assert code == 0 and "no task is running, paused or due" in shown

    services_mod.add_service(engine, "store", "sandbox", 6.0)
    beat(engine, 1)
    make_contacts(engine, 5)
    running = tasks_mod.create_task(engine, "running one", "s", text_body="x", start=True)
    paused = tasks_mod.create_task(engine, "paused one", "s", text_body="x", start=True)
    tasks_mod.pause_task(engine, paused)
    tasks_mod.create_task(engine, "a draft", "s", text_body="x")  # can send nothing yet
    found = diagnosed()
    assert [task["id"] for task in found["tasks"]] == [running, paused]
    verdict = by_code(found)
    assert verdict["paused"]["commands"] == [f"edm task resume {paused}"]
    assert "paused by an operator" in verdict["paused"]["message"]
    assert verdict["moving"]["task_id"] == running
    code, shown, _ = edm("diagnose")
    assert code == 0 and "running one" in shown and "paused one" in shown


def test_an_unknown_task_is_one_line_and_a_non_zero_exit(
    engine: Engine, env: dict[str, str]
) -> None:
    for task_id in ("999", "0"):
        code, stdout, stderr = edm("diagnose", task_id)
        assert code == 1 and stdout == ""
        assert stderr.startswith(f"error: unknown task {task_id}")
        assert len(stderr.strip().splitlines()) == 1


def test_json_has_the_documented_keys(engine: Engine, env: dict[str, str]) -> None:
    services_mod.add_service(engine, "store", "sandbox", 1.0, daily_quota=100)
    make_contacts(engine, 3)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    for args in ((str(task_id),), ()):
        found = diagnosed(*args)
        assert set(found) == TOP_KEYS
        assert set(found["tasks"][0]) == TASK_KEYS
        assert set(found["tasks"][0]["progress"]) == {"done", "total", "percent"}
        assert set(found["services"][0]) == SERVICE_KEYS
        assert set(found["events"]) == {"since", "counts", "last"}
        assert found["verdict"] and all(set(f) == FINDING_KEYS for f in found["verdict"])
        assert all(set(c) >= {"name", "status", "message"} for c in found["failing_checks"])


def test_each_rule_of_the_verdict(engine: Engine) -> None:
    services_mod.add_service(engine, "store", "sandbox", 6.0, daily_quota=100)
    make_contacts(engine, 20)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    beat(engine, 1)

    def verdict() -> dict[str, dict]:
        return {f.code: f.__dict__ for f in diagnose(engine, SETTINGS, task_id).verdict}

    moving = verdict()["moving"]
    assert moving["message"] == (
        "task 1 (t) is sending at 10/min; about 2 min left (20 sub-tasks to send)"
    )

    with engine.begin() as conn:  # today's quota used up
        conn.execute(
            text("UPDATE services SET quota_used = 100, quota_day = :day"),
            {"day": utc_day(time.time())},
        )
    blocked = verdict()["blocked"]
    assert blocked["severity"] == "critical" and blocked["commands"] == []
    assert "store is out of its daily quota (100/100) until" in blocked["message"]
    with engine.begin() as conn:
        conn.execute(text("UPDATE services SET quota_used = 0, paused_until = :t"), {"t": 1e10})
    assert "store is paused by its provider until" in verdict()["blocked"]["message"]
    with engine.begin() as conn:
        conn.execute(text("UPDATE services SET paused_until = 0"))
        conn.execute(text("DELETE FROM worker_heartbeats"))
    assert verdict()["blocked"]["commands"] == ["edm worker"]
    services_mod.set_enabled(engine, "store", False)
    assert verdict()["blocked"]["commands"] == ["edm service enable store"]
    services_mod.set_enabled(engine, "store", True)
    beat(engine, 1)

    with engine.begin() as conn:  # an outcome unknown for an hour
        conn.execute(
            text("UPDATE sub_tasks SET status = 'unknown', finished_at = :t WHERE id = 1"),
            {"t": time.time() - 3600},
        )
    unknown = verdict()["unknown_outcomes"]
    assert unknown["severity"] == "warn" and "the reconciler settles them" in unknown["message"]
    with engine.begin() as conn:  # a retry due in a minute
        conn.execute(
            text("UPDATE sub_tasks SET next_attempt_at = :t WHERE id = 2"), {"t": time.time() + 60}
        )
    assert "task 1 (t) has 1 sub-task waiting for a retry" in verdict()["retry_wait"]["message"]

    tasks_mod.pause_task(engine, task_id)
    paused = verdict()["paused"]
    assert paused["severity"] == "critical" and paused["commands"] == [f"edm task resume {task_id}"]
    tasks_mod.cancel_task(engine, task_id)
    assert list(verdict()) == ["cancelled"]
    assert diagnose(engine, SETTINGS, task_id).ok
    assert scalar(engine, "SELECT count(*) FROM tasks") == 1


def test_a_credential_freeze_names_the_option_while_the_rest_moves(engine: Engine) -> None:
    services_mod.add_service(engine, "store", "sandbox", 6.0)
    services_mod.add_service(
        engine, "fun", "engagelab", 18.0, options={"api_user": "u", "api_key": "old"}
    )
    make_contacts(engine, 20)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    beat(engine, 1)
    services_mod.set_frozen(engine, "fun", True, "engagelab: HTTP 401: invalid api_key")
    with engine.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET pinned_service_id = 2 WHERE id <= 2"))

    found = diagnose(engine, SETTINGS, task_id)
    assert not found.ok
    pinned, moving = found.verdict
    assert (pinned.code, pinned.commands) == ("pinned", ["edm service unfreeze fun"])
    assert "set it first: `edm service update fun --option api_key=...`" in pinned.message
    assert moving.code == "moving"
    assert moving.message.endswith("(18 sub-tasks to send, 2 waiting as above)")
    assert [s.name for s in found.services] == ["store", "fun"]


def test_a_freeze_with_an_expiry_says_when_it_ends(engine: Engine) -> None:
    services_mod.add_service(engine, "store", "sandbox", 6.0)
    services_mod.add_service(engine, "fun", "sandbox", 6.0)
    make_contacts(engine, 4)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    beat(engine, 1)
    services_mod.set_frozen(engine, "fun", True, "bounces", for_seconds=1800)
    with engine.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET pinned_service_id = 2 WHERE id = 1"))
    pinned = next(f for f in diagnose(engine, SETTINGS, task_id).verdict if f.code == "pinned")
    assert "is frozen since" in pinned.message and "and unfreezes by itself at" in pinned.message
