"""Dispatch throughput of the real engine against the database's raw ceiling.

One task of N sub-tasks is pushed through K sandbox services (interval 0, no outbox,
no latency) by the real `Supervisor`, on SQLite and on PostgreSQL. Beside it, a
minimal claim -> sending -> sent loop in plain SQL on the DB-API driver, with the
same batch size, the same durable transactions per batch and as many concurrent
loops as there are services, runs on an identical freshly populated database: that
is the ceiling the engine is measured against (the goal is engine >= 80% of it).

Every measured run happens in a fresh child process, so that its peak RSS is its own
and not the high-water mark of everything this process did before.

    uv run python bench/dispatch.py                  # both databases, 20,000 sub-tasks
    uv run python bench/dispatch.py --quick          # smoke run, 2,000 sub-tasks
    uv run python bench/dispatch.py --db sqlite --sizes 20000,40000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import resource
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from databases import Target, fresh_database
from sqlalchemy import text

from edm.db.queries import NOW

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
QUICK_SUBTASKS = 2000
SMTP_SUBTASKS = 5000
TARGET_RATIO = 0.8
LEASE_SECONDS = 30.0
CHILD_TIMEOUT = 120.0  # plus 1s per 50 sub-tasks: a hung run fails instead of waiting
# The bench task's templates: personalised, as a campaign's are.
SUBJECT = "Hello {{ name }}"
TEXT = "Hi {{ name }}, number {{ n }}."
HTML = "<p>Hi {{ name }}, number <b>{{ n }}</b>.</p>"
# Sub-task states that mean "not finished": none may remain once a run is over.
UNFINISHED = ("pending", "allocated", "sending", "unknown")


@dataclass(frozen=True)
class Populated:
    task_id: int
    service_ids: list[int]


@dataclass(frozen=True)
class RunResult:
    seconds: float  # supervisor start (or baseline start) until the last sub-task was sent
    wall_seconds: float  # the whole run, including the engine's own shutdown
    peak_mib: float
    cpu_seconds: float  # this process's CPU time (all threads) over the whole run

    def rate(self, n: int) -> float:
        return n / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Row:
    """One database and task size: the median of its repeats, and the worst peak RSS."""

    db: str
    subtasks: int
    engine: list[RunResult]
    baseline: list[RunResult]

    def rate(self, part: str) -> float:
        return statistics.median(r.rate(self.subtasks) for r in getattr(self, part))

    def cpu_us(self, part: str) -> float:
        """Microseconds of the measured process's CPU per email (median run)."""
        runs = getattr(self, part)
        return statistics.median(r.cpu_seconds for r in runs) / self.subtasks * 1e6

    @property
    def ratio(self) -> float:
        return self.rate("engine") / self.rate("baseline")

    @property
    def peak_mib(self) -> float:
        return max(r.peak_mib for r in self.engine)


def populate(
    target: Target, subtasks: int, services: int, smtp: tuple[str, int] | None = None
) -> Populated:
    """Schema by migration, K services (sandbox, or SMTP to `smtp`), N contacts, one task."""
    from edm.contacts import add_contacts
    from edm.db import open_database
    from edm.services import add_service
    from edm.tasks import create_task

    engine = open_database(target.url)
    try:
        names = [f"bench-{i}" for i in range(services)]
        if smtp:
            options = {
                "host": smtp[0],
                "port": str(smtp[1]),
                "security": "none",
                "from": "bench@bench.example",
            }
            service_ids = [add_service(engine, n, "smtp", 0.0, options=options) for n in names]
        else:
            service_ids = [add_service(engine, name, "sandbox", 0.0) for name in names]
        add_contacts(
            engine,
            [
                {"email": f"r{i:07d}@bench.example", "name": f"Reader {i}", "fields": {"n": i}}
                for i in range(subtasks)
            ],
        )
        task_id = create_task(
            engine,
            "dispatch bench",
            SUBJECT,
            text_body=TEXT,
            html=HTML,
            services=names,
            start=True,
        )
    finally:
        engine.dispose()
    return Populated(task_id, service_ids)


