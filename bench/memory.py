"""Peak memory of a worker sending a campaign whose template is at the size limit.

Usage: `./dev bench memory [--contacts N] [--html-bytes B] [--db sqlite|postgresql|both]`.
A task with a B-byte HTML body (default: EDM_MAX_TEMPLATE_BYTES, 1 MiB) goes to N contacts (default
400) through two interval-0 sandbox services; `edm worker --exit-when-idle` sends it in a
child process whose peak resident memory is printed. The target is under 500 MiB.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from databases import add_database_options, chosen_databases

TARGET_MIB = 500


def edm(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "edm", *args], env=env, check=True, capture_output=True)


def measure(label: str, url: str, contacts: int, html_bytes: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="edm-memory-"))
    try:
        _measure(label, url, contacts, html_bytes, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _measure(label: str, url: str, contacts: int, html_bytes: int, workdir: Path) -> None:
    env = {**os.environ, "EDM_DATABASE_URL": url}
    csv = workdir / "contacts.csv"
    csv.write_text(
        "email,name\n" + "".join(f"reader{i}@example.com,Reader {i}\n" for i in range(contacts))
    )
    html = workdir / "body.html"
    filler = "<p>{{ name }}, " + "x" * 70 + "</p>\n"
    html.write_text((filler * (html_bytes // len(filler) + 1))[: html_bytes - 1] + "\n")
    edm(["service", "add", "a", "--provider", "sandbox", "--interval", "0"], env)
    edm(["service", "add", "b", "--provider", "sandbox", "--interval", "0"], env)
    edm(["contacts", "import", str(csv)], env)
    edm(["task", "create", "big", "--subject", "s", "--html", str(html), "--start"], env)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "edm", "worker", "--exit-when-idle"],
        env=env,
        check=True,
        capture_output=True,
    )
    took = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    verdict = "ok" if peak_mib < TARGET_MIB else "OVER"
    print(
        f"{label}: {contacts} messages of {html_bytes:,} bytes of HTML in {took:.1f}s; "
        f"peak of any child process {peak_mib:.0f} MiB (target < {TARGET_MIB}) {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=400)
    parser.add_argument("--html-bytes", type=int, default=1024 * 1024 - 1024)
    add_database_options(parser)
    options = parser.parse_args()
    for target in chosen_databases(options):
        measure(target.kind, target.url, options.contacts, options.html_bytes)


if __name__ == "__main__":
    main()
