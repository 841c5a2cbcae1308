"""A million contacts: import them, make tasks of them, and read a running task of them.

Usage: `./dev bench audience [--rows N] [--quick] [--db sqlite|postgresql|both]`.

1. Import: `edm contacts import FILE` as a user runs it (a new process), on a fresh
   database, of a generated CSV of N rows (email,name,city) with 1% of the addresses
   named again later in the file in another case (merged onto the earlier row) and 0.1%
   bad lines (rejected). Then the same file again: every contact exists.
2. Create (PostgreSQL): `edm task create` for every contact, then with
   `--lists A --where 'city = "Paris"'` (list A holds every contact; one in eight lives in
   Paris), each timed as a new process.
3. Read (PostgreSQL): the first task is made `running` with 40% of its rows sent over the
   last six hours (three quarters of those delivered, a quarter opened) and 1% failed, with
   their send attempts and applied events (every invariant holds), and the database
   vacuumed and analysed as autovacuum would after the load; then the
   database time of `edm task show` (its counts, funnel, reasons and ETA) and of the
   console's dashboard (running tasks with their ETA, services), the wall time of the
   reads of the console's task page, and the time the console's dashboard and task page
   take to answer over HTTP from an `edm serve` of their own: the median of five readings
   each.

Each figure is printed beside its target. PostgreSQL runs on a database of its own
(`edm_bench_<random>`, dropped afterwards), SQLite on a temporary file.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from databases import Target, add_database_options, fresh_database
from sqlalchemy import Engine, event, text

ROWS = 1_000_000
QUICK_ROWS = 20_000
CITIES = ("Paris", "Oslo", "Rome", "Berlin", "Lyon", "Madrid", "Lisbon", "Vienna")
REPEAT_EVERY = 100  # one row in a hundred names an address of 51 rows before again
BAD_EVERY = 1000  # one in a thousand is not an address
READINGS = 5
# Targets, in seconds: the import and task creation wall time of the command, the reads
# in database time.
IMPORT_TARGET = {"postgresql": 15.0, "sqlite": 30.0}
CREATE_TARGET = 10.0
SHOW_TARGET = 0.3
PAGE_TARGET = 0.2


def edm_command() -> list[str]:
    script = Path(sys.executable).with_name("edm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edm"]


def write_csv(path: Path, rows: int) -> None:
    """N rows; row i names reader i, but every BAD_EVERY-th is not an address and every
    other REPEAT_EVERY-th names in capitals the reader of 51 rows before (never itself a
    repeat or a bad row)."""
    with path.open("w") as out:
        out.write("email,name,city\n")
        for i in range(rows):
            email = f"reader{i}@example.com"
            if i % BAD_EVERY == BAD_EVERY - 1:
                email = f"reader{i}-at-example.com"
            elif i % REPEAT_EVERY == REPEAT_EVERY - 1:
                email = f"READER{i - 51}@EXAMPLE.COM"
            out.write(f"{email},Reader {i},{CITIES[i % len(CITIES)]}\n")


def run(args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Wall seconds of one `edm` command (its exit status checked), and what it printed."""
    started = time.perf_counter()
    done = subprocess.run([*edm_command(), *args], env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode not in ok:
        raise SystemExit(f"edm {' '.join(args)} failed: {done.stderr.strip()}")
    return took, done.stdout.strip()


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "OVER"


def line(label: str, value: float, target: float, unit: str = "s", note: str = "") -> None:
    shown = f"{value * 1000:8.0f} ms" if unit == "ms" else f"{value:8.1f} s "
    wanted = f"{target * 1000:.0f} ms" if unit == "ms" else f"{target:.0f} s"
    print(f"  {label:<52} {shown}  target {wanted:>7}  {verdict(value, target)}{note}")


def bench_import(target: Target, csv: Path, env: dict[str, str]) -> None:
    for label in ("import, new contacts", "import again, all existing"):
        took, out = run(["contacts", "import", str(csv)], env, ok=(0, 1))  # 1: rows rejected
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        line(label, took, IMPORT_TARGET[target.kind], note=f"  (peak RSS {peak:.0f} MiB)")
        print(f"    {out.splitlines()[0] if out else ''}")


def bench_create(engine: Engine, env: dict[str, str]) -> None:
    run(["list", "create", "A"], env)
    fill_list(engine)
    run(["service", "add", "bench", "--provider", "sandbox", "--interval", "0"], env)
    subject, body = "Hello {{ name }}", "Hi {{ name }} of {{ city }}."
    for label, name, audience in (
        ("task create, every contact", "everyone", []),
        (
            'task create, --lists A --where city = "Paris"',
            "parisians",
            ["--lists", "A", "--where", 'city = "Paris"'],
        ),
    ):
        args = ["task", "create", name, "--subject", subject]
        took, out = run([*args, "--text", body, *audience], env)
        line(label, took, CREATE_TARGET)
        print(f"    {out.splitlines()[0]}")


def fill_list(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO list_members (list_id, contact_id, added_at)"
                " SELECT l.id, c.id, 0 FROM contacts c, lists l WHERE l.name = 'A'"
            )
        )


