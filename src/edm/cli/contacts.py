"""`edm contacts`: the people a task sends to."""

from __future__ import annotations

import csv
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from edm.cli.common import engine, err, fail, handles_errors, out

if TYPE_CHECKING:
    from rich.progress import TaskID

    from edm.contacts import ImportSummary, Rejection
    from edm.contacts.importer import Progress

app = typer.Typer(no_args_is_help=True, help="Contacts: import from CSV, reactivate.")

# Rejected rows listed on stderr; --report FILE has them all.
SHOWN_REJECTIONS = 20
# Files smaller than this import too fast for a progress bar to help.
PROGRESS_MIN_BYTES = 1_000_000
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}

IMPORT_HELP = """Import a CSV with a header row; `email` is required, `name` and `status` are
known, every other column becomes a custom field.

Nothing is imported when the file as a whole is unreadable (bytes not in the encoding,
an unterminated quote, a NUL, a missing, empty or repeated column name; names ignore
case). A bad row (an invalid address, a field over 10,000 characters, an unknown status,
the wrong number of fields) is rejected alone and listed; the other rows are imported,
and the exit status is 1.

Merging into existing contacts: a column absent from the file changes nothing; an empty
cell changes nothing (unless --overwrite-empty); custom fields merge key by key. A
`status` column can suppress a contact (unsubscribed, bounced, complained, invalid) but
never reactivates one (unless --allow-reactivate). Addresses are normalised (lower-cased,
local part too): case variants are one contact. A later row naming the same address as
an earlier one merges onto it by the same rules, and is counted as duplicated.
"""


@app.command("import", help=IMPORT_HELP)
def contacts_import(
    file: Path,
    encoding: Annotated[
        str, typer.Option(help="the file's encoding (a UTF-8 byte-order mark is accepted)")
    ] = "utf-8",
    delimiter: Annotated[
        str | None,
        typer.Option(help="one character, or tab; default: sniffed among , ; tab |"),
    ] = None,
    overwrite_empty: Annotated[
        bool, typer.Option("--overwrite-empty", help="an empty cell clears the value")
    ] = False,
    allow_reactivate: Annotated[
        bool,
        typer.Option(
            "--allow-reactivate", help="the file's status wins over a suppressed contact's"
        ),
    ] = False,
    report: Annotated[
        Path | None,
        typer.Option(help="write every rejected row to this CSV (line, reason, value)"),
    ] = None,
) -> None:
    from edm import contacts as contacts_mod

    options = contacts_mod.ImportOptions(
        encoding, _delimiter(delimiter), overwrite_empty, allow_reactivate
    )
    if report is not None and report.resolve() == file.resolve():
        fail("--report must not be the file being imported: it would be overwritten")
    rejections = _Rejections(report)
    try:
        with rejections, _progress(file) as progress:
            summary = contacts_mod.import_csv(
                engine(), file, options, on_reject=rejections.add, progress=progress
            )
    except typer.Exit:
        raise
    except ValueError as exc:
        fail(f"{exc}; nothing imported")
    except Exception as exc:
        fail(f"{_failure(exc)}; nothing imported")
    _print_summary(file, summary)
    rejections.print()
    if summary.rejected:
        fail(f"{summary.rejected} row(s) rejected; every other row was imported")


def _delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    value = _DELIMITER_NAMES.get(value.lower(), value)
    if len(value) != 1 or value in '"\r\n':
        fail(f"--delimiter must be one character (or tab), not {value!r}")
    return value


def _failure(exc: Exception) -> str:
    """One line for an unexpected failure, without the statement or its parameters: those
    hold contact data."""
    from sqlalchemy.exc import SQLAlchemyError

    from edm.contacts.shown import cut

    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        first = (str(orig) if orig else type(exc).__name__).strip().splitlines() or [""]
        return f"database error: {cut(first[0], 160)}"
    if isinstance(exc, OSError):
        return f"cannot read or write a file: {exc.strerror or type(exc).__name__}"
    return f"unexpected error: {type(exc).__name__}"


