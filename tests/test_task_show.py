"""What an operator sees of a task: reasons with counts, rate, schedule, a live view."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.contacts import add_contacts
from tests.helpers import Worker, edm, make_contacts, status_counts


def test_show_gives_reasons_with_counts_rate_and_skipped(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(
        engine, "s", "sandbox", 0.0, options={"fail_recipient": "0.3", "seed": "7"}
    )
    make_contacts(engine, 40)
    add_contacts(engine, [{"email": "gone@example.com", "status": "unsubscribed"}])
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    counts = status_counts(engine, task_id)
    assert counts["failed"] > 0 and counts["skipped"] == 1

    code, out, _ = edm("task", "show", str(task_id), "--json")
    shown = json.loads(out)
    reasons = {(r["status"], r["error_class"], r["message"]): r["count"] for r in shown["reasons"]}
    assert reasons[("skipped", None, "contact is unsubscribed")] == 1
    failed = sum(n for (status, klass, _), n in reasons.items() if status == "failed")
    assert failed == counts["failed"]
    assert all(
        klass == "recipient" for (status, klass, _), _n in reasons.items() if status == "failed"
    )
    assert shown["sent_last_minute"] == counts["sent"]

    code, out, _ = edm("task", "show", str(task_id))
    assert code == 0
    assert f"{counts['sent']} sent in the last minute" in out
    assert "contact is unsubscribed" in out and "recipient" in out
    assert f"skipped {counts['skipped']}" in out and f"failed {counts['failed']}" in out


def test_list_and_show_give_the_scheduled_time_and_every_status(
    engine: Engine, env: dict[str, str]
) -> None:
    make_contacts(engine, 3)
    at = time.time() + 3600
    task_id = tasks_mod.create_task(engine, "later", "s", text_body="x", start_at=at)
    with engine.begin() as conn:
        conn.execute(text("UPDATE sub_tasks SET status = 'unknown' WHERE id = 1"))
        conn.execute(text("UPDATE sub_tasks SET status = 'cancelled' WHERE id = 2"))
    stamp = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")
    code, out, _ = edm("task", "list")
    assert code == 0
    assert "scheduled" in out and stamp in out
    assert all(f"{status} 1" in out for status in ("pending", "unknown", "cancelled"))
    code, out, _ = edm("task", "show", str(task_id))
    assert stamp in out and "scheduled" in out


def test_a_task_paused_by_the_engine_says_why(engine: Engine, env: dict[str, str]) -> None:
    make_contacts(engine, 1)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE tasks SET status = 'paused', status_reason = 'paused after 10 failures'")
        )
    code, out, _ = edm("task", "show", str(task_id))
    assert "paused (paused after 10 failures)" in out
    assert edm("task", "resume", str(task_id))[0] == 0
    assert json.loads(edm("task", "show", str(task_id), "--json")[1])["status_reason"] is None


def test_watch_follows_a_task_to_its_end(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    services_mod.add_service(engine, "s", "sandbox", 0.05)
    make_contacts(engine, 20)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x", start=True)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "edm", "task", "show", str(task_id), "--watch"],
        env={**env, "COLUMNS": "120"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker = Worker(env, tmp_path, "--exit-when-idle")
    assert worker.wait(60) == 0
    out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert "completed" in out and "sent 20" in out


def test_task_page_reads_sends_by_service_and_per_minute(engine: Engine) -> None:
    from edm import task_views

    one = services_mod.add_service(engine, "one", "sandbox", 0.0)
    two = services_mod.add_service(engine, "two", "sandbox", 0.0)
    make_contacts(engine, 6)
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x")
    minute = 60 * (int(time.time()) // 60 - 10)
    with engine.begin() as conn:
        for sub_task_id, service_id, sent_at in (
            (1, one, minute + 1),
            (2, one, minute + 59),
            (3, two, minute + 61),
            (4, two, minute - 3600),
        ):
            conn.execute(
                text(
                    "UPDATE sub_tasks SET status = 'sent', service_id = :service, sent_at = :at"
                    " WHERE id = :id"
                ),
                {"service": service_id, "at": sent_at, "id": sub_task_id},
            )
        conn.execute(text("UPDATE sub_tasks SET status = 'failed', service_id = 1 WHERE id = 5"))
        assert task_views.sent_by_service(conn, task_id) == {one: 2, two: 2}
        assert task_views.sent_per_minute(conn, task_id, minute - 60) == [
            (float(minute), 2),
            (float(minute + 60), 1),
        ]


def _shown_state(row: dict) -> str:
    """The shown state's precedence written out again, row by row: the oracle."""
    if row["complained_at"] is not None:
        return "complained"
    if row["unsubscribed_at"] is not None:
        return "unsubscribed"
    if row["bounce_type"] == "hard":
        return "hard_bounced"
    if row["bounce_type"] == "soft" and row["delivered_at"] is None:
        return "soft_bounced"
    for fact, state in (("clicked_at", "clicked"), ("opened_at", "opened")):
        if row[fact] is not None:
            return state
    return "delivered" if row["delivered_at"] is not None else row["status"]


