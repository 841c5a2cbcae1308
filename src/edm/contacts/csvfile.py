"""Reading a contacts CSV: bytes to lines to records, and what makes a file unreadable.

A problem of the file as a whole (its encoding, its quoting, its header) is raised as
`FileProblem`, naming the line: after one, no row of the file can be trusted, so the
import writes nothing. A problem of one record (too long, a bad address) belongs to its
row alone and is left to `edm.contacts.rows`.

The file is read line by line from bytes, so every position is a line number the user
can find, and no single line can take more than MAX_LINE_BYTES of memory.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from edm.contacts.shown import cut

# A longer physical line is one broken row, not contact data; it is cut here so that
# reading it cannot take the memory, and its row is rejected.
MAX_LINE_BYTES = 1_000_000
# A quoted field may span lines, but one longer than this is a quote left open that is
# swallowing the rest of the file. Above MAX_LINE_BYTES, so one long line is its row's
# problem and not the file's.
MAX_QUOTED_CHARS = 2 * MAX_LINE_BYTES
# Enough lines for csv.Sniffer to see the delimiter repeat, little enough to be instant.
SNIFF_BYTES = 16_384
DELIMITERS = ",;\t|"
QUOTE = '"'
# Progress is reported this often (in lines): often enough for a smooth bar, rarely
# enough to cost nothing.
PROGRESS_LINES = 2_000
# An encoding is usable when these characters are the same single bytes as in ASCII:
# lines are split on b"\n" before decoding.
_ASCII_PROBE = b'email,;\t|"\r\n'


class FileProblem(ValueError):
    """The file cannot be imported at all; `line` is None when no line is to blame."""

    def __init__(self, line: int | None, problem: str) -> None:
        self.line = line
        self.problem = problem
        super().__init__(f"line {line}: {problem}" if line else problem)


class Record(NamedTuple):
    """One CSV record: the line it starts on, its cells, and whether a line of it was cut.
    A tuple: made a million times an import, three times as fast as a frozen dataclass."""

    line: int
    cells: list[str]
    overlong: bool


@dataclass(frozen=True)
class CsvFile:
    """A file whose encoding, delimiter and header have been checked."""

    path: Path
    encoding: str
    delimiter: str
    columns: list[str]  # stripped and lower-cased, each once, `email` among them
    header: str  # the header line as read, for messages
    size: int

    def records(self, progress: Callable[[int], None] | None = None) -> Iterator[Record]:
        """The data records, header and blank rows left out. Each call reads the file anew."""
        records = read_records(self.path, self.encoding, self.delimiter, progress)
        next(records, None)  # the header, checked when the file was opened
        yield from records


def open_csv(path: Path, encoding: str = "utf-8", delimiter: str | None = None) -> CsvFile:
    """Check what the whole import depends on: the encoding, the delimiter, the header."""
    encoding = _usable_encoding(encoding)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            sample = handle.read(SNIFF_BYTES)
    except OSError as exc:
        raise FileProblem(None, f"cannot read {path}: {exc.strerror or exc}") from None
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FileProblem(1, "the file is UTF-16 (it starts with a UTF-16 mark): save it as UTF-8")
    if delimiter is None:
        delimiter = sniff_delimiter(sample, encoding)
    records = read_records(path, encoding, delimiter)
    try:
        header = next(records, None)
    finally:
        records.close()
    if header is None:
        raise FileProblem(None, f"{path} is empty: a header row with an `email` column is needed")
    shown = cut(delimiter.join(header.cells))
    if header.overlong:
        raise FileProblem(header.line, f"the header line is over {MAX_LINE_BYTES:,} bytes long")
    columns = [cell.strip().lower() for cell in header.cells]
    _check_columns(columns, header.line, shown, delimiter)
    return CsvFile(path, encoding, delimiter, columns, shown, size)


def _usable_encoding(encoding: str) -> str:
    """The codec to read with; UTF-8 also accepts a byte-order mark (Excel writes one)."""
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        raise FileProblem(None, f"unknown encoding {cut(encoding)!r}") from None
    if name in ("utf-8", "utf-8-sig"):
        return "utf-8-sig"
    try:
        same = _ASCII_PROBE.decode(name) == _ASCII_PROBE.decode("ascii")
    except (UnicodeError, LookupError):  # LookupError: a codec of bytes, not text (hex, zlib)
        same = False
    if not same:
        raise FileProblem(None, f"encoding {name} is not supported: save the file as UTF-8")
    return name


def sniff_delimiter(sample: bytes, encoding: str) -> str:
    """The delimiter csv.Sniffer sees in the first lines, else the header's most common one."""
    text = sample[: sample.rfind(b"\n") + 1 or len(sample)].decode(encoding, errors="replace")
    try:
        return csv.Sniffer().sniff(text, delimiters=DELIMITERS).delimiter
    except csv.Error:
        first = text.split("\n", 1)[0]
        best = max(DELIMITERS, key=first.count)
        return best if first.count(best) else ","