def make_running(engine: Engine) -> None:
    """Task 1 running for six hours: 40% sent (3/4 delivered, 1/4 opened), 1% failed, with
    the send attempts and the applied events behind them; every invariant holds."""
    from edm.health.checks import recount_invariants

    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE tasks SET status = 'running',"
                " started_at = extract(epoch from now()) - 6 * 3600 WHERE id = 1"
            )
        )
        conn.execute(
            text("""
            UPDATE sub_tasks SET status = 'sent', service_id = 1, attempts = 1,
                   provider_message_id = 'm' || id,
                   sent_at = extract(epoch from now()) - 6 * 3600 + (id % 1000000) * 0.0216,
                   finished_at = extract(epoch from now()) - 6 * 3600 + (id % 1000000) * 0.0216,
                   delivered_at = CASE WHEN id % 10 < 3 THEN extract(epoch from now()) END,
                   opened_at = CASE WHEN id % 10 = 0 THEN extract(epoch from now()) END,
                   open_count = CASE WHEN id % 10 = 0 THEN 1 ELSE 0 END
            WHERE task_id = 1 AND status = 'pending' AND id % 10 < 4""")
        )
        conn.execute(
            text("""
            UPDATE sub_tasks SET status = 'failed', service_id = 1, attempts = 1,
                   error_class = 'recipient', last_error = 'mailbox unavailable',
                   finished_at = extract(epoch from now())
            WHERE task_id = 1 AND status = 'pending' AND id % 100 = 45""")
        )
        # What a worker and the webhooks would have left with them: a send attempt per sent
        # row, an applied event per delivery fact. Without them the invariants would not
        # hold, and the repair loop of the server measured below would rewrite the facts.
        conn.execute(
            text("""
            INSERT INTO send_attempts (sub_task_id, service_id, lease_token, started_at,
                                       finished_at, outcome, provider_message_id)
            SELECT id, 1, 'bench', sent_at, sent_at, 'sent', provider_message_id
            FROM sub_tasks WHERE task_id = 1 AND status = 'sent'""")
        )
        for event, column in (("delivered", "delivered_at"), ("opened", "opened_at")):
            conn.execute(
                text(f"""
                INSERT INTO events (provider, dedupe_key, event, occurred_at, status, data,
                                    sub_task_id, matched_by, provider_message_id, created_at,
                                    applied_at)
                SELECT 'sandbox', '{event}-' || id, '{event}', {column}, 'applied', '{{}}', id,
                       'provider_message_id', provider_message_id, {column}, {column}
                FROM sub_tasks WHERE task_id = 1 AND {column} IS NOT NULL""")
            )
        # The funnel the events would have kept (`edm.funnels`), counted once.
        from edm.db.queries import RECOUNT_FUNNELS, query

        for statement in RECOUNT_FUNNELS:
            conn.execute(query(statement, "postgresql", "ids"), {"ids": [1]})
    # Every table, as autovacuum would after such a load: otherwise it may vacuum the
    # million new contacts or list members while the reads below are measured, and take
    # one of the two cores from them.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    with engine.connect() as conn:
        held = recount_invariants(conn)
    if held.status != "ok":
        raise SystemExit(f"the running task breaks an invariant: {held.message}")


