"""A real uvicorn server for API tests: the app on a free loopback port, in a thread.

Requests go over real sockets with httpx, so what is tested is what a provider or a
mail client meets: status codes, headers, bodies, background processing after the answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.api.server import serving_in_thread
from edm.config import Settings
from edm.contacts import add_contacts
from edm.db import open_database
from edm.db.models import Base
from tests.helpers import scalar


@contextmanager
def api_server(engine: Engine, settings: Settings) -> Iterator[httpx.Client]:
    """An httpx client on a running server for `create_app(engine, settings)`."""
    with (
        serving_in_thread(engine, settings) as base_url,
        httpx.Client(base_url=base_url, timeout=10) as client,
    ):
        yield client


def module_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Engine:
    """A database for one test module (its server outlives each test): a SQLite file, or
    the run's PostgreSQL database. `request.param` is "sqlite" or "postgresql"."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'edm.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = open_database(url)
    emptied(engine)
    return engine


def emptied(engine: Engine) -> Engine:
    """Every table emptied but `app_settings`: the running app keeps the installation's
    signing key and sandbox token, as a real one would."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables) if t.name != "app_settings"]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(text(f"DELETE FROM {table}"))
    return engine


def sent_task(engine: Engine, emails: list[str], name: str = "t") -> list[tuple[int, int]]:
    """A running task to `emails`, every sub-task sent: (sub_task_id, contact_id) each."""
    if not scalar(engine, "SELECT count(*) FROM services"):
        services_mod.add_service(engine, "s", "sandbox", 0.0)
    add_contacts(engine, [{"email": email} for email in emails])
    task_id = tasks_mod.create_task(engine, name, "s", text_body="x", start=True)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'sent', sent_at = 1000.0,"
                " service_id = (SELECT min(id) FROM services),"
                " provider_message_id = 'pm-' || id WHERE task_id = :t"
            ),
            {"t": task_id},
        )
        rows = conn.execute(
            text("SELECT id, contact_id FROM sub_tasks WHERE task_id = :t ORDER BY id"),
            {"t": task_id},
        )
        return [(row.id, row.contact_id) for row in rows]
