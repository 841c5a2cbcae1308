"""Importing contacts from a CSV file: nothing lost, nothing half-done, nothing wiped.

1. Open: the encoding, the delimiter (given or sniffed) and the header are checked.
2. Stage: one pass, in one transaction, checks each row (a bad row is rejected alone, the
   rows after it go on) and streams the good ones into a temporary table (COPY on
   PostgreSQL). A problem of the file as a whole (bytes that do not decode, broken
   quoting, a NUL) stops the import there, naming the line, and the transaction is rolled
   back: nothing is written, and the rows rejected before it are not reported. (A first
   pass that only looked for such problems was an eighth of a million rows' import.)
3. Merge the staged rows into the contacts (`edm.contacts.merge` holds the rules): set-
   based SQL for the addresses the file names once, Python in file order for those it
   names more than once (`edm.contacts.writer`).
4. Commit, once: a failure anywhere before leaves the database as it was.

The pass streams: memory stays flat however large the file. The price of step 4 on
SQLite: the database's write lock is held through steps 2 and 3 (about 1 s per 100,000
rows measured), and workers of other processes wait for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from edm.contacts.csvfile import open_csv
from edm.contacts.merge import MergeRules
from edm.contacts.rows import Layout, Rejection, parse_row
from edm.contacts.writer import ContactWriter, Counts

# Called with the phase ("importing"), the part done and the whole: bytes of the file read.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ImportOptions:
    encoding: str = "utf-8"
    delimiter: str | None = None  # None: sniffed
    overwrite_empty: bool = False
    allow_reactivate: bool = False
    list_name: str | None = None  # every contact of a good row is put on this list


@dataclass
class ImportSummary:
    encoding: str
    delimiter: str
    rows: int = 0  # non-blank data rows read
    rejected: int = 0
    counts: Counts = field(default_factory=Counts)
    list_made: bool = False  # the list named by `list_name` did not exist and was made

    @property
    def imported(self) -> int:
        """Contacts the file named in a good row: new, updated or already as it says."""
        return self.counts.new + self.counts.updated + self.counts.unchanged


def import_csv(
    engine: Engine,
    path: Path,
    options: ImportOptions | None = None,
    *,
    on_reject: Callable[[Rejection], None] | None = None,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import `path`; raises FileProblem (a ValueError) when the file cannot be imported."""
    options = options or ImportOptions()
    # 1. open
    source = open_csv(path, options.encoding, options.delimiter)
    layout = Layout.of(source.columns)
    summary = ImportSummary(source.encoding.removesuffix("-sig"), source.delimiter)

    def report(phase: str) -> Callable[[int], None] | None:
        return (lambda done: progress(phase, done, source.size)) if progress else None

    # 2. stage
    rules = MergeRules(options.overwrite_empty, options.allow_reactivate)
    with engine.begin() as conn:
        list_id = None
        if options.list_name is not None:
            from edm.audience.lists import ensure_list

            list_id, summary.list_made = ensure_list(conn, options.list_name)
        writer = ContactWriter(conn, rules, list_id)
        with writer.staging() as stage:
            for record in source.records(report("importing")):
                summary.rows += 1
                row = parse_row(record, layout)
                if isinstance(row, Rejection):
                    summary.rejected += 1
                    if on_reject:
                        on_reject(row)
                    continue
                stage(row)
        # 3. merge
        summary.counts = writer.finish()
    # 4. committed on leaving the block
    return summary
