"""Campaigns through the real providers: SMTP to a loopback aiosmtpd, EngageLab to its fake."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, text
from typer.testing import CliRunner

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.cli import app
from edm.contacts import add_contacts
from edm.messages import read_unsubscribe_token
from tests.fake_engagelab import FakeEngageLab
from tests.fake_engagelab import engagelab as engagelab  # noqa: F401 - the fixture
from tests.helpers import Worker, make_contacts, sent_by_service, status_counts, task_status
from tests.smtp_server import SMTPTestServer
from tests.smtp_server import smtp_server as smtp_server  # noqa: F401 - the fixture


def smtp_options(server: SMTPTestServer) -> dict[str, str]:
    return {
        "host": server.host,
        "port": str(server.port),
        "security": "none",
        "from": "News <news@shop.example>",
    }


def test_smtp_campaign_is_personalised_and_carries_unsubscribe_headers(
    engine: Engine, env: dict[str, str], tmp_path: Path, smtp_server: SMTPTestServer
) -> None:
    services_mod.add_service(engine, "relay", "smtp", 0.0, options=smtp_options(smtp_server))
    add_contacts(
        engine,
        [
            {"email": "ann@example.com", "name": "Ann", "fields": {"city": "Oslo"}},
            {"email": "bob@example.com", "name": "Bob", "fields": {"city": "Rome"}},
            {"email": "gone@example.com", "name": "Gone", "status": "unsubscribed"},
        ],
    )
    task_id = tasks_mod.create_task(
        engine,
        "t",
        "Hello {{ name }}",
        html="<p>News for {{ city }}. <a href='{{ unsubscribe_url }}'>Unsubscribe</a></p>",
        start=True,
    )
    worker = Worker({**env, "EDM_PUBLIC_URL": "https://edm.example"}, tmp_path, "--exit-when-idle")
    assert worker.wait(60) == 0, worker.stderr[-2000:]
    assert status_counts(engine, task_id) == {"sent": 2, "skipped": 1}

    received = {m.rcpt_tos[0]: m.message for m in smtp_server.messages}
    assert set(received) == {"ann@example.com", "bob@example.com"}
    ann = received["ann@example.com"]
    assert ann["Subject"] == "Hello Ann"
    assert ann.get_content_type() == "multipart/alternative"
    text_part = ann.get_body(("plain",)).get_content()
    html_part = ann.get_body(("html",)).get_content()
    assert "News for Oslo" in html_part and "News for Oslo" in text_part
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT s.id, s.contact_id, s.idempotency_key, s.provider_message_id"
                " FROM sub_tasks s JOIN contacts c ON c.id = s.contact_id"
                " WHERE c.email = 'ann@example.com'"
            )
        ).one()
        secret = conn.execute(
            text("SELECT value FROM app_settings WHERE key = 'secret_key'")
        ).scalar()
    assert ann["Message-ID"] == f"<{row.idempotency_key}@shop.example>" == row.provider_message_id
    assert ann["X-EDM-Subtask"] == str(row.id) and ann["X-EDM-Task"] == str(task_id)
    assert ann["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = ann["List-Unsubscribe"].strip("<>")
    assert link.startswith("https://edm.example/unsubscribe/") and link in html_part
    assert read_unsubscribe_token(secret, link.rsplit("/", 1)[1]) == (row.id, row.contact_id)


def test_campaign_over_engagelab_and_smtp_splits_by_pace(
    engine: Engine,
    env: dict[str, str],
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    engagelab: FakeEngageLab,
) -> None:
    services_mod.add_service(
        engine,
        "engagelab",
        "engagelab",
        0.05,
        options={**engagelab.options, "from": "news@shop.example"},
    )
    services_mod.add_service(engine, "smtp", "smtp", 0.1, options=smtp_options(smtp_server))
    make_contacts(engine, 90)
    task_id = tasks_mod.create_task(engine, "t", "Hi {{ name }}", text_body="x", start=True)

    worker = Worker(env, tmp_path, "--exit-when-idle")
    assert worker.wait(60) == 0, worker.stderr[-2000:]
    assert status_counts(engine, task_id) == {"sent": 90}
    split = sent_by_service(engine, task_id)
    assert abs(split["engagelab"] - 60) <= 8 and abs(split["smtp"] - 30) <= 8, split
    assert len(engagelab.accepted) == split["engagelab"]
    assert len(smtp_server.messages) == split["smtp"]
    with engine.connect() as conn:
        ids = (
            conn.execute(
                text(
                    "SELECT st.provider_message_id FROM sub_tasks st JOIN services s"
                    " ON s.id = st.service_id WHERE s.name = 'engagelab'"
                )
            )
            .scalars()
            .all()
        )
    assert sorted(ids) == sorted(a.email_ids[0] for a in engagelab.accepted)


def test_engagelab_401_freezes_it_while_smtp_finishes(
    engine: Engine,
    env: dict[str, str],
    tmp_path: Path,
    smtp_server: SMTPTestServer,
    engagelab: FakeEngageLab,
) -> None:
    services_mod.add_service(
        engine,
        "engagelab",
        "engagelab",
        0.02,
        options={**engagelab.options, "api_key": "wrong", "from": "news@shop.example"},
    )
    services_mod.add_service(engine, "smtp", "smtp", 0.02, options=smtp_options(smtp_server))
    make_contacts(engine, 40)
    task_id = tasks_mod.create_task(engine, "t", "Hi", text_body="x", start=True)

    worker = Worker(env, tmp_path, "--exit-when-idle")
    assert worker.wait(60) == 0, worker.stderr[-2000:]
    with engine.connect() as conn:
        errors = conn.execute(text("SELECT last_error FROM sub_tasks WHERE status <> 'sent'"))
        errors = errors.scalars().all()
    assert status_counts(engine, task_id) == {"sent": 40}, errors
    assert sent_by_service(engine, task_id) == {"smtp": 40}
    frozen = {v.name: v for v in services_mod.list_services(engine)}["engagelab"]
    assert frozen.frozen and "401" in frozen.frozen_reason
    assert task_status(engine, task_id) == "completed"


def test_service_test_reports_the_provider_answer(
    env: dict[str, str],
    engine: Engine,
    smtp_server: SMTPTestServer,
    engagelab: FakeEngageLab,
) -> None:
    services_mod.add_service(engine, "relay", "smtp", 1, options=smtp_options(smtp_server))
    services_mod.add_service(
        engine,
        "el-bad",
        "engagelab",
        1,
        options={**engagelab.options, "api_key": "nope", "from": "a@b.cd"},
    )
    runner = CliRunner()
    ok = runner.invoke(app, ["service", "test", "relay", "--to", "me@example.com"])
    assert ok.exit_code == 0 and "relay accepted the message" in ok.stdout
    assert smtp_server.messages[0].rcpt_tos == ["me@example.com"]
    bad = runner.invoke(app, ["service", "test", "el-bad", "--to", "me@example.com"])
    assert bad.exit_code == 1
    assert "service error" in bad.stderr and "401" in bad.stderr
