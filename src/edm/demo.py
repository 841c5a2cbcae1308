"""`edm demo`: the production pair of services, scaled down 100x, sending a real task.

It runs the same supervisor as `edm worker` (in a thread of this process) and reads
progress back from the database, so what it shows is what the engine really did.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy import Engine, text

from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import get_settings
from edm.contacts import add_contacts
from edm.db import open_database
from edm.scheduler.supervisor import Supervisor

# The production pair: one email every 31 s and every 18 s, here 100 times faster.
DEMO_SERVICES = (("glodamarket.store", 0.31), ("glodamarket.fun", 0.18))

PER_SERVICE = text("""
    SELECT service_id, count(*) AS sent, min(sent_at) AS first, max(sent_at) AS last
    FROM sub_tasks WHERE task_id = :task_id AND status = 'sent' GROUP BY service_id""")
STUCK = text("""
    SELECT count(*) FROM sub_tasks
    WHERE task_id = :task_id
      AND (status = 'unknown'
           OR (status IN ('allocated', 'sending') AND lease_expires_at < :now))""")


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


def run_demo(contact_count: int, console: Console) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="edm-demo-"))
    if "EDM_DATABASE_URL" not in os.environ:
        url = f"sqlite:///{workdir / 'demo.db'}"
        console.print(f"using a throwaway demo database in {workdir}")
    else:
        url = get_settings().database_url
    engine = open_database(url)
    service_ids = _ensure_services(engine, workdir / "outbox.jsonl")
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
    supervisor = Supervisor(engine, get_settings(), exit_when_idle=True, say=messages.append)
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
    return _summary(engine, task_id, progress, console)


def _ensure_services(engine: Engine, outbox: Path) -> list[int]:
    ids = []
    existing = {v.name: v for v in services_mod.list_services(engine)}
    for name, interval in DEMO_SERVICES:
        if name in existing:
            ids.append(existing[name].id)
            continue
        ids.append(
            services_mod.add_service(
                engine, name, "sandbox", interval, options={"outbox": str(outbox)}
            )
        )
    return ids


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
    rate = {sid: 1 / p.interval for sid, p in progress.items()}
    bars = Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[pace]}"),
        console=console,
    )
    overall = bars.add_task("task", total=total, pace="")
    rows = {
        sid: bars.add_task(p.name, total=round(total * rate[sid] / sum(rate.values())), pace="")
        for sid, p in progress.items()
    }
    with Live(bars, console=console, refresh_per_second=8):
        while True:
            _read(engine, task_id, progress)
            view = tasks_mod.show_task(engine, task_id)
            counts = ", ".join(f"{k} {v}" for k, v in sorted(view.counts.items()))
            bars.update(overall, completed=view.counts.get("sent", 0), pace=counts)
            for sid, p in progress.items():
                actual = p.actual_interval
                pace = f"every {actual:.3f}s (set {p.interval}s)" if actual else "starting"
                bars.update(
                    rows[sid],
                    completed=p.sent,
                    total=max(p.sent, bars.tasks[rows[sid]].total or 0),
                    pace=pace,
                )
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
    console.print(f"{stuck} stuck")
    return 0 if view.status == "completed" and stuck == 0 else 1
