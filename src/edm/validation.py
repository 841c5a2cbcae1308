"""Range and text checks for every value a command stores.

The limits are the columns' own, as PostgreSQL enforces them: INTEGER is 32-bit, ids
are BIGINT, VARCHAR(n) counts characters, and text cannot hold NUL. The worker adds
one: a float column takes NaN and infinity, and no pace can use either. A value
refused here is a one-line error naming the option; a value let through would be a
driver traceback, or worse, a stored row the worker spins on. SQLite enforces none of
this, so the checks are the same on both databases.

Each check takes the exception class to raise, so a domain module raises its own
`ValueError` subclass and callers catching it see every refusal.
"""

from __future__ import annotations

import math
import time
import unicodedata
from datetime import UTC, datetime
from email.utils import getaddresses, parseaddr

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
ID_MAX = 2**63 - 1
# One send a day is the slowest pace worth a service; beyond it, disable the service.
MAX_INTERVAL_SECONDS = 86_400.0
# services.name and tasks.name are VARCHAR(200); tasks.from_addr is VARCHAR(320).
NAME_LENGTH = 200
ADDRESS_LENGTH = 320
# The last second datetime can show (9999-12-31T23:59:59Z).
MAX_EPOCH = 253_402_300_799.0
# A start time this far in the past is clock delay between typing and arriving, not intent.
PAST_TOLERANCE_SECONDS = 60.0
# Categories no one-line label may hold: control, unpaired surrogate, line and paragraph
# separators. They break tables, logs and the one-line errors that repeat the value.
_NOT_IN_LABELS = {"Cc", "Cs", "Zl", "Zp"}


def interval_seconds(value: float, option: str, *, error: type[ValueError]) -> float:
    """Finite and from 0 to a day: NaN compares false with everything, so a NaN pace
    never becomes due and its worker spins; infinity sends once and never again."""
    if not (math.isfinite(value) and 0.0 <= value <= MAX_INTERVAL_SECONDS):
        raise error(
            f"{option} must be a number of seconds from 0 to {MAX_INTERVAL_SECONDS:g}, not {value}"
        )
    return float(value) + 0.0  # -0.0 becomes 0.0


def whole_number(value: int, option: str, low: int, high: int, *, error: type[ValueError]) -> int:
    """Typer hands over Python ints of any size; a column takes a fixed width."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise error(f"{option} must be a whole number from {low} to {high}, not {value}")
    return value


def int32(value: int, option: str, *, error: type[ValueError], low: int = INT32_MIN) -> int:
    """A value for an INTEGER column: PostgreSQL's is 32-bit."""
    return whole_number(value, option, low, INT32_MAX, error=error)


def record_id(value: int, what: str, *, error: type[ValueError]) -> int:
    """An id to look up: ids are BIGINT, and SQLite's driver raises OverflowError past them."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ID_MAX:
        raise error(f"unknown {what} {value}: ids are whole numbers from 1 to {ID_MAX}")
    return value


def db_text(value: str, what: str, *, error: type[ValueError]) -> str:
    """Text PostgreSQL can store: no NUL, and encodable as UTF-8."""
    if "\x00" in value:
        raise error(f"{what} must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not valid text (it has an unpaired surrogate)") from None
    return value


def label(value: str, what: str, *, error: type[ValueError], max_length: int = NAME_LENGTH) -> str:
    """A name shown on one line: stripped, non-empty, within its column, no control characters."""
    value = value.strip()
    if not value:
        raise error(f"{what} must not be empty")
    if len(value) > max_length:
        raise error(f"{what} must be at most {max_length} characters, not {len(value)}")
    bad = next((c for c in value if unicodedata.category(c) in _NOT_IN_LABELS), None)
    if bad is not None:
        raise error(f"{what} must not contain control characters such as {bad!r}")
    return value


def options(values: dict[str, str], *, error: type[ValueError]) -> dict[str, str]:
    """Provider options: keys are labels, values any text the database can store."""
    checked: dict[str, str] = {}
    for key, value in values.items():
        name = label(key, "an --option key", error=error)
        checked[name] = db_text(value, f"--option {name}", error=error)
    return checked


def sender(value: str, option: str, *, error: type[ValueError]) -> str:
    """`Name <a@b.c>` or `a@b.c`: one address, and nothing that could break a header."""
    from email_validator import EmailNotValidError, validate_email

    value = value.strip()
    wrong = f"{option} must be an address such as 'News <news@example.com>', not {value!r}"
    if len(value) > ADDRESS_LENGTH:
        raise error(f"{option} must be at most {ADDRESS_LENGTH} characters, not {len(value)}")
    if not value or any(unicodedata.category(c) in _NOT_IN_LABELS for c in value):
        raise error(wrong)
    if len(getaddresses([value])) != 1:
        raise error(wrong)
    try:
        validate_email(parseaddr(value)[1], check_deliverability=False)
    except EmailNotValidError as exc:
        raise error(f"{wrong}: {exc}") from None
    return value


def start_time(value: float, option: str, *, error: type[ValueError]) -> float:
    """A time to start at: not in the past, beyond a little clock delay.

    A time up to PAST_TOLERANCE_SECONDS ago is kept as given: the task is scheduled and
    upkeep starts it at its next round, as for any time that has just come.
    """
    if not (math.isfinite(value) and 0.0 <= value <= MAX_EPOCH):
        raise error(f"{option} must be a time from 1970 to 9999, not {value}")
    if value < time.time() - PAST_TOLERANCE_SECONDS:
        shown = datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
        raise error(
            f"{option} {shown} is in the past: give a later time, or 'now' to start at once"
        )
    return float(value)


def service_names(value: str, option: str, *, error: type[ValueError]) -> list[str]:
    """Comma-separated names, each once; naming none is an error, not "every service"."""
    names = list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if not names:
        raise error(f"{option} names no service: give one or more names separated by commas")
    return names


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str, option: str, *, error: type[ValueError] = ValueError) -> float:
    """`30m`, `2h`, `1d`, `90s` or a number of seconds, as seconds (more than 0)."""
    cleaned = text.strip().lower()
    unit = _DURATION_UNITS.get(cleaned[-1:])
    number = cleaned[:-1] if unit else cleaned
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise error(f"{option} must be a duration such as 30m, 2h or 1d, not {text!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise error(f"{option} must be more than 0, not {text!r}")
    return seconds