def final_state(target: Target, task_id: int) -> dict[str, Any]:
    """What the database holds after a run: sub-task counts by status, the task, attempts."""
    from edm.db.engine import make_engine

    engine = make_engine(target.url)
    try:
        with engine.connect() as conn:
            counts = {
                row.status: int(row.n)
                for row in conn.execute(
                    text(
                        "SELECT status, count(*) AS n FROM sub_tasks WHERE task_id = :t "
                        "GROUP BY status"
                    ),
                    {"t": task_id},
                )
            }
            task_status = conn.execute(
                text("SELECT status FROM tasks WHERE id = :t"), {"t": task_id}
            ).scalar_one()
            attempts = conn.execute(text("SELECT count(*) FROM send_attempts")).scalar_one()
    finally:
        engine.dispose()
    return {"counts": counts, "task": task_status, "attempts": int(attempts)}


def check(label: str, state: dict[str, Any], subtasks: int) -> list[str]:
    counts = state["counts"]
    problems = []
    if counts.get("sent", 0) != subtasks:
        problems.append(f"{label}: {counts.get('sent', 0)} of {subtasks} sub-tasks sent")
    left = {status: counts[status] for status in UNFINISHED if counts.get(status)}
    if left:
        problems.append(f"{label}: unfinished sub-tasks left: {left}")
    other = {status: n for status, n in counts.items() if status not in ("sent", *UNFINISHED)}
    if other:
        problems.append(f"{label}: unexpected states {other}")
    return problems


# -- the measured parts, each run in a child process --------------------------------------------
def peak_rss_mib() -> float:
    """This process's own peak RSS.

    `ru_maxrss` survives exec on Linux, so a child started from a big parent would report
    the parent's high-water mark; VmHWM belongs to the current address space only.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child_engine(spec: dict[str, Any]) -> dict[str, Any]:
    """The real engine: one Supervisor in this process's main thread, until it goes idle."""
    from edm.config import Settings
    from edm.db.engine import make_engine
    from edm.scheduler.supervisor import Supervisor

    settings = Settings(
        database_url=spec["url"],
        batch_size=spec["batch"],
        maintenance_seconds=0.2,
        idle_poll_seconds=0.05,
        supervisor_seconds=0.5,
    )
    engine = make_engine(spec["url"])
    supervisor = Supervisor(engine, settings, exit_when_idle=True)
    started = time.time()
    clock, cpu = time.perf_counter(), time.process_time()
    asyncio.run(supervisor.run())
    wall, cpu = time.perf_counter() - clock, time.process_time() - cpu
    with engine.connect() as conn:
        last_sent = conn.execute(
            text("SELECT max(sent_at) FROM sub_tasks WHERE task_id = :t"), {"t": spec["task_id"]}
        ).scalar_one()
    engine.dispose()
    seconds = (float(last_sent) - started) if last_sent is not None else wall
    return {
        "seconds": seconds,
        "wall_seconds": wall,
        "peak_mib": peak_rss_mib(),
        "cpu_seconds": cpu,
    }


