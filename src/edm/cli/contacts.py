"""`edm contacts`: the people a task sends to."""

from __future__ import annotations

import csv
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer
from rich.markup import escape

from edm.cli.common import engine, err, fail, handles_errors, out, print_json

if TYPE_CHECKING:
    from rich.progress import TaskID

    from edm.contacts import ImportSummary, Rejection
    from edm.contacts.importer import Progress

app = typer.Typer(
    no_args_is_help=True,
    help="Contacts: add, show, update, delete, list; import and export CSV; reactivate.",
)

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
    list_name: Annotated[
        str | None,
        typer.Option(
            "--list", help="put every contact of the file's good rows on this list (made if new)"
        ),
    ] = None,
) -> None:
    from edm import contacts as contacts_mod

    options = contacts_mod.ImportOptions(
        encoding, _delimiter(delimiter), overwrite_empty, allow_reactivate, list_name
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
    if list_name is not None:
        made = " (a new list)" if summary.list_made else ""
        out.print(
            f"on list {list_name}{made}: every contact the file imported",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
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

    def __exit__(self, failed: type[BaseException] | None, *_: object) -> None:
        if self.handle is not None:
            self.handle.close()
            if failed is not None and self.path is not None and self.path.is_file():
                # Nothing was imported: no report of the rows of an import that did not
                # happen. Only a file of its own: `--report /dev/stdout` stays.
                self.path.unlink(missing_ok=True)

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
    """A bar over the file's bytes, for each phase the import reports."""

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


# -- one contact at a time, and export ------------------------------------------------------

Email = Annotated[str, typer.Argument(help="the contact's address (any case)")]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
Fields = Annotated[
    list[str] | None,
    typer.Option(
        "--field",
        help="KEY=VALUE, a custom field (the key is lower-cased, as the import does);"
        " may be repeated",
    ),
]
ListFilter = Annotated[str | None, typer.Option("--list", help="only the members of this list")]
StatusFilter = Annotated[
    str | None,
    typer.Option(help="only contacts of this status: active, bounced, complained, ..."),
]


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _shown(value: object) -> str:
    """Contact data for a terminal: text with a control character (an escape sequence
    could rewrite the screen) is shown quoted, escaped."""
    import unicodedata

    text = str(value)
    return repr(text) if any(unicodedata.category(c) == "Cc" for c in text) else text


@app.command("add")
@handles_errors
def contacts_add(
    email: Email,
    name: Annotated[str | None, typer.Option(help="the name for To: and templates")] = None,
    field: Fields = None,
    list_name: Annotated[
        list[str] | None,
        typer.Option(
            "--list", help="put it on this list (made by `edm list create`); may be repeated"
        ),
    ] = None,
) -> None:
    """Add one active contact.

    The address is checked and lower-cased as by the import. An existing one is refused.
    """
    from edm.contacts import manage, normalise_email

    fields = manage.parse_fields(field or [])
    contact_id = manage.add_contact(
        engine(), email, name=name, fields=fields, lists=list_name or []
    )
    _say(f"contact {normalise_email(email)} added (id {contact_id})")


@app.command("show")
@handles_errors
def contacts_show(email: Email, as_json: Json = False) -> None:
    """A contact: its data, status, lists, and its sub-tasks over all tasks by status."""
    from dataclasses import asdict

    from edm.contacts import manage

    detail = manage.get_contact(engine(), email)
    if as_json:
        print_json(asdict(detail))
        return
    why = f" ({_shown(detail.status_reason)})" if detail.status_reason else ""
    sub_tasks = ", ".join(f"{n} {status}" for status, n in detail.sub_tasks.items())
    lines = [
        f"contact {detail.id}: {_shown(detail.email)}",
        f"name: {_shown(detail.name) if detail.name else '-'}",
        f"status: {detail.status}{why}",
        f"lists: {', '.join(_shown(n) for n in detail.lists) or '-'}",
        *(f"field {_shown(k)}: {_shown(v)}" for k, v in sorted(detail.fields.items())),
        f"sub-tasks: {sub_tasks or 'none'}; last sent {_when(detail.last_sent_at)}",
        f"created {_when(detail.created_at)}, updated {_when(detail.updated_at)}",
    ]
    for line in lines:
        _say(line)


def _when(epoch: float | None) -> str:
    from datetime import UTC, datetime

    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


UPDATE_HELP = (
    "Change a contact's name, custom fields and lists.\n\n"
    "Fields not named keep their values. The status never changes here: a suppressed contact "
    "is made active again only by `edm contacts reactivate EMAIL`. A template of a running "
    "task that uses a field removed here fails for this contact."
)


@app.command("update", help=UPDATE_HELP)
@handles_errors
def contacts_update(
    email: Email,
    name: Annotated[str | None, typer.Option(help='the new name; --name "" removes it')] = None,
    field: Fields = None,
    unset: Annotated[
        list[str] | None, typer.Option(help="remove this custom field; may be repeated")
    ] = None,
    add_list: Annotated[
        list[str] | None, typer.Option(help="put it on this list; may be repeated")
    ] = None,
    remove_list: Annotated[
        list[str] | None, typer.Option(help="take it off this list; may be repeated")
    ] = None,
) -> None:
    from edm.contacts import manage

    detail = manage.update_contact(
        engine(),
        email,
        name=name,
        set_fields=manage.parse_fields(field or []),
        unset_fields=unset or [],
        add_lists=add_list or [],
        remove_lists=remove_list or [],
    )
    _say(f"contact {detail.email} updated")


DELETE_HELP = (
    "Delete a contact, with its list memberships and its sub-tasks.\n\n"
    "Its sub-tasks leave their tasks' statistics (sent counts and funnels shrink). Refused "
    "while one of them is being sent; try again a few seconds later. The address is forgotten"
    " with it: a suppressed (unsubscribed, bounced, ...) address imported again is active. "
    "Asks for confirmation on a terminal; elsewhere --yes is required."
)


@app.command("delete", help=DELETE_HELP)
@handles_errors
def contacts_delete(
    email: Email,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    from edm.contacts import manage

    db = engine()
    if not yes:
        if not _can_ask():
            fail("not deleted: confirm with --yes (no terminal to ask on)")
        detail = manage.get_contact(db, email)
        sent = sum(detail.sub_tasks.values())
        question = f"delete {detail.email} ({detail.status}, {sent} sub-task(s))?"
        if not typer.confirm(question, err=True):
            fail("not deleted")
    gone = manage.delete_contact(db, email)
    _say(f"contact {gone.email} deleted")
    if gone.status != "active":
        err.print(
            f"it was {gone.status}: importing the address again makes it an active contact",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _can_ask() -> bool:
    """A person at a terminal can answer a question; a script or a pipe cannot."""
    import sys

    return sys.stdin.isatty()


EXPORT_HELP = (
    "Write contacts as CSV: email, name, status, then every custom field.\n\n"
    "`edm contacts import` reads the file back: the same contacts with the same fields (a "
    "contact lacking a field another has gets it empty, as an import does). A suppressed "
    'contact imported into another installation gets the reason "import: STATUS". FILE is '
    "never overwritten unless --force; without FILE (or with -) the CSV goes to stdout."
)


@app.command("export", help=EXPORT_HELP)
@handles_errors
def contacts_export(
    file: Annotated[Path | None, typer.Argument(help="where to write; - or none: stdout")] = None,
    list_name: ListFilter = None,
    status: StatusFilter = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite FILE if it exists")] = False,
) -> None:
    import sys

    from edm.contacts import manage

    db = engine()
    if file is None or str(file) == "-":
        try:
            count = manage.export_contacts(db, sys.stdout, list_name=list_name, status=status)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has all it wanted
            _quiet_stdout()
            raise typer.Exit(1) from None
        err.print(f"exported {count} contact(s)", markup=False, highlight=False)
        return
    count = _export_file(
        file,
        force,
        lambda handle: manage.export_contacts(db, handle, list_name=list_name, status=status),
    )
    _say(f"exported {count} contact(s) to {file}")


def _export_file(file: Path, force: bool, export: Callable[[TextIO], int]) -> int:
    """Export into FILE, which never holds half an export: a new FILE is created for it
    (mode x: no race with another writer) and removed if the export fails; with --force
    the export goes to a file beside it that replaces it only once complete."""
    import os

    target = file.with_name(f".{file.name}.{os.getpid()}.part") if force else file
    try:
        handle = target.open("x", newline="", encoding="utf-8")
    except FileExistsError:
        fail(f"{file} exists: choose another file, or --force to overwrite it")
        raise  # unreachable
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror or type(exc).__name__}")
        raise  # unreachable
    try:
        with handle:
            count = export(handle)
        if force:
            target.replace(file)
    except OSError as exc:  # a full disk; --force onto a directory
        target.unlink(missing_ok=True)
        fail(f"cannot write {file}: {exc.strerror or type(exc).__name__}")
        raise  # unreachable
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return count


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises nothing more."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@app.command("list")
@handles_errors
def contacts_list(
    list_name: ListFilter = None,
    status: StatusFilter = None,
    search: Annotated[
        str | None,
        typer.Option(help="only contacts whose address or name holds this text (any case)"),
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many, 1 to 1000")] = 50,
    after: Annotated[
        int, typer.Option(help="only contacts with a greater id: the next page's cursor")
    ] = 0,
    as_json: Json = False,
) -> None:
    """Contacts by id, a page at a time.

    The last line (JSON: `next_after`) gives the --after of the next page, if any.
    """
    from dataclasses import asdict

    from rich.table import Table

    from edm.contacts import manage

    page = manage.list_contacts(
        engine(), list_name=list_name, status=status, search=search, limit=limit, after_id=after
    )
    next_after = page[-1].id if len(page) == limit else None
    if as_json:
        print_json({"contacts": [asdict(c) for c in page], "next_after": next_after})
        return
    table = Table("id", "email", "name", "status", "created")
    for c in page:
        table.add_row(
            str(c.id),
            escape(c.email),
            escape(_shown(c.name or "")),
            c.status,
            _when(c.created_at).removesuffix(" UTC"),
        )
    out.print(table)
    if next_after is not None:
        _say(f"more: --after {next_after}")
