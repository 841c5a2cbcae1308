"""Templates are checked before anything is spent, and a template that fails at send time
costs neither pace nor quota and pauses its task before it burns the audience."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import get_settings
from edm.contacts import add_contacts
from edm.scheduler.claim import claim
from edm.scheduler.transitions import Refund, Settle, settle_unsent
from tests.helpers import Worker, edm, read_outbox, scalar, status_counts, task_status


def _contacts(engine: Engine, count: int, **fields: str) -> None:
    add_contacts(
        engine,
        [{"email": f"c{i}@example.com", "name": f"C {i}", "fields": fields} for i in range(count)],
    )


def test_a_typo_in_a_field_is_refused_at_create_and_spends_nothing(
    engine: Engine, env: dict[str, str]
) -> None:
    services_mod.add_service(engine, "s", "sandbox", 0.0, daily_quota=10)
    _contacts(engine, 100, city="Oslo", plan="pro")
    code, _, err = edm("task", "create", "t", "--subject", "Hi {{ nmae }}", "--text", "x")
    assert code == 1
    assert "100 contacts lack field `nmae`" in err
    assert "known fields: city, plan" in err
    assert scalar(engine, "SELECT count(*) FROM tasks") == 0
    assert scalar(engine, "SELECT count(*) FROM sub_tasks") == 0
    assert scalar(engine, "SELECT quota_used FROM services") == 0

    # A default, `is defined`, or an explicit --allow-missing-fields lets it through.
    for subject in (
        'Hi {{ nmae | default("you") }}',
        "{% if nmae is defined %}{{ nmae }}{% endif %}",
    ):
        assert edm("task", "create", "t", "--subject", subject, "--text", "x")[0] == 0
    code, _, err = edm(
        "task", "create", "t", "--subject", "{{ nmae }}", "--text", "x", "--allow-missing-fields"
    )
    assert code == 0, err


def test_only_the_contacts_that_lack_a_field_are_counted(
    engine: Engine, env: dict[str, str]
) -> None:
    _contacts(engine, 3, city="Oslo")
    add_contacts(engine, [{"email": "nocity@example.com", "fields": {"plan": "free"}}])
    code, _, err = edm("task", "create", "t", "--subject", "{{ city }}", "--text", "{{ email }}")
    assert code == 1
    assert "1 contact lacks field `city`" in err
    # Suppressed contacts are not the audience.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE contacts SET status = 'unsubscribed' WHERE email = :e"),
            {"e": "nocity@example.com"},
        )
    code, _, err = edm("task", "create", "t", "--subject", "{{ city }}", "--text", "x")
    assert code == 0, err


@pytest.mark.parametrize(
    ("text_template", "message"),
    [
        ("{{ email.__class__ }}", "unsafe"),
        ("{{ city | round }}", "fail for contact"),
        ("{{ city.missing_attribute }}", "fail for contact"),
        ("{% for x in city %}{{ x.y }}{% endfor %}", "fail for contact"),
    ],
)
def test_templates_that_fail_for_a_real_contact_are_refused_at_create(
    engine: Engine, env: dict[str, str], text_template: str, message: str
) -> None:
    _contacts(engine, 2, city="Oslo")
    code, _, err = edm("task", "create", "t", "--subject", "s", "--text", text_template)
    assert code == 1 and message in err, err
    assert "Oslo" not in err and "c0@example.com" not in err  # no contact data in errors
    assert scalar(engine, "SELECT count(*) FROM tasks") == 0


def test_a_template_over_the_size_limit_is_refused(
    engine: Engine, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDM_MAX_TEMPLATE_BYTES", "1000")
    get_settings.cache_clear()
    _contacts(engine, 1)
    html = tmp_path / "big.html"
    html.write_text("<p>" + "é" * 600 + "</p>")  # 600 characters, 1,207 bytes
    code, _, err = edm("task", "create", "t", "--subject", "s", "--html", str(html))
    assert code == 1
    assert "html template is 1,207 bytes; at most 1,000" in err
    html.write_text("<p>" + "e" * 600 + "</p>")
    assert edm("task", "create", "t", "--subject", "s", "--html", str(html))[0] == 0


def test_standard_fields_may_be_empty_other_fields_must_exist(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    services_mod.add_service(engine, "s", "sandbox", 0.0, options={"outbox": str(outbox)})
    add_contacts(engine, [{"email": "anon@example.com", "fields": {"city": ""}}])
    # `name` is standard: empty for a contact without one. `city` exists, though empty.
    task_id = tasks_mod.create_task(
        engine, "t", "Hi {{ name }}!{{ city }}", text_body="x", start=True
    )
    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert status_counts(engine, task_id) == {"sent": 1}
    assert [line["subject"] for line in read_outbox(outbox)] == ["Hi !"]
    with pytest.raises(ValueError, match="1 contact lacks field `plan`"):
        tasks_mod.create_task(engine, "t", "{{ plan }}", text_body="x")


def test_a_template_failing_at_send_time_gives_back_quota_and_pauses_the_task(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "s", "sandbox", 0.01, daily_quota=10)
    _contacts(engine, 30)
    task_id = tasks_mod.create_task(
        engine, "t", "{{ city }}", text_body="x", start=True, allow_missing_fields=True
    )
    worker = Worker(env, tmp_path, "--exit-when-idle")
    assert worker.wait(60) == 0, worker.stderr[-2000:]
    assert status_counts(engine, task_id) == {"failed": 10, "pending": 20}
    assert scalar(engine, "SELECT quota_used FROM services") == 0
    assert task_status(engine, task_id) == "paused"
    reason = str(scalar(engine, "SELECT status_reason FROM tasks"))
    assert "paused after 10 template failures in a row" in reason and "city" in reason
    assert "task 1 paused" in worker.stderr


def test_slots_of_rows_that_were_never_sent_go_back_to_the_pace(engine: Engine) -> None:
    service_id = services_mod.add_service(engine, "s", "sandbox", 10.0, daily_quota=100)
    _contacts(engine, 5)
    tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    taken = claim(engine, service_id, 3, lease_seconds=60, lookahead=25)
    assert len(taken.rows) == 3
    assert scalar(engine, "SELECT quota_used FROM services") == 3
    refund = Refund(service_id, 2, taken.interval, taken.pace_end, taken.quota_day)
    settles = [Settle(row.id, "failed", "template failed", "template") for row in taken.rows[1:]]
    settle_unsent(engine, taken.token, settles, refund)
    assert scalar(engine, "SELECT quota_used FROM services") == 1
    # The next claim books the slot right after the one row that is still to be sent.
    again = claim(engine, service_id, 1, lease_seconds=60, lookahead=25)
    assert again.rows[0].slot_at == pytest.approx(taken.rows[0].slot_at + 10.0)

    # Once a later claim has booked past them, a claim's slots are not given back: two
    # sends never share a slot.
    pace_before = scalar(engine, "SELECT next_send_at FROM services")
    stale = Refund(service_id, 1, 10.0, taken.pace_end, taken.quota_day)
    settle_unsent(engine, taken.token, [Settle(taken.rows[0].id, "skipped", "x")], stale)
    assert scalar(engine, "SELECT next_send_at FROM services") == pace_before


def test_a_workers_rendered_messages_are_bounded_in_bytes(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    body = "<p>" + "x" * 100_000 + "</p>"  # each message: about 200 KB (HTML and its text)
    env = {**env, "EDM_MAX_IN_FLIGHT_BYTES": str(700_000)}
    services_mod.add_service(engine, "s", "sandbox", 0.0, options={"latency": "0.2"})
    _contacts(engine, 30)
    task_id = tasks_mod.create_task(engine, "t", "s", html=body, start=True)
    sending_seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            sending_seen.append(
                int(scalar(engine, "SELECT count(*) FROM sub_tasks WHERE status = 'sending'"))
            )
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert Worker(env, tmp_path, "--exit-when-idle").wait(90) == 0
    finally:
        done.set()
        watcher.join()
    assert status_counts(engine, task_id) == {"sent": 30}
    # 700 KB hold three messages of about 200 KB: never 30 at once, as one claim would be.
    assert 1 <= max(sending_seen) <= 3
