"""Every input is checked before it is stored: one-line errors, never a row the worker
cannot use. Each test runs on SQLite and PostgreSQL, whose column limits differ."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from edm import validation
from edm.scheduler.maintenance import run_upkeep
from tests.helpers import make_contacts, scalar, task_status
from tests.test_cli import edm

HUGE = "99999999999999999999"
ADD = ("service", "add", "s", "--provider", "sandbox", "--interval")


def refused(args: list[str] | tuple[str, ...], message: str) -> None:
    code, _, err = edm(*args)
    assert code == 1, err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def create(*extra: str) -> dict:
    code, out, err = edm("task", "create", "t", "--subject", "s", "--text", "x", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


# -- 1. intervals, quotas, priorities and ids within what the columns and the worker take --


@pytest.mark.parametrize("interval", ["nan", "inf", "-inf", "1e308", "86400.0001", "-1"])
def test_an_interval_the_worker_cannot_use_is_refused(
    env: dict[str, str], engine: Engine, interval: str
) -> None:
    refused([*ADD, interval], "--interval must be a number of seconds from 0 to 86400")
    assert scalar(engine, "SELECT count(*) FROM services") == 0
    assert edm(*ADD, "31")[0] == 0
    refused(["service", "update", "s", "--interval", interval], "--interval")
    assert scalar(engine, "SELECT interval_seconds FROM services") == 31.0


def test_the_interval_bounds_and_negative_zero_are_accepted(
    env: dict[str, str], engine: Engine
) -> None:
    assert edm(*ADD, "-0.0")[0] == 0
    stored = scalar(engine, "SELECT interval_seconds FROM services")
    assert stored == 0.0 and math.copysign(1.0, stored) == 1.0
    assert edm("service", "update", "s", "--interval", "86400")[0] == 0
    assert scalar(engine, "SELECT interval_seconds FROM services") == 86400.0


@pytest.mark.parametrize("quota", ["3000000000", "2147483648", "-1", HUGE])
def test_a_daily_quota_beyond_int32_is_refused(
    env: dict[str, str], engine: Engine, quota: str
) -> None:
    refused([*ADD, "1", "--daily-quota", quota], "--daily-quota must be a whole number from 0")
    assert edm(*ADD, "1", "--daily-quota", "2147483647")[0] == 0
    refused(["service", "update", "s", "--daily-quota", quota], "--daily-quota")
    assert scalar(engine, "SELECT daily_quota FROM services") == 2147483647


@pytest.mark.parametrize("priority", ["3000000000", "-3000000000", "2147483648", HUGE])
def test_a_priority_beyond_int32_is_refused(
    env: dict[str, str], engine: Engine, priority: str
) -> None:
    make_contacts(engine, 1)
    refused(
        ["task", "create", "t", "--subject", "s", "--text", "x", "--priority", priority],
        "--priority must be a whole number from -2147483648 to 2147483647",
    )
    assert scalar(engine, "SELECT count(*) FROM tasks") == 0
    assert create("--priority", "-2147483648")["status"] == "draft"


@pytest.mark.parametrize("command", ["show", "start", "pause", "resume", "cancel"])
def test_a_task_id_beyond_bigint_is_a_clear_error(env: dict[str, str], command: str) -> None:
    refused(["task", command, HUGE], f"unknown task {HUGE}: ids are whole numbers")
    refused(["task", command, str(2**63)], "unknown task")
    refused(["task", command, str(2**63 - 1)], f"unknown task {2**63 - 1}")


# -- 2. names and text: within their columns, no NUL, no control characters ---------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "service name must not be empty"),
        ("   ", "service name must not be empty"),
        ("x" * 201, "at most 200 characters"),
        ("a\x00b", "control characters"),
        ("a\nb", "control characters"),
        ("a\x1b[31mb", "control characters"),
    ],
)
def test_a_service_name_is_a_one_line_label(
    env: dict[str, str], engine: Engine, name: str, message: str
) -> None:
    refused(["service", "add", name, "--provider", "sandbox", "--interval", "1"], message)
    assert scalar(engine, "SELECT count(*) FROM services") == 0


def test_a_long_name_fits_its_column(env: dict[str, str], engine: Engine) -> None:
    make_contacts(engine, 1)
    assert edm("service", "add", "é" * 200, "--provider", "sandbox", "--interval", "1")[0] == 0
    code, out, err = edm("task", "create", "ü" * 200, "--subject", "s", "--text", "x", "--json")
    assert code == 0, err
    refused(["task", "create", "t" * 201, "--subject", "s", "--text", "x"], "task name")


@pytest.mark.parametrize(
    "args",
    [
        ["task", "create", "a\x00b", "--subject", "s", "--text", "x"],
        ["task", "create", "t", "--subject", "s\x00", "--text", "x"],
        ["task", "create", "t", "--subject", "s", "--text", "x\x00"],
        ["task", "create", "t", "--subject", "s", "--text", "x", "--services", "a\x00"],
        ["service", "add", "s", "--provider", "sandbox", "--interval", "1", "--option", "seed=\0"],
        ["service", "add", "s", "--provider", "sandbox", "--interval", "1", "--option", "\0=1"],
        ["service", "freeze", "a\x00"],
        ["service", "update", "a\x00", "--interval", "1"],
    ],
)
def test_nul_never_reaches_the_database(
    env: dict[str, str], engine: Engine, args: list[str]
) -> None:
    make_contacts(engine, 1)
    code, _, err = edm(*args)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "NUL" in err or "control characters" in err, err


def test_nul_in_a_freeze_reason_is_refused(env: dict[str, str], engine: Engine) -> None:
    assert edm(*ADD, "1")[0] == 0
    refused(["service", "freeze", "s", "--reason", "a\x00"], "--reason must not contain a NUL")
    assert scalar(engine, "SELECT frozen FROM services") in (False, 0)


def test_an_html_file_that_is_not_utf8_is_a_clear_error(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    make_contacts(engine, 1)
    html = tmp_path / "body.html"
    html.write_bytes(b"<p>\xff\xfe</p>")
    refused(["task", "create", "t", "--subject", "s", "--html", str(html)], "is not UTF-8 text")


@pytest.mark.parametrize(
    "sender",
    [
        "",
        "news",
        "news@",
        "news@localhost",
        "a@example.com, b@example.com",
        "News <news@example.com>\r\nBcc: x@example.com",
        "x" * 310 + "@example.com",
    ],
)
def test_from_must_be_one_address(env: dict[str, str], engine: Engine, sender: str) -> None:
    make_contacts(engine, 1)
    refused(["task", "create", "t", "--subject", "s", "--text", "x", "--from", sender], "--from")
    assert scalar(engine, "SELECT count(*) FROM tasks") == 0


@pytest.mark.parametrize("sender", ["news@example.com", "News <news@example.com>"])
def test_a_sender_address_is_kept_as_given(
    env: dict[str, str], engine: Engine, sender: str
) -> None:
    make_contacts(engine, 1)
    create("--from", sender)
    assert scalar(engine, "SELECT from_addr FROM tasks") == sender


# -- 3. --services naming nothing, --at in the past ----------------------------------------


@pytest.mark.parametrize("names", [",,,", "", " , "])
def test_services_naming_no_service_is_an_error(
    env: dict[str, str], engine: Engine, names: str
) -> None:
    make_contacts(engine, 1)
    refused(
        ["task", "create", "t", "--subject", "s", "--text", "x", "--services", names],
        "--services names no service",
    )
    assert scalar(engine, "SELECT count(*) FROM tasks") == 0


def test_a_service_named_twice_is_used_once(env: dict[str, str], engine: Engine) -> None:
    make_contacts(engine, 1)
    assert edm(*ADD, "1")[0] == 0
    assert create("--services", "s, s,,s")["services"] == ["s"]


def test_a_start_time_in_the_past_is_refused(env: dict[str, str], engine: Engine) -> None:
    make_contacts(engine, 1)
    refused(
        ["task", "create", "t", "--subject", "s", "--text", "x", "--at", "2020-01-01T00:00Z"],
        "--at 2020-01-01T00:00:00+00:00 is in the past",
    )
    refused(
        ["task", "create", "t", "--subject", "s", "--text", "x", "--at", iso(time.time() - 120)],
        "is in the past",
    )
    assert scalar(engine, "SELECT count(*) FROM tasks") == 0


def test_at_now_starts_at_once(env: dict[str, str], engine: Engine) -> None:
    make_contacts(engine, 1)
    for now in ("now", "NOW"):
        created = create("--at", now)
        assert created["status"] == "running" and created["scheduled_at"] is None


def test_a_start_time_just_past_is_clock_delay_and_starts_at_upkeep(
    env: dict[str, str], engine: Engine
) -> None:
    make_contacts(engine, 1)
    late = time.time() - validation.PAST_TOLERANCE_SECONDS / 2
    created = create("--at", iso(late))
    assert created["status"] == "scheduled"
    run_upkeep(engine)
    assert task_status(engine, created["id"]) == "running"


@pytest.mark.parametrize("at", ["", "soon", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00+01:00"])
def test_an_unreadable_start_time_is_a_clear_error(
    env: dict[str, str], engine: Engine, at: str
) -> None:
    make_contacts(engine, 1)
    refused(["task", "create", "t", "--subject", "s", "--text", "x", "--at", at], "--at")


# -- 4. pausing a scheduled task does not start it ----------------------------------------


def test_pause_and_resume_of_a_scheduled_task_keeps_its_time(
    env: dict[str, str], engine: Engine
) -> None:
    make_contacts(engine, 2)
    at = time.time() + 3600
    created = create("--at", iso(at))
    task_id = str(created["id"])
    assert edm("task", "pause", task_id)[0] == 0
    assert task_status(engine, created["id"]) == "paused"
    assert edm("task", "resume", task_id)[0] == 0

    shown = json.loads(edm("task", "show", task_id, "--json")[1])
    assert shown["status"] == "scheduled"
    assert shown["scheduled_at"] == created["scheduled_at"] and shown["started_at"] is None
    run_upkeep(engine)  # what every running `edm worker` does
    assert task_status(engine, created["id"]) == "scheduled"
    assert scalar(engine, "SELECT count(*) FROM sub_tasks WHERE status <> 'pending'") == 0


def test_a_task_resumed_after_its_time_is_started_by_upkeep(
    env: dict[str, str], engine: Engine
) -> None:
    make_contacts(engine, 1)
    created = create("--at", iso(time.time() + 3600))
    assert edm("task", "pause", str(created["id"]))[0] == 0
    with engine.begin() as conn:  # the hour goes by while it is paused
        conn.execute(text("UPDATE tasks SET scheduled_at = scheduled_at - 7200"))
    run_upkeep(engine)
    assert task_status(engine, created["id"]) == "paused"
    assert edm("task", "resume", str(created["id"]))[0] == 0
    run_upkeep(engine)
    assert task_status(engine, created["id"]) == "running"


def test_a_task_paused_while_running_resumes_running(env: dict[str, str], engine: Engine) -> None:
    make_contacts(engine, 1)
    created = create("--start")
    assert edm("task", "pause", str(created["id"]))[0] == 0
    assert edm("task", "resume", str(created["id"]))[0] == 0
    assert task_status(engine, created["id"]) == "running"


# -- 5. a task with nobody to send to is refused ------------------------------------------


def test_a_task_without_active_contacts_is_refused(env: dict[str, str], engine: Engine) -> None:
    args = ["task", "create", "t", "--subject", "s", "--text", "x", "--start"]
    refused(args, "no active contact to send to: import contacts first")
    make_contacts(engine, 2)
    with engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET status = 'unsubscribed'"))
    refused(args, "no active contact to send to")
    assert scalar(engine, "SELECT count(*) FROM tasks") == 0
    assert scalar(engine, "SELECT count(*) FROM sub_tasks") == 0


def test_starting_a_draft_whose_audience_left_is_refused(
    env: dict[str, str], engine: Engine
) -> None:
    make_contacts(engine, 2)
    created = create()
    with engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET status = 'bounced'"))
    refused(["task", "start", str(created["id"])], "no active contact to send to")
    assert task_status(engine, created["id"]) == "draft"


# -- 6. help for every command and option; the provider list is the registry's ------------


def test_the_provider_help_names_exactly_the_registered_providers(env: dict[str, str]) -> None:
    from edm.cli.services import PROVIDER_NAMES
    from edm.providers.registry import PROVIDERS

    assert sorted(PROVIDER_NAMES) == sorted(PROVIDERS)
    code, out, _ = edm("service", "add", "--help")
    assert code == 0
    assert f"one of: {', '.join(PROVIDER_NAMES)}" in " ".join(out.split())


@pytest.mark.parametrize("group", ["service", "task"])
def test_every_command_and_option_has_help(group: str) -> None:
    import typer.main

    from edm.cli import app

    commands = typer.main.get_command(app).commands[group].commands  # type: ignore[attr-defined]
    assert commands
    for name, command in commands.items():
        assert (command.help or "").strip(), f"{group} {name} has no help"
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert (param.help or "").strip(), f"{group} {name} {param.name} has no help"


def test_the_cli_does_not_import_the_providers_to_answer_help() -> None:
    probe = (
        "import sys, edm.cli; "
        "print(sorted(m for m in ('edm.providers.registry', 'httpx') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stderr


# -- 7. values shown back to the user are text, not console markup -------------------------


def test_names_that_look_like_markup_are_shown_as_they_are(
    env: dict[str, str], engine: Engine
) -> None:
    make_contacts(engine, 1)
    name = "[/x] [bold]"
    code, out, err = edm("service", "add", name, "--provider", "sandbox", "--interval", "1")
    assert code == 0 and name in out, err
    listed = edm("service", "list")[1]
    assert "[/x]" in listed and "[bold]" in listed
    assert edm("service", "freeze", name, "--reason", "[/y]")[0] == 0
    assert "[/y]" in edm("service", "list")[1]
    created = create()
    assert edm("task", "create", name, "--subject", "s", "--text", "x")[0] == 0
    listed = edm("task", "list")[1]
    assert "[/x]" in listed and "[bold]" in listed
    assert name in edm("task", "show", str(created["id"] + 1))[1]


def test_an_error_that_repeats_markup_is_one_line(env: dict[str, str]) -> None:
    refused(["service", "freeze", "[/x]"], "unknown service '[/x]'")
