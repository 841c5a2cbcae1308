"""The `edm` command line: thin wrappers over the domain modules.

Every failure the user can cause ends in one line on stderr and a non-zero exit, never
a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from edm import contacts as contacts_mod
from edm import services as services_mod
from edm import tasks as tasks_mod
from edm.config import get_settings
from edm.db import open_database
from edm.db.engine import DatabaseURLError
from edm.providers.base import ProviderError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="edm: a self-hosted email-marketing delivery engine.",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
service_app = typer.Typer(no_args_is_help=True, help="Sending services.")
contacts_app = typer.Typer(no_args_is_help=True, help="Contacts.")
task_app = typer.Typer(no_args_is_help=True, help="Campaign tasks.")
app.add_typer(db_app, name="db")
app.add_typer(service_app, name="service")
app.add_typer(contacts_app, name="contacts")
app.add_typer(task_app, name="task")

out = Console()
err = Console(stderr=True)

USER_ERRORS = (
    DatabaseURLError,
    services_mod.ServiceInputError,
    tasks_mod.TaskInputError,
    contacts_mod.ImportError_,
    ValueError,
)
SECRET_WORDS = ("key", "password", "secret", "token")


def fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc))
        except OperationalError as exc:
            fail(f"database unavailable: {str(exc.orig).strip().splitlines()[0]}")

    return wrapper


def engine() -> Engine:
    try:
        return open_database()
    except OperationalError as exc:
        fail(f"cannot open the database: {str(exc.orig).strip().splitlines()[0]}")
        raise  # unreachable


def parse_time(value: str) -> float:
    """An ISO 8601 time as epoch seconds; without a zone it is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise tasks_mod.TaskInputError(
            f"--at must be an ISO 8601 time such as 2026-12-01T09:00Z, not {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def masked(options: dict) -> dict:
    return {
        k: ("***" if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in options.items()
    }


# -- db -----
@db_app.command("upgrade")
@handles_errors
def db_upgrade() -> None:
    """Apply the schema migrations."""
    engine()
    out.print("database is up to date")


# -- services -----
@service_app.command("add")
@handles_errors
def service_add(
    name: str,
    provider: Annotated[str, typer.Option(help="sandbox (more providers come later)")],
    interval: Annotated[float, typer.Option(help="seconds between two sends; 0: no pace")],
    daily_quota: Annotated[int | None, typer.Option(help="sends per UTC day")] = None,
    option: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for the provider")] = None,
) -> None:
    """Add a sending service; running workers pick it up within seconds."""
    options = services_mod.parse_options(option or [])
    service_id = services_mod.add_service(engine(), name, provider, interval, daily_quota, options)
    out.print(f"service {name} added (id {service_id})")


@service_app.command("update")
@handles_errors
def service_update(
    name: str,
    interval: Annotated[float | None, typer.Option(help="seconds between two sends")] = None,
    daily_quota: Annotated[int | None, typer.Option(help="sends per UTC day")] = None,
    option: Annotated[list[str] | None, typer.Option(help="KEY=VALUE to set")] = None,
) -> None:
    """Change a service's pace, quota or options; running workers follow without a restart."""
    options = services_mod.parse_options(option or [])
    services_mod.update_service(
        engine(), name, interval=interval, daily_quota=daily_quota, options=options
    )
    out.print(f"service {name} updated")


@service_app.command("test")
@handles_errors
def service_test(
    name: str, to: Annotated[str, typer.Option(help="where to send the test message")]
) -> None:
    """Send one real message through a service and show the provider's answer."""
    try:
        result = services_mod.send_test_message(engine(), name, to, get_settings())
    except ProviderError as exc:
        code = f" (code {exc.code})" if exc.code else ""
        fail(f"{name} answered with a {exc.error_class} error{code}: {exc}")
        return
    note = " (a repeat of an earlier message)" if result.duplicate else ""
    out.print(f"{name} accepted the message{note}: {result.provider_message_id}")


@service_app.command("list")
@handles_errors
def service_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Services with their pace, quota, state and live workers."""
    views = services_mod.list_services(engine())
    if as_json:
        print_json([{**vars(v), "options": masked(v.options)} for v in views])
        return
    table = Table(
        "id", "name", "provider", "interval", "quota today", "state", "workers", "last error"
    )
    for v in views:
        state = (
            "disabled"
            if not v.enabled
            else ("frozen: " + (v.frozen_reason or "") if v.frozen else "active")
        )
        quota = (
            f"{v.quota_used_today}/{v.daily_quota}"
            if v.daily_quota is not None
            else (f"{v.quota_used_today}")
        )
        table.add_row(
            str(v.id),
            v.name,
            v.provider,
            f"{v.interval_seconds:g}s",
            quota,
            state,
            str(v.workers_alive),
            v.last_error or "",
        )
    out.print(table)


@service_app.command("freeze")
@handles_errors
def service_freeze(name: str, reason: Annotated[str | None, typer.Option()] = None) -> None:
    """Stop sending through a service; its work goes to the others."""
    services_mod.set_frozen(engine(), name, True, reason)
    out.print(f"service {name} frozen")


@service_app.command("unfreeze")
@handles_errors
def service_unfreeze(name: str) -> None:
    services_mod.set_frozen(engine(), name, False)
    out.print(f"service {name} unfrozen")


@service_app.command("enable")
@handles_errors
def service_enable(name: str) -> None:
    services_mod.set_enabled(engine(), name, True)
    out.print(f"service {name} enabled")


@service_app.command("disable")
@handles_errors
def service_disable(name: str) -> None:
    services_mod.set_enabled(engine(), name, False)
    out.print(f"service {name} disabled")


# -- contacts -----
@contacts_app.command("import")
@handles_errors
def contacts_import(file: Path) -> None:
    """Import a CSV with a header row; `email` is required, other columns become fields."""
    report = contacts_mod.import_csv(engine(), file)
    out.print(f"imported {report.imported} contacts")
    for line, reason in report.bad_rows:
        err.print(f"line {line}: {reason}", highlight=False)
    if report.bad_rows:
        fail(f"{len(report.bad_rows)} bad row(s) not imported")


# -- tasks -----
@task_app.command("create")
@handles_errors
def task_create(
    name: str,
    subject: Annotated[str, typer.Option(help="subject template")],
    html: Annotated[Path | None, typer.Option(help="HTML template file")] = None,
    text: Annotated[str | None, typer.Option(help="text template")] = None,
    from_addr: Annotated[str | None, typer.Option("--from", help="sender address")] = None,
    services: Annotated[str | None, typer.Option(help="comma-separated service names")] = None,
    priority: Annotated[int, typer.Option(help="higher is sent first")] = 0,
    delivery: Annotated[str, typer.Option(help="at_most_once | at_least_once")] = "at_most_once",
    start: Annotated[bool, typer.Option("--start", help="start sending at once")] = False,
    at: Annotated[
        str | None, typer.Option(help="start at this time (ISO 8601, e.g. 2026-12-01T09:00Z)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a task with one sub-task per contact."""
    html_source = None
    if html is not None:
        try:
            html_source = html.read_text(encoding="utf-8")
        except OSError as exc:
            fail(f"cannot read --html {html}: {exc.strerror}")
    names = [s.strip() for s in services.split(",") if s.strip()] if services else []
    task_id = tasks_mod.create_task(
        engine(),
        name,
        subject,
        html=html_source,
        text_body=text,
        from_addr=from_addr,
        services=names,
        start=start,
        priority=priority,
        delivery_policy=delivery,
        start_at=parse_time(at) if at else None,
    )
    if as_json:
        print_json(tasks_mod.show_task(engine(), task_id).as_json())
    else:
        out.print(f"task {task_id} created" + (" and started" if start else ""))


@task_app.command("list")
@handles_errors
def task_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    views = tasks_mod.list_tasks(engine())
    if as_json:
        print_json([v.as_json() for v in views])
        return
    table = Table("id", "name", "status", "total", "sent", "failed", "pending", "unknown")
    for v in views:
        c = v.counts
        table.add_row(
            str(v.id),
            v.name,
            v.status,
            str(v.total),
            str(c.get("sent", 0)),
            str(c.get("failed", 0)),
            str(c.get("pending", 0)),
            str(c.get("unknown", 0)),
        )
    out.print(table)


@task_app.command("show")
@handles_errors
def task_show(task_id: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    view = tasks_mod.show_task(engine(), task_id)
    if as_json:
        print_json(view.as_json())
        return
    out.print(f"task {view.id} [bold]{view.name}[/bold]: {view.status}, {view.total} sub-tasks")
    for status, n in sorted(view.counts.items()):
        out.print(f"  {status:<10} {n}")


def _task_action(action: Callable[[Engine, int], None], verb: str) -> Callable[[int], None]:
    @handles_errors
    def command(task_id: int) -> None:
        action(engine(), task_id)
        out.print(f"task {task_id} {verb}")

    command.__doc__ = f"Mark a task {verb}."
    return command


task_app.command("start")(_task_action(tasks_mod.start_task, "started"))
task_app.command("pause")(_task_action(tasks_mod.pause_task, "paused"))
task_app.command("resume")(_task_action(tasks_mod.resume_task, "resumed"))
task_app.command("cancel")(_task_action(tasks_mod.cancel_task, "cancelled"))


# -- worker and demo -----
@app.command("worker")
@handles_errors
def worker(
    exit_when_idle: Annotated[
        bool, typer.Option("--exit-when-idle", help="exit 0 once no running task has work left")
    ] = False,
) -> None:
    """Send: one worker per enabled, unfrozen service, until SIGTERM or SIGINT."""
    from edm.scheduler.supervisor import Supervisor

    setup_logging()
    supervisor = Supervisor(
        engine(),
        get_settings(),
        exit_when_idle=exit_when_idle,
        say=lambda message: out.print(message, highlight=False),
    )
    raise typer.Exit(asyncio.run(supervisor.run()))


@app.command("demo")
@handles_errors
def demo(contacts: Annotated[int, typer.Option(min=1, help="contacts to generate")] = 200) -> None:
    """Two sandbox services at the production pair's pace (scaled 100x), live progress."""
    from edm.demo import run_demo

    setup_logging(logging.WARNING)
    raise typer.Exit(run_demo(contacts, out))


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
