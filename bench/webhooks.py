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
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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
FLOOD_SCRIPT = Path(__file__).with_name("webhooks_flood.lua")


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


def requests_of(events: list[dict], rng: random.Random, single: float) -> list[object]:
    """A share `single` of the events one per request, the rest in batches of ten."""
    alone = round(len(events) * single)
    bodies: list[object] = list(events[:alone])
    rest = events[alone:]
    bodies += [rest[i : i + 10] for i in range(0, len(rest), 10)]
    rng.shuffle(bodies)
    return bodies


async def post_all(bases: list[str], bodies: list[object], concurrency: int) -> tuple[int, int]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    queue: asyncio.Queue[object] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    ok = failed = 0

    async def client_loop(client: httpx.AsyncClient, base: str) -> None:
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
        await asyncio.gather(
            *(client_loop(client, bases[i % len(bases)]) for i in range(concurrency))
        )
    return ok, failed


def post_all_with_wrk(base: str, bodies: list[object], concurrency: int) -> tuple[int, int]:
    """The same flood from wrk (C, one thread): the client then takes a sliver of the CPU
    the server shares with it on this machine, as a provider posting from elsewhere would."""
    with tempfile.TemporaryDirectory(prefix="edm-bench-") as workdir:
        bodies_file = Path(workdir) / "bodies.jsonl"
        bodies_file.write_text("".join(json.dumps(body) + "\n" for body in bodies))
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{concurrency}", "-d3600s", "--timeout", "30s",
             "-s", str(FLOOD_SCRIPT), base, "--", str(bodies_file), TOKEN],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert wrk.stderr is not None
        said = wrk.stderr.readline()  # the script's last word, once every body is answered
        wrk.send_signal(signal.SIGINT)  # wrk would otherwise run out its duration
        wrk.communicate(timeout=30)
    counts = re.search(r"answered (\d+) refused (\d+)", said)
    if counts is None:
        raise SystemExit(f"wrk did not finish the flood: {said}")
    answered, refused = int(counts.group(1)), int(counts.group(2))
    return answered - refused, refused


async def latency(bases: list[str], rng: random.Random) -> list[float]:
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
        base = bases[i % len(bases)]
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


def client_cpu_seconds() -> float:
    """CPU seconds of this process and of the children it waited for (wrk)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def start_server(url: str, kind: str, number: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "EDM_DATABASE_URL": url, "EDM_WEBHOOK_TOKEN": TOKEN}
    log_path = f"/tmp/edm-bench-webhooks-{kind}-{number}.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "edm", "serve", "--port", str(port), "--no-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "w"),  # noqa: SIM115 - the child's log, read on failure
    )
    print(f"{kind}: edm serve #{number} logs to {log_path}", flush=True)
    return server, f"http://127.0.0.1:{port}"


def flood(bases: list[str], bodies: list[object], concurrency: int, client: str) -> int:
    """Post every body once, spread evenly over the servers; how many were refused."""
    if client == "httpx":
        return asyncio.run(post_all(bases, bodies, concurrency))[1]
    shares = [bodies[i :: len(bases)] for i in range(len(bases))]
    per_server = max(1, concurrency // len(bases))
    with ThreadPoolExecutor(len(bases)) as pool:
        results = pool.map(post_all_with_wrk, bases, shares, [per_server] * len(bases))
        return sum(refused for _, refused in results)


def measure(
    kind: str, url: str, count: int, concurrency: int, client: str, servers: int, single: float
) -> None:
    populate(url)
    rng = random.Random(7)
    events = make_events(count, rng)
    unique = len({e["event_id"] for e in events})
    bodies = requests_of(events, rng, single)
    started_servers = [start_server(url, kind, n + 1) for n in range(servers)]
    processes = [process for process, _ in started_servers]
    bases = [base for _, base in started_servers]
    try:
        for process, base in started_servers:
            wait_for_server(base, process)
        cpu_before = sum(cpu_seconds(process.pid) for process in processes)
        client_before = client_cpu_seconds()
        started = time.perf_counter()
        refused = flood(bases, bodies, concurrency, client)
        accepted_s = time.perf_counter() - started
        server_cpu = sum(cpu_seconds(process.pid) for process in processes) - cpu_before
        client_cpu = client_cpu_seconds() - client_before
        while applied_count(url) < unique and time.perf_counter() - started < 600:
            time.sleep(0.2)
        applied_s = time.perf_counter() - started
        applied = applied_count(url)
        times = sorted(asyncio.run(latency(bases, rng)))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
    p50 = statistics.median(times) * 1000
    p99 = times[int(len(times) * 0.99) - 1] * 1000
    print(
        f"{kind}, {servers} edm serve, {single:.0%} single: {count:,} events in "
        f"{len(bodies):,} requests ({refused} refused), "
        f"{count / accepted_s:,.0f} events/s accepted, "
        f"{applied / applied_s:,.0f} unique events/s applied ({applied:,}/{unique:,}); "
        f"at {LATENCY_RATE} requests/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"during the flood ({client} posting) the servers used "
        f"{server_cpu / len(bodies) * 1000:.2f} ms of CPU per request "
        f"({server_cpu / accepted_s:.2f} cores), the bench's client "
        f"{client_cpu / accepted_s:.2f} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--client",
        choices=("wrk", "httpx"),
        default="wrk" if shutil.which("wrk") else "httpx",
        help="who posts the flood (default: wrk when installed: apt install wrk)",
    )
    parser.add_argument(
        "--servers",
        type=int,
        default=1,
        help="edm serve --no-worker processes sharing the database, each posted an equal share",
    )
    parser.add_argument(
        "--single",
        type=float,
        default=0.5,
        help="share of the events posted one per request (the rest in batches of 10)",
    )
    add_database_options(parser)
    options = parser.parse_args()
    for target in chosen_databases(options):
        measure(
            target.kind,
            target.url,
            options.events,
            options.concurrency,
            options.client,
            options.servers,
            options.single,
        )


if __name__ == "__main__":
    main()
