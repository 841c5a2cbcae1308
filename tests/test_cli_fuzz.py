"""Arbitrary numbers and strings through the service and task commands.

Whatever comes in, a command exits 0, or 1 with one line on stderr, or 2 with typer's
own usage box; nothing but SystemExit escapes, no traceback is printed, and every row
left behind is one the worker can use. Runs on SQLite and PostgreSQL; replay a failure
with the seed Hypothesis prints.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterator
from datetime import datetime

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from edm import validation
from edm.cli import app
from edm.db import open_database
from edm.db.models import TASK_STATUSES
from tests.helpers import make_contacts

runner = CliRunner()
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
HUGE = "9" * 40
LABEL_FORBIDDEN = {"Cc", "Cs", "Zl", "Zp"}

chars = st.characters()
wild_texts = st.one_of(
    st.text(chars, max_size=12),
    st.text(chars, min_size=195, max_size=260),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\n", "\udcff", "x" * 201]),
)
wild_numbers = st.one_of(
    st.floats().map(repr),
    st.integers().map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "-0.0", "86400.0001", "3000000000", HUGE]),
    st.text(chars, max_size=8),
)
# Plausible values most of the time (a branch repeated is drawn more often), so that
# commands also succeed and store rows.
words = st.from_regex(r"[a-z][a-z0-9 ._-]{0,15}", fullmatch=True)
texts = st.one_of(words, words, words, wild_texts)
seconds = st.one_of(*[st.floats(min_value=0, max_value=100_000).map(repr)] * 2, wild_numbers)
counts = st.one_of(*[st.integers(min_value=-10, max_value=10**10).map(str)] * 2, wild_numbers)
ids = st.one_of(st.integers(min_value=1, max_value=60).map(str), wild_numbers)
senders = st.one_of(
    st.sampled_from(["news@example.com", "News <news@example.com>", "a@b", "a@b.c,d@e.f"]),
    wild_texts,
)
times = st.one_of(
    st.datetimes(min_value=datetime(2030, 1, 1)).map(lambda d: d.isoformat()),
    st.sampled_from(["now", "", "2020-01-01T00:00Z", "2999-01-01T00:00Z", "9999-12-31T23:59Z"]),
    st.datetimes().map(lambda d: d.isoformat()),
    wild_texts,
)


def run(*args: str) -> int:
    """One in-process command; the invariants of its output hold whatever it was given."""
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args!r} raised {result.exception!r}"
    )
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout, f"{args!r}: {err}"
    if result.exit_code == 1:
        assert len(err.strip().splitlines()) == 1, f"{args!r} printed more than one line: {err}"
    else:
        assert result.exit_code in (0, 2), f"{args!r} exited {result.exit_code}: {err}"
    return result.exit_code


@pytest.fixture
def db(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """One engine for every command of the run (each would otherwise open its own), and
    contacts to send to so that creates can succeed."""
    engine = open_database(env["EDM_DATABASE_URL"])
    monkeypatch.setattr("edm.db.open_database", lambda *_, **__: engine)
    make_contacts(engine, 2)
    assert run("service", "add", "s", "--provider", "sandbox", "--interval", "0") == 0
    yield engine
    engine.dispose()


def is_label(value: str) -> bool:
    return (
        0 < len(value) <= validation.NAME_LENGTH
        and value == value.strip()
        and not any(unicodedata.category(c) in LABEL_FORBIDDEN for c in value)
    )


def check_services(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT name, interval_seconds, daily_quota, options, frozen_reason FROM services")
        ).all()
    for row in rows:
        assert is_label(row.name), row
        assert row.interval_seconds is not None and math.isfinite(row.interval_seconds), row
        assert 0 <= row.interval_seconds <= validation.MAX_INTERVAL_SECONDS, row
        assert row.daily_quota is None or 0 <= row.daily_quota <= validation.INT32_MAX, row
        options = json.loads(row.options) if isinstance(row.options, str) else row.options
        for key, value in options.items():
            assert is_label(key) and "\x00" not in value, row
        assert "\x00" not in (row.frozen_reason or ""), row


def check_tasks(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT t.*, (SELECT count(*) FROM sub_tasks s WHERE s.task_id = t.id) AS n "
                "FROM tasks t"
            )
        ).all()
    for row in rows:
        assert is_label(row.name), row
        assert validation.INT32_MIN <= row.priority <= validation.INT32_MAX, row
        assert row.status in TASK_STATUSES, row
        assert row.n > 0, row  # an empty audience is refused
        if row.from_addr is not None:
            assert validation.sender(row.from_addr, "from", error=ValueError) == row.from_addr
        for part in (row.subject, row.html or "", row.text_body or ""):
            assert "\x00" not in part, row
        if row.status == "scheduled":
            assert row.scheduled_at is not None and math.isfinite(row.scheduled_at), row


@FUZZ
@given(
    name=texts,
    interval=seconds,
    quota=counts,
    key=st.one_of(st.sampled_from(["seed", "fail_transient"]), wild_texts),
    value=texts,
    reason=texts,
    new=seconds,
)
@example(name="nan", interval="nan", quota="1", key="seed", value="1", reason="r", new="inf")
@example(name="inf", interval="inf", quota="0", key="", value="", reason="", new="-inf")
@example(name="b", interval="-inf", quota="-1", key="\x00", value="1", reason="\x00", new="1")
@example(name="c", interval="1e308", quota=HUGE, key="seed", value="\x00", reason="", new="0")
@example(name="d", interval="-0.0", quota="3000000000", key="s", value="", reason="x", new="-0")
@example(name="e", interval="86400.0001", quota="2147483647", key="", value="", reason="", new="1")
@example(name="", interval="1", quota="1", key="seed", value="1", reason="", new="86400")
@example(name="\x00", interval="1", quota="1", key="seed", value="1", reason="", new="1")
@example(
    name="x" * 5000,
    interval="1",
    quota="1",
    key="x" * 5000,
    value="x" * 5000,
    reason="x" * 5000,
    new="1",
)
def test_service_commands_take_anything(
    db: Engine, name: str, interval: str, quota: str, key: str, value: str, reason: str, new: str
) -> None:
    run("service", "add", name, "--provider", "sandbox", "--interval", interval)
    run(
        "service",
        "add",
        name + "2",
        "--provider",
        "sandbox",
        "--interval",
        interval,
        "--daily-quota",
        quota,
        "--option",
        f"{key}={value}",
    )
    run("service", "update", name, "--interval", new, "--daily-quota", quota)
    run("service", "update", "s", "--interval", new, "--option", f"{key}={value}")
    run("service", "freeze", name, "--reason", reason)
    run("service", "unfreeze", name)
    assert run("service", "list") == 0
    check_services(db)


@FUZZ
@given(
    name=texts,
    subject=texts,
    body=texts,
    sender=senders,
    priority=counts,
    services=texts,
    at=times,
    task_id=ids,
)
@example(
    name="t",
    subject="s",
    body="x",
    sender="news@example.com",
    priority="3000000000",
    services=",,,",
    at="now",
    task_id=HUGE,
)
@example(
    name="",
    subject="\x00",
    body="\x00",
    sender="\x00",
    priority="-1",
    services="s,s",
    at="2020-01-01T00:00Z",
    task_id="-1",
)
@example(
    name="x" * 5000,
    subject="x" * 5000,
    body="",
    sender="x" * 5000,
    priority=HUGE,
    services="",
    at="nan",
    task_id="0",
)
@example(
    name="\x00",
    subject="s",
    body="x",
    sender="",
    priority="-0",
    services="s",
    at="9999-12-31T23:59:59-01:00",
    task_id="1",
)
@example(
    name="nan",
    subject="inf",
    body="-inf",
    sender="1e308",
    priority="86400.0001",
    services="nope",
    at="2999-01-01T00:00Z",
    task_id="1e308",
)
def test_task_commands_take_anything(
    db: Engine,
    name: str,
    subject: str,
    body: str,
    sender: str,
    priority: str,
    services: str,
    at: str,
    task_id: str,
) -> None:
    base = ("task", "create", name, "--subject", subject, "--text", body, "--priority", priority)
    run(*base, "--from", sender, "--services", services)
    run(*base, "--at", at)
    run("task", "create", name, "--subject", "s", "--text", "x", "--at", at, "--json")
    for command in ("show", "pause", "resume", "start", "cancel"):
        run("task", command, task_id)
    assert run("task", "list") == 0
    check_tasks(db)
