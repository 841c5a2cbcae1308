"""Rendering, the text part, unsubscribe tokens and headers."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.contacts import add_contacts
from edm.messages import (
    TaskTemplates,
    TemplateError,
    html_to_text,
    message_id,
    read_unsubscribe_token,
    tracking_headers,
    unsubscribe_token,
)
from tests.helpers import Worker, read_outbox, status_counts


def test_templates_see_contact_fields_and_the_unsubscribe_url() -> None:
    templates = TaskTemplates(
        "Hi {{ name }}", "<p>{{ city }} <a href='{{ unsubscribe_url }}'>stop</a></p>", None
    )
    rendered = templates.render(
        {"email": "a@x.org", "name": "Ann", "fields": {"city": "Oslo"}},
        {"unsubscribe_url": "https://edm.example/unsubscribe/t"},
    )
    assert rendered.subject == "Hi Ann"
    assert "Oslo" in rendered.html
    assert rendered.text == "Oslo stop (https://edm.example/unsubscribe/t)\n"


def test_html_is_escaped_but_text_is_not() -> None:
    templates = TaskTemplates("{{ name }}", "<b>{{ name }}</b>", "{{ name }}")
    rendered = templates.render({"email": "a@x.org", "name": "Tom & <Jerry>", "fields": {}})
    assert rendered.html == "<b>Tom &amp; &lt;Jerry&gt;</b>"
    assert rendered.text == "Tom & <Jerry>"


def test_the_sandbox_keeps_templates_away_from_python_internals() -> None:
    templates = TaskTemplates("{{ ''.__class__.__mro__[1].__subclasses__() }}", None, "x")
    with pytest.raises(TemplateError):
        templates.render({"email": "a@x.org", "fields": {}})


def test_a_missing_field_is_an_error_not_a_blank() -> None:
    with pytest.raises(TemplateError, match="first_name"):
        TaskTemplates("Hi {{ first_name }}", None, "x").render({"email": "a@x.org"})


def test_html_to_text_keeps_structure_and_links() -> None:
    html = (
        "<html><head><style>p{}</style></head><body><h1>News</h1><p>Read <a "
        "href='https://x.org/a'>this</a>.</p><ul><li>one</li><li>two</li></ul></body>"
    )
    assert html_to_text(html) == "News\n\nRead this (https://x.org/a).\n\n- one\n- two\n"


def test_unsubscribe_tokens_cannot_be_forged_or_altered() -> None:
    token = unsubscribe_token("secret", 12, 34)
    assert read_unsubscribe_token("secret", token) == (12, 34)
    assert read_unsubscribe_token("other", token) is None
    assert read_unsubscribe_token("secret", token.replace("12.", "13.", 1)) is None
    assert read_unsubscribe_token("secret", "garbage") is None


def test_headers_derive_from_the_idempotency_key() -> None:
    headers = tracking_headers(
        idempotency_key="k1",
        from_addr="News <n@shop.example>",
        sub_task_id=5,
        task_id=2,
        unsubscribe="https://e/u/t",
    )
    assert headers == {
        "Message-ID": "<k1@shop.example>",
        "X-EDM-Subtask": "5",
        "X-EDM-Task": "2",
        "List-Unsubscribe": "<https://e/u/t>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert message_id("k1", None) == "<k1@edm.invalid>"


def test_a_template_failing_for_one_contact_fails_only_that_sub_task(
    engine: Engine, env: dict[str, str], tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    services_mod.add_service(engine, "s", "sandbox", 0.0, options={"outbox": str(outbox)})
    add_contacts(
        engine,
        [
            {"email": "a@example.com", "fields": {"city": "Oslo"}},
            {"email": "b@example.com", "fields": {}},
        ],
    )
    task_id = tasks_mod.create_task(
        engine, "t", "From {{ city }}", text_body="x", start=True, allow_missing_fields=True
    )

    assert Worker(env, tmp_path, "--exit-when-idle").wait(60) == 0
    assert status_counts(engine, task_id) == {"sent": 1, "failed": 1}
    with engine.connect() as conn:
        error = conn.execute(text("SELECT last_error FROM sub_tasks WHERE status = 'failed'"))
        assert "city" in error.scalar()
    assert [line["subject"] for line in read_outbox(outbox)] == ["From Oslo"]