def test_counts_funnel_and_shown_states_from_one_read_agree_with_each_row(
    engine: Engine,
) -> None:
    """Every combination of facts (and none) on rows of several statuses: the counts, the
    funnel and the shown states `task show` gives are those of the rows one by one."""
    import itertools

    from edm.funnels import keeping_funnels
    from edm.task_views import FUNNEL_FACTS, show_task, task_funnel

    facts = ("delivered_at", "opened_at", "clicked_at", "complained_at", "unsubscribed_at")
    combos = [
        (status, dict(zip(facts, present, strict=True)), bounce)
        for status in ("sent", "unknown", "failed", "pending")
        for present in itertools.product((None, 1.0), repeat=len(facts))
        for bounce in (None, "hard", "soft")
    ]
    make_contacts(engine, len(combos))
    task_id = tasks_mod.create_task(engine, "t", "s", text_body="x")
    with engine.begin() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT id FROM sub_tasks ORDER BY id"))]
        rows = []
        with keeping_funnels(conn, ids):  # the kept funnel follows each change
            for sub_task_id, (status, present, bounce) in zip(ids, combos, strict=True):
                row = {"id": sub_task_id, "status": status, "bounce_type": bounce, **present}
                rows.append(row)
                conn.execute(
                    text(
                        "UPDATE sub_tasks SET status = :status, bounce_type = :bounce_type,"
                        " delivered_at = :delivered_at, opened_at = :opened_at,"
                        " clicked_at = :clicked_at, complained_at = :complained_at,"
                        " unsubscribed_at = :unsubscribed_at WHERE id = :id"
                    ),
                    row,
                )
    view = show_task(engine, task_id)

    expected_shown: dict[str, int] = {}
    expected_counts: dict[str, int] = {}
    for row in rows:
        state = _shown_state(row)
        expected_shown[state] = expected_shown.get(state, 0) + 1
        expected_counts[row["status"]] = expected_counts.get(row["status"], 0) + 1
    has = {
        "delivered": lambda r: r["delivered_at"] is not None,
        "opened": lambda r: r["opened_at"] is not None,
        "clicked": lambda r: r["clicked_at"] is not None,
        "hard_bounced": lambda r: r["bounce_type"] == "hard",
        "soft_bounced": lambda r: r["bounce_type"] == "soft",
        "complained": lambda r: r["complained_at"] is not None,
        "unsubscribed": lambda r: r["unsubscribed_at"] is not None,
    }
    assert view.counts == expected_counts
    assert view.funnel == {fact: sum(map(has[fact], rows)) for fact in FUNNEL_FACTS}
    assert view.shown == expected_shown
    # The console reads them apart: the same answers.
    apart = show_task(engine, task_id, tallied=False)
    assert (apart.counts, apart.shown, task_funnel(engine, task_id)) == (
        view.counts,
        {},
        view.funnel,
    )
