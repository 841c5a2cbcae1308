"""`edm demo`: the production pair of services, scaled down 100x, sending a real task.

It runs the same supervisor as `edm worker` (in a thread of this process) and reads
progress back from the database, so what it shows is what the engine really did.

The demo always runs on a database of its own, never on EDM_DATABASE_URL: its sandbox
services deliver nothing, and in a real installation they would take their share of every
later campaign, while its task would go to the real contacts.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy import Engine, inspect, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import Settings
from edm.contacts import add_contacts
from edm.db import open_database
from edm.db.engine import display_url, make_engine
from edm.scheduler.supervisor import Supervisor

# The production pair: one email every 31 s and every 18 s, here 100 times faster.
DEMO_SERVICES = (("glodamarket.store", 0.31), ("glodamarket.fun", 0.18))
# What the demo's sandbox reports back through the webhook, as a real provider would.
EVENTS = (
    "delivered=0.95,open=0.45,click=0.15,hard_bounce=0.02,soft_bounce=0.02,"
    "complaint=0.005,unsubscribe=0.02"
)
# After the last send, how long to wait for the sandbox's late events to arrive.
EVENTS_SETTLE_SECONDS = 1.5
EVENTS_WAIT_MAX_SECONDS = 8.0
EVENTS_SEEN = text("""
    SELECT (SELECT count(*) FROM events)
         + (SELECT count(*) FROM webhook_requests WHERE status IN ('received', 'processing'))""")
# Rows in any of these mean the database belongs to someone: the demo will not write to it.
OWNED_TABLES = ("services", "contacts", "tasks")

PER_SERVICE = text("""
    SELECT service_id, count(*) AS sent, min(sent_at) AS first, max(sent_at) AS last
    FROM sub_tasks WHERE task_id = :task_id AND status = 'sent' GROUP BY service_id""")
STUCK = text("""
    SELECT count(*) FROM sub_tasks
    WHERE task_id = :task_id
      AND (status = 'unknown'
           OR (status IN ('allocated', 'sending') AND lease_expires_at < :now))""")


class DatabaseInUseError(ValueError):
    """The database given to the demo already holds services, contacts or tasks."""


@dataclass
class ServiceProgress:
    name: str
    interval: float
    sent: int = 0
    first: float | None = None
    last: float | None = None

    @property
    def actual_interval(self) -> float | None:
        if self.sent < 2 or self.first is None or self.last is None:
            return None
        return (self.last - self.first) / (self.sent - 1)


def run(
    contact_count: int, console: Console, *, database: str | None = None, keep: bool = False
) -> int:
    """The demo on `database` (refused unless empty), else on a throwaway SQLite file.

    The throwaway directory (database and outbox) is removed at the end unless `keep`.
    """
    if database is not None:
        refuse_if_in_use(database)
    workdir = Path(tempfile.mkdtemp(prefix="edm-demo-"))
    url = database or f"sqlite:///{workdir / 'demo.db'}"
    where = "given with --database" if database else "throwaway"
    console.print(f"demo database ({where}): {display_url(url)}", highlight=False, soft_wrap=True)
    try:
        return run_demo(url, contact_count, console, workdir / "outbox.jsonl")
    finally:
        if keep:
            _say_kept(workdir, None if database else url, console)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def refuse_if_in_use(url: str) -> None:
    """Raise DatabaseInUseError unless `url` is empty of services, contacts and tasks.

    Only reads: a refused database is left exactly as it was, not even migrated.
    """
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            counts = {
                table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in OWNED_TABLES
                if table in present
            }
    finally:
        engine.dispose()
    held = ", ".join(f"{n} {table if n > 1 else table[:-1]}" for table, n in counts.items() if n)
    if held:
        raise DatabaseInUseError(
            f"{display_url(url)} already holds {held}: the demo runs only on an empty database"
        )


def run_demo(url: str, contact_count: int, console: Console, outbox: Path) -> int:
    """Create the services, contacts and task in `url`, send it all, show the outcome."""
    from edm.api.server import serving_in_thread

    engine = open_database(url)
    settings = Settings(database_url=url)
    try:
        # The HTTP app runs too: the sandbox posts its tracking events to it, so the demo
        # shows the whole loop.
        with serving_in_thread(engine, settings) as base_url:
            settings = settings.model_copy(update={"public_url": base_url})
            return _send(engine, settings, contact_count, console, outbox)
    finally:
        engine.dispose()


def _send(
    engine: Engine, settings: Settings, contact_count: int, console: Console, outbox: Path
) -> int:
    service_ids = [
        services_mod.add_service(
            engine,
            name,
            "sandbox",
            interval,
            options={"outbox": str(outbox), "events": EVENTS},
        )
        for name, interval in DEMO_SERVICES
    ]
    add_contacts(
        engine,
        [
            {"email": f"demo{i:05d}@example.com", "name": f"Reader {i}", "fields": {"plan": "demo"}}
            for i in range(contact_count)
        ],
    )
    task_id = tasks_mod.create_task(
        engine,
        "edm demo",
        "Hello {{ name }}",
        text_body="Hi {{ name }}, this is the demo.",
        html="<p>Hi {{ name }}, this is the <b>demo</b>.</p>",
        services=[name for name, _ in DEMO_SERVICES],
        start=True,
    )
    total = tasks_mod.show_task(engine, task_id).total
    console.print(f"task {task_id}: {total} emails over {len(DEMO_SERVICES)} services")

    messages: list[str] = []
    supervisor = Supervisor(engine, settings, exit_when_idle=True, say=messages.append)
    thread = threading.Thread(target=lambda: asyncio.run(supervisor.run()), daemon=True)
    thread.start()
    progress = {
        sid: ServiceProgress(name, interval)
        for sid, (name, interval) in zip(service_ids, DEMO_SERVICES, strict=True)
    }
    try:
        _show_progress(engine, task_id, total, progress, thread, console)
    except KeyboardInterrupt:
        console.print("interrupted: stopping the workers")
    finally:
        supervisor.stop_from_thread()
        thread.join(timeout=15)
    for message in messages:
        console.print(message)
    _wait_for_events(engine)
    return _summary(engine, task_id, progress, console)


def _wait_for_events(engine: Engine) -> None:
    """The sandbox posts events a little after each send: wait until they stop coming."""
    deadline = time.monotonic() + EVENTS_WAIT_MAX_SECONDS
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            seen = int(conn.execute(EVENTS_SEEN).scalar_one())
        if seen != last:
            last, still_since = seen, time.monotonic()
        elif time.monotonic() - still_since >= EVENTS_SETTLE_SECONDS:
            return
        time.sleep(0.2)


def _say_kept(workdir: Path, own_url: str | None, console: Console) -> None:
    if own_url is None:
        console.print(
            f"kept the demo's outbox: {workdir / 'outbox.jsonl'}", highlight=False, soft_wrap=True
        )
        return
    console.print(
        f"kept the demo database in {workdir}; to look at it:\n"
        f"  export EDM_DATABASE_URL={own_url}\n"
        "  edm task list; edm service list",
        highlight=False,
        soft_wrap=True,
    )


def split(count: int, weights: list[float]) -> list[int]:
    """`count` in whole parts in proportion to `weights`, adding up to exactly `count`."""
    exact = [count * w / sum(weights) for w in weights]
    parts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(parts)), key=lambda i: parts[i] - exact[i])
    for i in by_remainder[: count - sum(parts)]:
        parts[i] += 1
    return parts


def _read(engine: Engine, task_id: int, progress: dict[int, ServiceProgress]) -> None:
    with engine.connect() as conn:
        for row in conn.execute(PER_SERVICE, {"task_id": task_id}):
            if row.service_id in progress:
                entry = progress[row.service_id]
                entry.sent, entry.first, entry.last = row.sent, row.first, row.last


def _show_progress(
    engine: Engine,
    task_id: int,
    total: int,
    progress: dict[int, ServiceProgress],
    thread: threading.Thread,
    console: Console,
) -> None:
    # A service's bar is what it sent plus its share (by pace) of what is left: the bars
    # always add up to the task's, and each ends full.
    rates = [1 / p.interval for p in progress.values()]
    bars = Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[pace]}"),
        console=console,
    )
    overall = bars.add_task("task", total=total, pace="")
    rows = {
        sid: bars.add_task(p.name, total=share, pace="")
        for (sid, p), share in zip(progress.items(), split(total, rates), strict=True)
    }
    with Live(bars, console=console, refresh_per_second=8):
        while True:
            view = tasks_mod.show_task(engine, task_id)  # first: once it says done, all is read
            _read(engine, task_id, progress)
            sent = sum(p.sent for p in progress.values())
            counts = ", ".join(f"{k} {v}" for k, v in sorted(view.counts.items()))
            bars.update(overall, completed=sent, pace=counts)
            shares = split(max(total - sent, 0), rates)
            for (sid, p), share in zip(progress.items(), shares, strict=True):
                actual = p.actual_interval
                pace = f"every {actual:.3f}s (set {p.interval}s)" if actual else "starting"
                bars.update(rows[sid], completed=p.sent, total=p.sent + share, pace=pace)
            if view.status != "running" or not thread.is_alive():
                break
            time.sleep(0.25)
    if not console.is_terminal:
        console.line()  # piped, the last frame of the bars ends without a line break


def _summary(
    engine: Engine, task_id: int, progress: dict[int, ServiceProgress], console: Console
) -> int:
    _read(engine, task_id, progress)
    view = tasks_mod.show_task(engine, task_id)
    with engine.connect() as conn:
        stuck = conn.execute(STUCK, {"task_id": task_id, "now": time.time()}).scalar_one()
    table = Table("service", "sent", "configured interval", "actual interval", title="summary")
    for p in progress.values():
        actual = p.actual_interval
        table.add_row(
            p.name, str(p.sent), f"{p.interval:.3f}s", f"{actual:.3f}s" if actual else "-"
        )
    console.print(table)
    console.print(
        f"task {task_id}: {view.status}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(view.counts.items()))
    )
    funnel = ", ".join(
        f"{fact.replace('_', ' ')} {n} ({view.rates[fact]:.0%})" for fact, n in view.funnel.items()
    )
    console.print(f"funnel (of sent): {funnel}", highlight=False, soft_wrap=True)
    console.print(f"{stuck} stuck")
    return 0 if view.status == "completed" and stuck == 0 else 1
