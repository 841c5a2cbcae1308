"""`edm task preview|test-send|resend|sub-tasks|export`, on both databases: what an operator
sees before a campaign, what it sends as a test, and failed sends sent again."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import Settings, get_settings
from edm.contacts import add_contacts
from edm.db.secrets import signing_key
from edm.health.checks import run_checks
from edm.messages import read_unsubscribe_token
from tests.helpers import Worker, edm, read_outbox, scalar, status_counts, task_status

PUBLIC_URL = "https://edm.example"


@pytest.fixture
def outbox(engine: Engine, env: dict[str, str], tmp_path: Path) -> Path:
    """A sandbox service `box` writing to this file, and four contacts."""
    path = tmp_path / "outbox.jsonl"
    services_mod.add_service(engine, "box", "sandbox", 0.0, options={"outbox": str(path)})
    add_contacts(
        engine,
        [
            {"email": f"c{i}@example.com", "name": f"C{i}", "fields": {"city": city}}
            for i, city in enumerate(["Paris", "Lyon", "Nice", "Lille"])
        ],
    )
    return path


def campaign(engine: Engine, **options: object) -> int:
    return tasks_mod.create_task(
        engine,
        "spring",
        "Hi {{ name }}",
        html='<p>{{ city }}</p><a href="{{ unsubscribe_url }}">leave</a>',
        **options,
    )


def test_preview_renders_what_the_worker_sends(
    engine: Engine, outbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDM_PUBLIC_URL", PUBLIC_URL)
    get_settings.cache_clear()
    task_id = campaign(engine)
    with engine.begin() as conn:  # the next one due is the first pending, not the first row
        conn.execute(text("UPDATE sub_tasks SET status = 'sent' WHERE contact_id = 1"))

    code, out, _ = edm("task", "preview", str(task_id))
    assert code == 0
    assert out.startswith("contact: c1@example.com\nsubject: Hi C1\n")
    assert "--- text ---\nLyon\nleave (https://edm.example/unsubscribe/" in out
    assert '--- html ---\n<p>Lyon</p><a href="https://edm.example/unsubscribe/' in out

    code, out, _ = edm("task", "preview", str(task_id), "--contact", "C2@Example.com", "--json")
    shown = json.loads(out)
    assert shown["contact"] == "c2@example.com" and shown["subject"] == "Hi C2"
    token = shown["html"].split("/unsubscribe/")[1].split('"')[0]
    sub_task = scalar(engine, "SELECT id FROM sub_tasks WHERE contact_id = 3")
    assert read_unsubscribe_token(signing_key(engine), token) == (sub_task, 3)
    assert shown["text"] == f"Nice\nleave ({PUBLIC_URL}/unsubscribe/{token})\n"

    for args, message in (
        (("task", "preview", "99"), "unknown task 99"),
        (("task", "preview", "0"), "unknown task 0"),
        (("task", "preview", str(task_id), "--contact", "x@example.com"), "not a contact"),
        (("task", "preview", str(task_id), "--contact", "nobody"), "not an email address"),
    ):
        code, _, err = edm(*args)
        assert code == 1 and message in err, err


def test_preview_says_when_the_templates_fail_for_the_contact(engine: Engine, outbox: Path) -> None:
    add_contacts(engine, [{"email": "nocity@example.com"}])
    task_id = campaign(engine, allow_missing_fields=True)
    code, _, err = edm("task", "preview", str(task_id), "--contact", "nocity@example.com")
    assert code == 1 and "the templates fail for contact nocity@example.com" in err
    assert "city" in err


def test_a_test_send_goes_to_the_given_address_only(engine: Engine, outbox: Path) -> None:
    task_id = campaign(engine)
    code, out, err = edm(
        "task", "test-send", str(task_id), "--to", "ops@example.com", "--contact", "c2@example.com"
    )
    assert code == 0, err
    assert "box accepted the test message to ops@example.com, rendered for c2@example.com" in out
    (line,) = read_outbox(outbox)
    assert line["to"] == "ops@example.com" and line["subject"] == "[test] Hi C2"
    assert line["sub_task_id"] == 0 and line["task_id"] == 0 and line["accepted"]
    assert line["idempotency_key"].startswith("test-")
    # Nothing of the task moved: a test is not a send.
    assert status_counts(engine, task_id) == {"pending": 4}
    assert scalar(engine, "SELECT count(*) FROM send_attempts") == 0
    assert task_status(engine, task_id) == "draft"

    services_mod.add_service(engine, "bad", "sandbox", 0.0, options={"fail_recipient": "1"})
    code, _, err = edm("task", "test-send", str(task_id), "--to", "a@b.example", "--service", "bad")
    assert code == 1 and "bad answered with a recipient error" in err
    for args, message in (
        (("--to", "not-an-address"), "not an email address to send to"),
        (("--to", "a@b.example", "--service", "nope"), "unknown service 'nope'"),
        (("--to", "a@b.example", "--contact", "x@example.com"), "not a contact"),
    ):
        code, _, err = edm("task", "test-send", str(task_id), *args)
        assert code == 1 and message in err, err
    services_mod.set_frozen(engine, "box", True, "test")
    services_mod.set_frozen(engine, "bad", True, "test")
    code, _, err = edm("task", "test-send", str(task_id), "--to", "a@b.example")
    assert code == 1 and "no enabled, unfrozen service" in err


def test_resend_sends_failed_and_unknown_again_as_new_attempts(
    engine: Engine, env: dict[str, str], outbox: Path, tmp_path: Path
) -> None:
    task_id = campaign(engine, start=True)
    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert task_status(engine, task_id) == "completed"
    ids = [row[0] for row in _rows(engine, "SELECT id FROM sub_tasks ORDER BY id")]
    first_keys = _keys(engine)
    with engine.begin() as conn:
        # Failed by the provider, unknown with a lease token left behind (as the reaper
        # leaves one), and failed for a contact that is invalid since: not resent.
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'failed', error_class = 'request',"
                " last_error = 'refused', attempts = 2, sent_at = NULL WHERE id = :i"
            ),
            {"i": ids[0]},
        )
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'unknown', error_class = 'unknown',"
                " last_error = 'lease ran out', lease_token = 'tok', claimed_by = 'x/1',"
                " pinned_service_id = service_id, sent_at = NULL WHERE id = :i"
            ),
            {"i": ids[1]},
        )
        conn.execute(
            text("UPDATE sub_tasks SET status = 'failed', error_class = 'recipient' WHERE id = :i"),
            {"i": ids[2]},
        )
        conn.execute(
            text(
                "UPDATE contacts SET status = 'invalid', status_reason = 'operator: bounced'"
                " WHERE email = 'c2@example.com'"
            )
        )

    code, _, err = edm("task", "resend", str(task_id), "--status", "sent")
    assert code == 1 and "--status must be among failed, unknown, not 'sent'" in err
    code, out, err = edm("task", "resend", str(task_id))
    assert code == 0 and f"task {task_id}: 2 sub-tasks pending again" in out, err
    resent = _rows(
        engine,
        "SELECT status, attempts, last_error, error_class, lease_token, lease_expires_at,"
        " claimed_by, pinned_service_id, next_attempt_at, sent_at, finished_at,"
        " first_sending_at FROM sub_tasks WHERE id IN (:a, :b) ORDER BY id",
        a=ids[0],
        b=ids[1],
    )
    assert resent == [("pending", 0, None, None, None, None, None, None, 0.0, None, None, None)] * 2
    keys = _keys(engine)
    assert keys[ids[0]] != first_keys[ids[0]] and keys[ids[1]] != first_keys[ids[1]]
    assert keys[ids[2]] == first_keys[ids[2]] and keys[ids[3]] == first_keys[ids[3]]
    assert task_status(engine, task_id) == "running"
    assert scalar(engine, "SELECT completed_at FROM tasks WHERE id = :t", t=task_id) is None

    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert status_counts(engine, task_id) == {"sent": 3, "failed": 1}
    assert task_status(engine, task_id) == "completed"
    for sub_task in ids[:2]:
        lines = [line for line in read_outbox(outbox) if line["sub_task_id"] == sub_task]
        assert [line["idempotency_key"] for line in lines] == [first_keys[sub_task], keys[sub_task]]
        assert all(line["accepted"] for line in lines)
    invariants = next(c for c in run_checks(engine, Settings()) if c.name == "invariants")
    assert invariants.status == "ok", invariants.message

    code, out, _ = edm("task", "resend", str(task_id), "--status", "unknown")
    assert code == 0 and "no unknown sub-task of an active contact" in out
    assert edm("task", "cancel", str(task_id))[0] == 1  # completed: nothing to cancel
    with engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET status = 'cancelled' WHERE id = :t"), {"t": task_id})
    code, _, err = edm("task", "resend", str(task_id))
    assert code == 1 and "is cancelled" in err
    code, _, err = edm("task", "resend", "99")
    assert code == 1 and "unknown task 99" in err


def test_sub_tasks_and_their_export(engine: Engine, outbox: Path, tmp_path: Path) -> None:
    task_id = campaign(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'failed', error_class = 'request',"
                " last_error = 'refused, \"really\"', attempts = 1,"
                " service_id = (SELECT id FROM services) WHERE contact_id = 2"
            )
        )
        conn.execute(
            text("UPDATE sub_tasks SET status = 'sent', sent_at = 0.0 WHERE contact_id = 3")
        )

    code, out, _ = edm("task", "sub-tasks", str(task_id), "--limit", "2")
    assert code == 0 and "c0@example.com" in out and "c1@example.com" in out
    assert "c2@example.com" not in out and "more: --after 2" in out
    code, out, _ = edm("task", "sub-tasks", str(task_id), "--after", "2", "--json")
    rows = json.loads(out)
    assert [(row["email"], row["status"]) for row in rows] == [
        ("c2@example.com", "sent"),
        ("c3@example.com", "pending"),
    ]
    assert rows[0]["sent_at"] == 0.0 and rows[0]["service"] is None and rows[0]["attempts"] == 0
    code, out, _ = edm("task", "sub-tasks", str(task_id), "--status", "failed")
    assert "c1@example.com" in out and "request:" in out and "c0@" not in out
    for args, message in (
        (("--status", "lost"), "--status must be among pending"),
        (("--limit", "0"), "limit must be a whole number from 1 to 10000"),
        (("--after", "-1"), "after must be a whole number from 0"),
    ):
        code, _, err = edm("task", "sub-tasks", str(task_id), *args)
        assert code == 1 and message in err, err

    code, out, _ = edm("task", "export", str(task_id))
    exported = list(csv.DictReader(io.StringIO(out)))
    assert [row["email"] for row in exported] == [f"c{i}@example.com" for i in range(4)]
    assert exported[1]["last_error"] == 'refused, "really"' and exported[1]["service"] == "box"
    assert exported[2]["sent_at"] == "1970-01-01T00:00:00+00:00" and exported[0]["sent_at"] == ""
    target = tmp_path / "out.csv"
    code, out, _ = edm("task", "export", str(task_id), str(target), "--status", "failed,sent")
    assert code == 0 and f"2 sub-tasks of task {task_id} written to {target}" in out
    chosen = list(csv.DictReader(target.open(encoding="utf-8", newline="")))
    assert [(row["email"], row["status"]) for row in chosen] == [
        ("c1@example.com", "failed"),
        ("c2@example.com", "sent"),
    ]
    missing = tmp_path / "never.csv"
    code, _, err = edm("task", "export", "99", str(missing))
    assert code == 1 and "unknown task 99" in err and not missing.exists()
    code, _, err = edm("task", "export", str(task_id), "--status", "lost")
    assert code == 1 and "--status must be among" in err


def _rows(engine: Engine, sql: str, **params: object) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(sql), params)]


def _keys(engine: Engine) -> dict[int, str]:
    return dict(_rows(engine, "SELECT id, idempotency_key FROM sub_tasks"))