class _Rejections:
    """Rejected rows: the first few kept for stderr, every one written to the report."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.shown: list[Rejection] = []
        self.count = 0
        self.handle: TextIO | None = None
        self.writer: csv.Writer | None = None

    def __enter__(self) -> _Rejections:
        if self.path is not None:
            try:
                self.handle = self.path.open("w", newline="", encoding="utf-8")
            except OSError as exc:
                fail(f"cannot write the report {self.path}: {exc.strerror}")
            self.writer = csv.writer(self.handle)
            self.writer.writerow(["line", "reason", "value"])
        return self

    def __exit__(self, *_: object) -> None:
        if self.handle is not None:
            self.handle.close()

    def add(self, rejection: Rejection) -> None:
        self.count += 1
        if len(self.shown) < SHOWN_REJECTIONS:
            self.shown.append(rejection)
        if self.writer is not None:
            self.writer.writerow([rejection.line, rejection.reason, rejection.value])

    def print(self) -> None:
        for r in self.shown:
            value = f" ({r.value!r})" if r.value else ""
            err.print(
                f"line {r.line}: {r.reason}{value}", markup=False, highlight=False, soft_wrap=True
            )
        more = self.count - len(self.shown)
        if more:
            where = f"all of them are in {self.path}" if self.path else "--report FILE lists all"
            err.print(f"… and {more} more rejected row(s): {where}", markup=False, soft_wrap=True)


def _progress(file: Path) -> AbstractContextManager[Progress | None]:
    """A progress bar on stderr for a large file on a terminal; otherwise nothing."""
    try:
        large = file.stat().st_size >= PROGRESS_MIN_BYTES
    except OSError:
        large = False
    return _ProgressBar() if large and err.is_terminal else nullcontext(None)


class _ProgressBar:
    """One bar per phase of the import (checking, importing), over the file's bytes."""

    def __enter__(self) -> Progress:
        from rich.progress import BarColumn, TimeRemainingColumn
        from rich.progress import Progress as Bars

        self.bars = Bars(
            "{task.description}", BarColumn(), TimeRemainingColumn(), console=err, transient=True
        )
        self.bars.start()
        self.phases: dict[str, TaskID] = {}
        return self.update

    def update(self, phase: str, done: int, total: int) -> None:
        if phase not in self.phases:
            self.phases[phase] = self.bars.add_task(phase, total=total)
        self.bars.update(self.phases[phase], completed=done)

    def __exit__(self, *_: object) -> None:
        self.bars.stop()


def _print_summary(file: Path, s: ImportSummary) -> None:
    c = s.counts
    delimiter = "tab" if s.delimiter == "\t" else repr(s.delimiter)
    out.print(
        f"imported {s.imported} contact{'' if s.imported == 1 else 's'} from {file.name}"
        f" ({s.encoding}, delimiter"
        f" {delimiter}): {c.new} new, {c.updated} updated, {c.unchanged} unchanged;"
        f" {c.duplicated} duplicated within the file, {s.rejected} rejected,"
        f" of {s.rows} rows",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if c.suppressed or c.reactivated or c.kept_suppressed:
        hint = " (status `active` ignored: --allow-reactivate)" if c.kept_suppressed else ""
        out.print(
            f"statuses: {c.suppressed} suppressed, {c.reactivated} reactivated,"
            f" {c.kept_suppressed} kept suppressed{hint}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@app.command("reactivate")
@handles_errors
def contacts_reactivate(
    emails: Annotated[list[str], typer.Argument(help="addresses of suppressed contacts")],
) -> None:
    """Set suppressed contacts back to `active` and clear why they were suppressed."""
    from edm import contacts as contacts_mod

    result = contacts_mod.reactivate(engine(), emails)
    for r in result.reactivated:
        why = f": {r.reason}" if r.reason else ""
        out.print(
            f"reactivated {r.email} (was {r.was}{why})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    for email in result.already_active:
        out.print(f"{email} is already active", markup=False, highlight=False, soft_wrap=True)
    if result.unknown:
        fail(f"no contact has the address {', '.join(repr(e) for e in result.unknown)}")
