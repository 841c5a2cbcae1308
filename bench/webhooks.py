"""Webhook intake over HTTP: events accepted and applied per second, and request latency.

Usage: `./dev bench webhooks [--events N] [--db sqlite|postgresql|both] [--concurrency C]`.
For each database it starts `edm serve --no-worker` on a loopback port against a fresh
database holding one task of sent sub-tasks, then:

1. throughput: posts N generic events (default 50,000) as fast as C concurrent clients
   can, half as single events and half in batches of 10, one in ten a duplicate of an
   earlier one, every event matched to a real sent sub-task by its provider message id;
   prints events/s accepted (answered 2xx) and events/s applied (until the event table
   shows every unique event applied);
2. latency: posts single events at a fixed 200 requests/s for 10 s and prints p50 and p99.

The raw-first commit is never skipped: every request is in `webhook_requests` before its
2xx (the server is the real one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from databases import add_database_options, chosen_databases
from sqlalchemy import text

from edm.contacts import add_contacts
from edm.db import open_database

TOKEN = "bench-token"
SUB_TASKS = 5_000
EVENTS = ("delivered", "opened", "clicked")
LATENCY_RATE = 200  # requests per second
LATENCY_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def populate(url: str) -> None:
    from edm import services, tasks

    engine = open_database(url)
    services.add_service(engine, "s", "sandbox", 0.0)
    add_contacts(
        engine, [{"email": f"r{i}@example.com", "name": f"R {i}"} for i in range(SUB_TASKS)]
    )
    tasks.create_task(engine, "bench", "s", text_body="x", start=True)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE sub_tasks SET status = 'sent', service_id = 1, sent_at = 1000.0,"
                " provider_message_id = 'pm-' || id"
            )
        )
    engine.dispose()


def make_events(count: int, rng: random.Random) -> list[dict]:
    events: list[dict] = []
    for i in range(count):
        if events and rng.random() < 0.1:
            events.append(rng.choice(events))  # a duplicate: same event id
            continue
        events.append(
            {
                "event": rng.choice(EVENTS),
                "provider_message_id": f"pm-{rng.randint(1, SUB_TASKS)}",
                "timestamp": 1_000_000 + i,
                "event_id": f"e{i}",
            }
        )
    return events


def requests_of(events: list[dict], rng: random.Random) -> list[object]:
    """Half the events one per request, half in batches of ten."""
    half = len(events) // 2
    bodies: list[object] = list(events[:half])
    rest = events[half:]
    bodies += [rest[i : i + 10] for i in range(0, len(rest), 10)]
    rng.shuffle(bodies)
    return bodies


async def post_all(base: str, bodies: list[object], concurrency: int) -> tuple[int, int]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    queue: asyncio.Queue[object] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    ok = failed = 0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal ok, failed
        while not queue.empty():
            body = queue.get_nowait()
            answer = await client.post(f"{base}/api/webhooks/generic", json=body, headers=headers)
            if answer.is_success:
                ok += 1
            else:
                failed += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return ok, failed


async def latency(base: str, rng: random.Random) -> list[float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    times: list[float] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = {
            "event": "opened",
            "provider_message_id": f"pm-{rng.randint(1, SUB_TASKS)}",
            "timestamp": 2_000_000 + i,
            "event_id": f"l{i}",
        }
        started = time.perf_counter()
        await client.post(f"{base}/api/webhooks/generic", json=body, headers=headers)
        times.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=30) as client:
        pending = []
        start = time.perf_counter()
        for i in range(int(LATENCY_RATE * LATENCY_SECONDS)):
            delay = start + i / LATENCY_RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(client, i)))
        await asyncio.gather(*pending)
    return times


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def applied_count(url: str) -> int:
    engine = open_database(url, migrate=False)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(text("SELECT count(*) FROM events WHERE status = 'applied'")).scalar()
            )
    finally:
        engine.dispose()


def wait_for_server(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"edm serve exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/health/live", timeout=1).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("edm serve did not answer within 30 s")


def measure(kind: str, url: str, count: int, concurrency: int) -> None:
    populate(url)
    rng = random.Random(7)
    events = make_events(count, rng)
    unique = len({e["event_id"] for e in events})
    bodies = requests_of(events, rng)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "EDM_DATABASE_URL": url, "EDM_WEBHOOK_TOKEN": TOKEN}
    log_path = f"/tmp/edm-bench-webhooks-{kind}.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "edm", "serve", "--port", str(port), "--no-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "w"),  # noqa: SIM115 - the child's log, read on failure
    )
    print(f"{kind}: edm serve logs to {log_path}", flush=True)
    try:
        wait_for_server(base, server)
        cpu_before, client_before = cpu_seconds(server.pid), time.process_time()
        started = time.perf_counter()
        ok, failed = asyncio.run(post_all(base, bodies, concurrency))
        accepted_s = time.perf_counter() - started
        server_cpu = cpu_seconds(server.pid) - cpu_before
        client_cpu = time.process_time() - client_before
        while applied_count(url) < unique and time.perf_counter() - started < 600:
            time.sleep(0.2)
        applied_s = time.perf_counter() - started
        applied = applied_count(url)
        times = sorted(asyncio.run(latency(base, rng)))
    finally:
        server.terminate()
        server.wait(timeout=20)
    p50 = statistics.median(times) * 1000
    p99 = times[int(len(times) * 0.99) - 1] * 1000
    print(
        f"{kind}: {count:,} events in {len(bodies):,} requests ({failed} refused), "
        f"{count / accepted_s:,.0f} events/s accepted, "
        f"{applied / applied_s:,.0f} unique events/s applied ({applied:,}/{unique:,}); "
        f"at {LATENCY_RATE} requests/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"during the flood the server used {server_cpu / len(bodies) * 1000:.2f} ms of CPU "
        f"per request ({server_cpu / accepted_s:.2f} cores), the bench's client "
        f"{client_cpu / accepted_s:.2f} cores"
    )
    del ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=32)
    add_database_options(parser)
    options = parser.parse_args()
    for target in chosen_databases(options):
        measure(target.kind, target.url, options.events, options.concurrency)


if __name__ == "__main__":
    main()