def _check_columns(columns: list[str], line: int, shown: str, delimiter: str) -> None:
    first_at: dict[str, int] = {}
    for number, name in enumerate(columns, 1):
        if not name:
            raise FileProblem(line, f"column {number} of the header has no name")
        if name in first_at:
            raise FileProblem(
                line,
                f"columns {first_at[name]} and {number} are both `{cut(name)}`"
                " (column names ignore case): which one holds the data is ambiguous",
            )
        first_at[name] = number
    if "email" not in first_at:
        raise FileProblem(
            line,
            f"no `email` column in the header {shown!r}: is the first row a header,"
            f" and is the delimiter {delimiter!r} right (--delimiter)?",
        )


def read_records(
    path: Path,
    encoding: str,
    delimiter: str,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Record]:
    """Every non-blank record of the file, the header first, with the line it starts on."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise FileProblem(None, f"cannot read {path}: {exc.strerror or exc}") from None
    with handle, _field_limit(MAX_QUOTED_CHARS):
        lines = _Lines(handle, encoding)
        reader = csv.reader(lines, delimiter=delimiter, quotechar=QUOTE, strict=True)
        report_at = PROGRESS_LINES
        while True:
            start = lines.number + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise FileProblem(start, _quoting_problem(str(exc))) from None
            if progress and lines.number >= report_at:
                progress(lines.bytes)
                report_at = lines.number + PROGRESS_LINES
            if any(map(str.strip, cells)):
                yield Record(start, cells, lines.last_cut >= start)
        if progress:
            progress(lines.bytes)


def _quoting_problem(message: str) -> str:
    if message.startswith("unexpected end of data"):
        return "a quoted field that starts on this line is never closed (an unterminated quote)"
    if message.startswith("field larger than field limit"):
        return (
            f"a quoted field that starts on this line runs on past {MAX_QUOTED_CHARS:,}"
            " characters (an unterminated quote?)"
        )
    if "expected after" in message:
        return 'text after a closing quote (a quote inside a field is written twice: "")'
    if message.startswith("new-line character seen in unquoted field"):
        return "a carriage return inside a field: save the file with Windows or Unix line ends"
    return f"unreadable CSV: {cut(message, 80)}"


@contextmanager
def _field_limit(limit: int) -> Iterator[None]:
    """csv's field limit is process-wide: set it for this file, then put it back."""
    before = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(before)


class _Lines:
    """The file's physical lines, decoded, counted (lines and bytes) as they are read.

    A line that does not decode, or holds a NUL, is a FileProblem: the encoding is wrong
    or this is not a text file, so no row can be trusted. A line over MAX_LINE_BYTES is
    cut; the rest is skipped without being kept, but its quotes are counted so that the
    quoting of the lines after it is read as the file means it.
    """

    def __init__(self, handle: BinaryIO, encoding: str) -> None:
        self.handle = handle
        self.encoding = encoding
        self.decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        self.number = 0
        self.bytes = 0
        self.last_cut = 0

    def __iter__(self) -> Iterator[str]:
        # UTF-8 is stateless past its byte-order mark, and a whole line ends on a whole
        # character: after the first line, a whole line is decoded at once, without the
        # incremental decoder's Python layer (a second of a million lines).
        whole_lines = self.encoding == "utf-8-sig"
        while raw := self.handle.readline(MAX_LINE_BYTES):
            self.number += 1
            self.bytes += len(raw)
            if len(raw) == MAX_LINE_BYTES and not raw.endswith(b"\n"):
                text = self._decode(raw) + self._skip_rest() + "\n"
            elif whole_lines and self.number > 1 and raw.endswith(b"\n"):
                text = self._decode_line(raw)
            else:
                text = self._decode(raw)
            if "\x00" in text:
                raise FileProblem(
                    self.number,
                    "a NUL character: this is not a text CSV file (a spreadsheet? UTF-16?)",
                )
            yield text
        self._decode(b"", final=True)

    def _decode(self, raw: bytes, final: bool = False) -> str:
        try:
            return self.decoder.decode(raw, final)
        except UnicodeDecodeError as exc:
            raise self._not_decoded(exc) from None

    def _decode_line(self, raw: bytes) -> str:
        """A whole UTF-8 line, the decoder holding nothing (the line before ended in \\n)."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._not_decoded(exc) from None

    def _not_decoded(self, exc: UnicodeDecodeError) -> FileProblem:
        byte = exc.object[exc.start] if exc.start < len(exc.object) else None
        what = f"byte 0x{byte:02x}" if byte is not None else "an incomplete character"
        return FileProblem(
            max(self.number, 1),
            f"{what} is not {self.encoding.removesuffix('-sig')}: give the file's encoding"
            " with --encoding (latin-1, cp1252, ...)",
        )

    def _skip_rest(self) -> str:
        """Skip to the end of a cut line; a quote if the skipped part held an odd number."""
        self.last_cut = self.number
        self.decoder.reset()  # drops a character the cut split in two
        quotes = 0
        while more := self.handle.readline(MAX_LINE_BYTES):
            self.bytes += len(more)
            quotes += more.count(QUOTE.encode())
            if more.endswith(b"\n"):
                break
        return QUOTE if quotes % 2 else ""