def database_seconds(engine: Engine, read: Callable[[], object]) -> float:
    """The median over READINGS of the time spent in the database's cursor by `read`."""
    spent = [0.0]  # the first reading warms caches up and is not counted
    started: dict[int, float] = {}

    def before(conn, cursor, statement, params, context, many) -> None:  # type: ignore[no-untyped-def]
        started[id(context)] = time.perf_counter()

    def after(conn, cursor, statement, params, context, many) -> None:  # type: ignore[no-untyped-def]
        spent[-1] += time.perf_counter() - started.pop(id(context))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        read()
        for _ in range(READINGS):
            spent.append(0.0)
            read()
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
    return statistics.median(spent[1:])


def wall_seconds(read: Callable[[], object]) -> float:
    """The median wall time of `read` over READINGS, after one reading that warms up."""
    read()
    spent = []
    for _ in range(READINGS):
        started = time.perf_counter()
        read()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


def bench_reads(engine: Engine, env: dict[str, str]) -> None:
    from edm import task_views
    from edm.config import Settings
    from edm.console.pages import running_tasks
    from edm.console.task_pages import task_page
    from edm.forecast import task_eta
    from edm.health.diagnose import service_reports

    settings = Settings()

    def show() -> None:  # as `edm task show` reads: the ETA takes the counts it read
        view = task_views.show_task(engine, 1)
        task_eta(engine, 1, counts=view.counts)

    def dashboard() -> None:
        running_tasks(engine, settings)
        service_reports(engine, settings)

    line(
        "task show (counts, funnel, reasons, ETA): db time",
        database_seconds(engine, show),
        SHOW_TARGET,
        "ms",
    )
    line(
        "dashboard (running tasks, ETA, services): db time",
        database_seconds(engine, dashboard),
        PAGE_TARGET,
        "ms",
    )
    line(
        "task page reads, side by side: wall time",
        wall_seconds(lambda: task_page(engine, settings, 1)),
        PAGE_TARGET,
        "ms",
    )
    for label, seconds in answer_seconds(engine, env, ["/", "/console/tasks/1"]).items():
        line(label, seconds, PAGE_TARGET, "ms")


def answer_seconds(engine: Engine, env: dict[str, str], paths: list[str]) -> dict[str, float]:
    """The console's answers as a browser gets them: `edm serve --no-worker` in a process
    of its own, signed in with a read token, each page fetched over loopback."""
    import re
    import socket

    import httpx

    from edm.api_tokens import create_token

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [*edm_command(), "serve", "--no-worker", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    answers: dict[str, float] = {}
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(300):
                try:
                    if client.get("/health/live").is_success:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            form = client.get("/login").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form)
            token = create_token(engine, f"bench-{time.time_ns()}", "read")
            client.post("/login", data={"token": token, "csrf": csrf[1] if csrf else ""})
            for path in paths:

                def fetch(path: str = path) -> None:
                    answer = client.get(path)
                    if answer.status_code != 200:
                        raise SystemExit(f"GET {path}: {answer.status_code}")

                answers[f"console GET {path}: answer time"] = wall_seconds(fetch)
    finally:
        server.terminate()
        server.wait(10)
    return answers


def measure(target: Target, rows: int, workdir: Path) -> None:
    from edm.db import open_database

    env = {**os.environ, "EDM_DATABASE_URL": target.url}
    csv = workdir / "contacts.csv"
    if not csv.exists():
        write_csv(csv, rows)
    print(f"\n{target.kind}: {rows:,} rows, {csv.stat().st_size / 1e6:.0f} MB")
    run(["db", "upgrade"], env)
    bench_import(target, csv, env)
    if target.kind != "postgresql":
        return
    engine = open_database(target.url)
    try:
        bench_create(engine, env)
        make_running(engine)
        bench_reads(engine, env)
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows")
    add_database_options(parser)
    options = parser.parse_args()
    rows = QUICK_ROWS if options.quick else options.rows
    kinds = ("postgresql", "sqlite") if options.db == "both" else (options.db,)
    workdir = Path(tempfile.mkdtemp(prefix="edm-audience-"))
    try:
        for kind in kinds:
            with fresh_database(kind, options.pg_url) as target:
                measure(target, rows, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
