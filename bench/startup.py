"""How long `edm` commands take to start and answer: wall time, median of several runs.

Usage: `./dev bench startup [--runs N] [--db sqlite|postgresql|both]`. It makes a
throwaway database with one service, one contact and one task, then times `edm --help`,
`edm --version`, `edm task show 1` and `edm task list` as a user runs them (a new process
each time, through the installed `edm` script).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from databases import add_database_options, chosen_databases

COMMANDS = (["--help"], ["--version"], ["task", "show", "1"], ["task", "list"])
TARGET_SECONDS = 0.5


def edm_command() -> list[str]:
    script = Path(sys.executable).with_name("edm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "edm"]


def run(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([*edm_command(), *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def prepare(env: dict[str, str], workdir: Path) -> None:
    contacts = workdir / "contacts.csv"
    contacts.write_text("email,name\nreader@example.com,Reader\n")
    for args in (
        ["service", "add", "s", "--provider", "sandbox", "--interval", "1"],
        ["contacts", "import", str(contacts)],
        ["task", "create", "t", "--subject", "Hi {{ name }}", "--text", "x"],
    ):
        subprocess.run([*edm_command(), *args], env=env, check=True, capture_output=True)


def measure(label: str, url: str, runs: int) -> None:
    env = {**os.environ, "EDM_DATABASE_URL": url}
    workdir = Path(tempfile.mkdtemp(prefix="edm-startup-"))
    try:
        prepare(env, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{label} ({runs} runs each, median and max wall seconds; target {TARGET_SECONDS})")
    for args in COMMANDS:
        times = [run(args, env) for _ in range(runs)]
        median = statistics.median(times)
        verdict = "ok" if median < TARGET_SECONDS else "SLOW"
        print(f"  edm {' '.join(args):<16} {median:6.3f} {max(times):6.3f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    add_database_options(parser)
    options = parser.parse_args()
    for target in chosen_databases(options):
        measure(target.kind, target.url, options.runs)


if __name__ == "__main__":
    main()