def child_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """The raw ceiling: one plain-SQL claim/sending/sent loop per service, one thread each."""
    loop = baseline_loop_sqlite if spec["kind"] == "sqlite" else baseline_loop_postgresql
    services: list[int] = spec["service_ids"]
    ready = threading.Barrier(len(services) + 1)
    cpu = time.process_time()
    sent = [0] * len(services)
    errors: list[BaseException] = []

    def run(index: int, service_id: int) -> None:
        try:
            sent[index] = loop(spec, service_id, ready)
        except BaseException as exc:
            errors.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                ready.abort()

    threads = [
        threading.Thread(target=run, args=(i, sid), name=f"baseline-{sid}")
        for i, sid in enumerate(services)
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait()
    clock = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - clock
    cpu = time.process_time() - cpu
    if errors:
        raise errors[0]
    if sum(sent) != spec["n"]:
        raise RuntimeError(f"baseline loops sent {sent}, not {spec['n']} in all")
    return {
        "seconds": seconds,
        "wall_seconds": seconds,
        "peak_mib": peak_rss_mib(),
        "cpu_seconds": cpu,
    }


def _pace(record: tuple, claimed: int, now: float) -> tuple[float, str, int]:
    """Interval-0 GCRA as the engine books it: next_send_at, quota day, quota used."""
    next_send_at, interval, quota_day, quota_used = record
    interval = max(float(interval), 0.0)
    start = max(float(next_send_at), now) if interval > 0 else now
    today = datetime.fromtimestamp(now, UTC).date().isoformat()
    used = int(quota_used) if quota_day == today else 0
    return start + claimed * interval, today, used + claimed


def baseline_loop_postgresql(
    spec: dict[str, Any], service_id: int, ready: threading.Barrier
) -> int:
    now = NOW["postgresql"]
    lock = f"""
        SELECT next_send_at, interval_seconds, quota_day, quota_used, {now}
        FROM services WHERE id = %s FOR UPDATE"""
    claim = """
        UPDATE sub_tasks
        SET status = 'allocated', service_id = %(service)s, lease_token = %(token)s,
            lease_expires_at = %(lease_until)s
        WHERE id = ANY(ARRAY(
            SELECT id FROM sub_tasks
            WHERE status = 'pending' AND task_id = %(task)s AND next_attempt_at <= %(now)s
              AND (pinned_service_id IS NULL OR pinned_service_id = %(service)s)
            ORDER BY id LIMIT %(n)s
            FOR UPDATE SKIP LOCKED))
        RETURNING id, task_id, contact_id, idempotency_key, attempts"""
    advance = """
        UPDATE services SET next_send_at = %s, quota_day = %s, quota_used = %s WHERE id = %s"""
    sending = f"""
        UPDATE sub_tasks
        SET status = 'sending', sending_at = {now}, attempts = attempts + 1,
            lease_expires_at = {now} + %s
        WHERE id = ANY(%s) AND lease_token = %s AND status = 'allocated'
        RETURNING id, attempts"""
    sent = f"""
        UPDATE sub_tasks
        SET status = 'sent', provider_message_id = 'noop-' || id, sent_at = {now},
            finished_at = {now}, lease_expires_at = NULL
        WHERE id = ANY(%s) AND lease_token = %s AND status = 'sending'"""
    total = 0
    with psycopg.connect(spec["dsn"]) as conn:
        ready.wait()
        while True:
            token = uuid.uuid4().hex
            record = conn.execute(lock, (service_id,)).fetchone()
            assert record is not None
            db_now = float(record[4])
            rows = conn.execute(
                claim,
                {
                    "service": service_id,
                    "token": token,
                    "lease_until": db_now + LEASE_SECONDS,
                    "task": spec["task_id"],
                    "now": db_now,
                    "n": spec["batch"],
                },
            ).fetchall()
            if rows:
                conn.execute(advance, (*_pace(record[:4], len(rows), db_now), service_id))
            conn.commit()
            if not rows:
                return total
            ids = [row[0] for row in rows]
            marked = conn.execute(sending, (LEASE_SECONDS, ids, token)).fetchall()
            conn.commit()
            conn.execute(sent, ([row[0] for row in marked], token))
            conn.commit()
            total += len(marked)


def baseline_loop_sqlite(spec: dict[str, Any], service_id: int, ready: threading.Barrier) -> int:
    now = NOW["sqlite"]
    lock = f"""
        SELECT next_send_at, interval_seconds, quota_day, quota_used, {now}
        FROM services WHERE id = ?"""
    claim = """
        UPDATE sub_tasks
        SET status = 'allocated', service_id = :service, lease_token = :token,
            lease_expires_at = :lease_until
        WHERE id IN (
            SELECT id FROM sub_tasks
            WHERE status = 'pending' AND task_id = :task AND next_attempt_at <= :now
              AND (pinned_service_id IS NULL OR pinned_service_id = :service)
            ORDER BY id LIMIT :n)
        RETURNING id, task_id, contact_id, idempotency_key, attempts"""
    advance = """
        UPDATE services SET next_send_at = ?, quota_day = ?, quota_used = ? WHERE id = ?"""

    def sending(count: int) -> str:
        return f"""
        UPDATE sub_tasks
        SET status = 'sending', sending_at = {now}, attempts = attempts + 1,
            lease_expires_at = {now} + ?
        WHERE id IN ({",".join("?" * count)}) AND lease_token = ? AND status = 'allocated'
        RETURNING id, attempts"""

    def sent(count: int) -> str:
        return f"""
        UPDATE sub_tasks
        SET status = 'sent', provider_message_id = 'noop-' || id, sent_at = {now},
            finished_at = {now}, lease_expires_at = NULL
        WHERE id IN ({",".join("?" * count)}) AND lease_token = ? AND status = 'sending'"""

    conn = sqlite3.connect(spec["dsn"], timeout=30, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000", "foreign_keys=ON"):
        conn.execute(f"PRAGMA {pragma}")
    total = 0
    try:
        ready.wait()
        while True:
            token = uuid.uuid4().hex
            conn.execute("BEGIN IMMEDIATE")
            record = conn.execute(lock, (service_id,)).fetchone()
            db_now = float(record[4])
            rows = conn.execute(
                claim,
                {
                    "service": service_id,
                    "token": token,
                    "lease_until": db_now + LEASE_SECONDS,
                    "task": spec["task_id"],
                    "now": db_now,
                    "n": spec["batch"],
                },
            ).fetchall()
            if rows:
                conn.execute(advance, (*_pace(record[:4], len(rows), db_now), service_id))
            conn.execute("COMMIT")
            if not rows:
                return total
            ids = [row[0] for row in rows]
            conn.execute("BEGIN IMMEDIATE")
            marked = conn.execute(sending(len(ids)), (LEASE_SECONDS, *ids, token)).fetchall()
            conn.execute("COMMIT")
            done = [row[0] for row in marked]
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sent(len(done)), (*done, token))
            conn.execute("COMMIT")
            total += len(done)
    finally:
        conn.close()


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "engine": child_engine,
    "baseline": child_baseline,
}


def run_child(part: str, spec: dict[str, Any]) -> RunResult:
    """Run one measured part in a fresh interpreter; its last stdout line is the result."""
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", part, json.dumps(spec)],
            stdout=subprocess.PIPE,
            text=True,
            timeout=CHILD_TIMEOUT + spec["n"] / 50,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{part} run did not finish within {exc.timeout:.0f}s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{part} run failed (exit {done.returncode})")
    result = json.loads(lines[-1])
    return RunResult(
        result["seconds"], result["wall_seconds"], result["peak_mib"], result["cpu_seconds"]
    )


# -- driving -------------------------------------------------------------------------------------
def measure(
    kind: str, part: str, subtasks: int, args: argparse.Namespace
) -> tuple[RunResult | None, list[str]]:
    """Populate a fresh database, run one part on it in a child, check what it left."""
    with fresh_database(kind, args.pg_url) as target:
        setup = time.perf_counter()
        populated = populate(target, subtasks, args.services, args.smtp_server)
        setup = time.perf_counter() - setup
        spec = {
            "kind": kind,
            "url": target.url,
            "dsn": target.dsn,
            "task_id": populated.task_id,
            "service_ids": populated.service_ids,
            "batch": args.batch,
            "n": subtasks,
        }
        try:
            result = run_child(part, spec)
        except RuntimeError as exc:
            print(f"  {part:<8} FAILED: {exc}", flush=True)
            return None, [f"{kind} {part}: {exc}"]
        state = final_state(target, populated.task_id)
    problems = check(f"{kind} {part}", state, subtasks)
    if part == "engine":
        if state["task"] != "completed":
            problems.append(f"{kind} engine: task is {state['task']}, not completed")
        if state["attempts"] != subtasks:
            problems.append(f"{kind} engine: {state['attempts']} send attempts for {subtasks}")
    detail = (
        f"  {part:<8} {result.rate(subtasks):8.0f} sends/s  "
        f"{subtasks} sent in {result.seconds:6.2f}s"
    )
    if part == "engine":
        detail += f" (run {result.wall_seconds:.2f}s incl. idle exit)"
    detail += (
        f"  cpu {result.cpu_seconds:.2f}s of {result.wall_seconds:.2f}s"
        f"  peak {result.peak_mib:.0f} MiB  [setup {setup:.1f}s]"
    )
    print(detail, flush=True)
    return result, problems


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--subtasks", type=int, default=20000, help="sub-tasks in the task")
    parser.add_argument("--sizes", help="several task sizes, e.g. 20000,40000 (overrides N)")
    parser.add_argument("--services", type=int, default=2, help="sending services (K)")
    parser.add_argument("--batch", type=int, default=50, help="claim batch size")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each part (median)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SUBTASKS} sub-tasks")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL admin URL")
    parser.add_argument(
        "--smtp", action="store_true", help="send through SMTP to a local aiosmtpd (engine only)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.smtp_server = None
    if min(args.services, args.batch, args.repeat) < 1:
        parser.error("--services, --batch and --repeat must be at least 1")
    if args.sizes:
        try:
            args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
        except ValueError:
            parser.error(f"--sizes must be numbers separated by commas, not {args.sizes!r}")
    else:
        args.size_list = [QUICK_SUBTASKS if args.quick else args.subtasks]
    if not args.size_list or min(args.size_list) < 1:
        parser.error("task sizes must be at least 1")
    return args


class SMTPSink:
    """A local SMTP server that accepts and counts messages (aiosmtpd, loopback only)."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received += 1
        return "250 2.0.0 accepted"


@contextlib.contextmanager
def local_smtp() -> Iterator[tuple[SMTPSink, int]]:
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = SMTPSink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


def smtp_mode(args: argparse.Namespace, kinds: tuple[str, ...]) -> int:
    """The engine sending through SMTP: messages per second as a local server received them."""
    sizes = args.size_list if (args.sizes or args.quick) else [SMTP_SUBTASKS]
    print(f"dispatch over SMTP: {args.services} smtp services (interval 0) to a local aiosmtpd")
    problems: list[str] = []
    with local_smtp() as (sink, port):
        args.smtp_server = ("127.0.0.1", port)
        print(f"{'db':<11} {'messages':>8}  {'messages/s':>10}  {'peak MiB':>8}")
        for kind in kinds:
            for subtasks in sizes:
                before = sink.received
                result, found = measure(kind, "engine", subtasks, args)
                problems += found
                if sink.received - before != subtasks:
                    problems.append(
                        f"{kind}: the SMTP server received {sink.received - before} messages "
                        f"for {subtasks} sub-tasks"
                    )
                if result is not None:
                    print(
                        f"{kind:<11} {subtasks:>8}  {result.rate(subtasks):>10.0f}  "
                        f"{result.peak_mib:>8.0f}"
                    )
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


def message_cost_us(repeat: int = 20000) -> float:
    """Microseconds the engine spends building one message (render the three templates,
    sign the unsubscribe link, make the headers): work the raw loop does not do."""
    from edm.messages import MessageBuilder, TaskTemplates

    builder = MessageBuilder(
        TaskTemplates(SUBJECT, HTML, TEXT),
        from_addr="news@bench.example",
        default_from=None,
        public_url="https://edm.bench.example",
        signing_key="k" * 32,
    )
    contacts = [
        {"id": i, "email": f"r{i:07d}@bench.example", "name": f"Reader {i}", "fields": {"n": i}}
        for i in range(100)
    ]
    clock = time.perf_counter()
    for i in range(repeat):
        builder.build(
            sub_task_id=i, task_id=1, idempotency_key=f"{i:032x}", contact=contacts[i % 100]
        )
    return (time.perf_counter() - clock) / repeat * 1e6


def print_table(rows: list[Row]) -> None:
    print()
    print(
        f"{'db':<11} {'subtasks':>8}  {'engine/s':>8}  {'baseline/s':>10}  {'ratio':>5}  "
        f"{'peak MiB':>8}"
    )
    for row in rows:
        print(
            f"{row.db:<11} {row.subtasks:>8}  {row.rate('engine'):>8.0f}  "
            f"{row.rate('baseline'):>10.0f}  {row.ratio:>5.2f}  {row.peak_mib:>8.0f}"
        )
    print()
    print("per email, in microseconds of wall time:")
    for row in rows:
        print(
            f"  {row.db:<11} {row.subtasks:>8}  engine {1e6 / row.rate('engine'):6.1f}"
            f" (its process's CPU {row.cpu_us('engine'):6.1f})  "
            f"baseline {1e6 / row.rate('baseline'):6.1f} (CPU {row.cpu_us('baseline'):5.1f})"
        )
    print(
        f"  building one message (render 3 templates, sign, headers; one core): "
        f"{message_cost_us():.1f}"
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        part, spec = args.child
        print(json.dumps(CHILDREN[part](json.loads(spec))), flush=True)
        return 0
    kinds = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    if args.smtp:
        return smtp_mode(args, kinds)
    print(
        f"dispatch: {args.services} sandbox services (interval 0, latency 0), "
        f"batch {args.batch}, sizes {', '.join(map(str, args.size_list))}, "
        f"{args.repeat} run(s) of each part",
        flush=True,
    )
    rows: list[Row] = []
    problems: list[str] = []
    for kind in kinds:
        for subtasks in args.size_list:
            print(f"{kind}, {subtasks} sub-tasks", flush=True)
            row = Row(kind, subtasks, [], [])
            for _ in range(args.repeat):
                # Alternating the parts spreads any drift of the machine over both.
                for part in ("engine", "baseline"):
                    result, found = measure(kind, part, subtasks, args)
                    problems += found
                    if result is not None:
                        getattr(row, part).append(result)
            if row.engine and row.baseline:
                rows.append(row)
                verdict = "meets" if row.ratio >= TARGET_RATIO else "below"
                print(f"  ratio    {row.ratio:8.2f}  ({verdict} the {TARGET_RATIO:.0%} target)")
    print_table(rows)
    if problems:
        print()
        for problem in problems:
            print(f"FAILED: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
