r"""The audience condition language: parse it, print it, run it in SQL or in Python.

    city = "Paris" and plan != "free"
    age >= 18 and (country in ("FR", "BE") or not vip = "yes")
    signup_date < 2025-01-01 and email contains "@gmail."

Grammar. Keywords are case-insensitive; `not` binds tighter than `and`, `and` than `or`.

    condition  = and { "or" and }
    and        = not { "and" not }
    not        = "not" not | "(" condition ")" | comparison
    comparison = field ( op value | ["not"] "in" "(" value { "," value } ")"
                       | "contains" string )
    op         = "=" | "!=" | "<" | "<=" | ">" | ">="
    field      = [A-Za-z_][A-Za-z0-9_]* that is not a keyword
               | "`" any text, with \` and \\ as escapes "`"
    value      = string | number | date
    string     = '"' any text but empty, with \" and \\ as escapes '"'
    number     = ["-"] digits ["." digits]
    date       = YYYY-MM-DD ["T" HH:MM [":" SS] ["Z"]]     (a real date and time)

`email`, `name` and `status` name the contact's own columns; any other name is a key of
its `fields`. A condition has at most MAX_LENGTH characters (blanks between words
aside) and nests (parentheses and `not`) at most MAX_DEPTH deep, so that no condition can
exhaust a stack or a database's limits. Its canonical text (`to_text`) is never longer,
blanks aside: it parses back, to an equal tree.

Semantics, held exactly by `matches` and by `to_sql` on SQLite and on PostgreSQL:

- A field's *value* is text: the column, or a `fields` entry that is a JSON string. A
  field is *missing* when the key is absent, the column NULL, the text empty, or the entry
  not a string (null, number, boolean, list, object; the import stores only strings).
  Every comparison of a missing field is false.
- `!=` is exactly `not =`, and `not in` exactly `not (... in ...)`: a missing field
  matches both. Each comparison is true or false, never SQL NULL, so `not c` always
  selects exactly the contacts `c` does not.
- A string literal compares text exactly: `=` and `in` by equality, `contains` as a
  substring, case-sensitive, code point by code point (no Unicode normalisation); `%`
  and `_` are characters like any other. Strings are not ordered (`<` with a string is
  an error). An empty string literal is an error: it could never match.
- A number literal matches only values that are decimal numerals, `-?[0-9]+(\.[0-9]+)?`
  (ASCII digits; no `+`, exponent, spaces or separators), compared by value and exactly
  at any length: "10" > 9, "007" = 7, "-0" = 0, "2.50" = 2.5.
- A date literal matches only values shaped `YYYY-MM-DD`, optionally followed by a time
  `THH:MM` or `THH:MM:SS` (a space may stand for the `T`) and then an optional `Z`;
  the digits are not checked against the calendar. Both sides are normalised to
  `YYYY-MM-DDTHH:MM:SS` (a date is its midnight, missing seconds are 00, the `Z` is
  dropped: every time is UTC) and compared as text, which is chronological order. So
  `d = 2025-01-01` matches "2025-01-01" and "2025-01-01T00:00Z" but not "2025-01-01 09:30".
- `x in (v1, v2)` is `x = v1 or x = v2`, each value compared by its own kind.
- Hence `not age < 18` also selects contacts with no age or a non-numeric one, while
  `age >= 18` does not.

A NUL character can be neither stored in a field (the import refuses it) nor written
in a condition.

In SQL (`to_sql`), only SQLAlchemy expressions and bound parameters: each comparison is
an EXISTS (a `fields` key: over `json_each` on SQLite, over `fields ->> key` on
PostgreSQL, each checking that the JSON value is a string) or a COALESCE (a column), so
never NULL. Shapes are the regular expressions below (on SQLite, REGEXP is Python's `re`,
which SQLAlchemy's pysqlite dialect installs on each connection); numbers are compared
as text sort keys, exactly, with no cast; dates as their normalised text; `contains`
with instr/strpos, never LIKE; PostgreSQL orders text with COLLATE "C", as SQLite does.
"""

from __future__ import annotations

import operator
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeAlias

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    String,
    and_,
    case,
    cast,
    column,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    type_coerce,
)
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import Grouping
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.schema import Table

# The length limit leaves out the blanks between words, because the canonical text adds
# some: `to_text` of any condition `parse` accepts is accepted too. The blanks are capped
# apart, against a condition of megabytes of spaces.
MAX_LENGTH = 4_000
MAX_BLANKED_LENGTH = 4 * MAX_LENGTH
MAX_DEPTH = 50
COLUMNS = frozenset({"email", "name", "status"})
KEYWORDS = frozenset({"and", "or", "not", "in", "contains"})
ORDERING = ("<", "<=", ">", ">=")
OPERATORS = ("=", "!=", *ORDERING, "contains")
# Digits of the integer-digit count in a number's sort key: any value the database holds.
KEY_DIGITS = 10

# The value shapes, written so that Python's `re` (SQLite's REGEXP, as SQLAlchemy
# installs it) and PostgreSQL's `~` read them alike.
NUMBER_SHAPE = r"\A-?[0-9]+(\.[0-9]+)?\Z"
DATE_SHAPE = r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?Z?)?\Z"
_NUMBER_VALUE = re.compile(NUMBER_SHAPE)
_DATE_VALUE = re.compile(DATE_SHAPE)

Value: TypeAlias = str | Decimal | date  # a datetime is a date


# --- The tree --------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    """`field op value`; `op` is one of OPERATORS."""

    field: str
    op: str
    value: Value

    def __post_init__(self) -> None:
        _check_field(self.field)
        object.__setattr__(self, "value", _checked_value(self.value))
        if self.op not in OPERATORS:
            raise ValueError(f"unknown operator {self.op!r}")
        if self.op in ORDERING and isinstance(self.value, str):
            raise ValueError(f"{self.op!r} compares numbers and dates, not strings")
        if self.op == "contains" and not isinstance(self.value, str):
            raise ValueError("'contains' takes a string")


@dataclass(frozen=True)
class In:
    """`field in (values)`, or `field not in (values)` when `negated`."""

    field: str
    values: tuple[Value, ...]
    negated: bool = False

    def __post_init__(self) -> None:
        _check_field(self.field)
        values = tuple(_checked_value(v) for v in self.values)
        if not values:
            raise ValueError("'in' needs at least one value")
        object.__setattr__(self, "values", values)


@dataclass(frozen=True)
class Not:
    operand: Condition


@dataclass(frozen=True)
class And:
    operands: tuple[Condition, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", _at_least_two(self.operands, "and"))


@dataclass(frozen=True)
class Or:
    operands: tuple[Condition, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", _at_least_two(self.operands, "or"))


Condition: TypeAlias = Compare | In | Not | And | Or


def _at_least_two(operands: Any, word: str) -> tuple[Condition, ...]:
    operands = tuple(operands)
    if len(operands) < 2:
        raise ValueError(f"'{word}' joins at least two conditions")
    return operands


def _check_field(field: str) -> None:
    if not isinstance(field, str) or not field:
        raise ValueError("a field name is a non-empty string")
    _check_text(field)


def _check_text(text: str) -> None:
    if any(_unwritable(c) for c in text):
        raise ValueError("a NUL character or a lone surrogate in a condition")


def _unwritable(char: str) -> bool:
    """PostgreSQL text cannot hold NUL, and a lone surrogate is no character at all."""
    return char == "\0" or unicodedata.category(char) == "Cs"


def _checked_value(value: Any) -> Value:
    """The value as the tree keeps it: an int becomes a Decimal, an aware datetime UTC."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal | date):
        raise TypeError(f"a condition value is a str, Decimal, date or datetime: {value!r}")
    if isinstance(value, str):
        if not value:
            raise ValueError("an empty string: a missing or empty field matches only != and not in")
        _check_text(value)
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal) and not value.is_finite():
        raise ValueError(f"not a finite number: {value}")
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        if value.microsecond:
            raise ValueError("a time in a condition is to the second")
    return value


# --- Errors ----------------------------------------------------------------------------


class ConditionError(ValueError):
    """A condition that does not parse: why (`reason`) and where (`position`, 0-based)."""

    def __init__(self, reason: str, text: str, position: int) -> None:
        self.reason = reason
        self.text = text
        self.position = position
        super().__init__(f"{reason} at column {position + 1}:\n{_pointer(text, position)}")


# A long condition is shown as a window around the error, so the message stays readable.
_WINDOW_BEFORE = 40
_WINDOW = 76


def _pointer(text: str, position: int) -> str:
    """The text (or a window of it) on one line and a caret under `position`."""
    start = max(0, position - _WINDOW_BEFORE)
    end = min(len(text), start + _WINDOW)
    shown = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text[start:end])
    lead = "…" if start else ""
    tail = "…" if end < len(text) else ""
    return f"  {lead}{shown}{tail}\n  {' ' * (len(lead) + position - start)}^"


# --- Tokens ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # ( ) , op keyword field string number date end
    value: Any
    start: int
    source: str  # as written, for messages


_SPACE = " \t\r\n"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?Z?)?")
_GLUED = re.compile(r"[A-Za-z0-9_.:-]")  # what may not follow a number or a date
_OPERATOR = re.compile(r"!=|<=|>=|=|<|>")


class _Tokenizer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.written = 0  # characters of the tokens read so far, blanks between them aside

    def fail(self, reason: str, position: int) -> ConditionError:
        return ConditionError(reason, self.text, position)

    def after(self, previous: _Token | None) -> _Token:
        """The token after `previous` (None: the first). Read one at a time, so that the
        error reported is the first one from the left, whatever follows it."""
        i = 0 if previous is None else previous.start + len(previous.source)
        while i < len(self.text) and self.text[i] in _SPACE:
            i += 1
        if i == len(self.text):
            return _Token("end", None, i, "")
        token = self.token(i)
        self.written += len(token.source)
        if self.written > MAX_LENGTH:
            over = token.start + len(token.source) - (self.written - MAX_LENGTH)
            raise self.fail(
                f"a condition is at most {MAX_LENGTH:,} characters, blanks between words aside",
                over,
            )
        return token

    def token(self, i: int) -> _Token:
        char = self.text[i]
        if char in "(),":
            return _Token(char, char, i, char)
        if char == '"':
            return self.quoted(i, "string")
        if char == "`":
            return self.quoted(i, "field")
        if char.isascii() and (char.isdigit() or char == "-"):
            return self.literal(i)
        if match := _OPERATOR.match(self.text, i):
            return _Token("op", match.group(), i, match.group())
        if match := _IDENT.match(self.text, i):
            word = match.group()
            if word.lower() in KEYWORDS:
                return _Token("keyword", word.lower(), i, word)
            return _Token("field", word, i, word)
        raise self.fail(self.unexpected(char), i)

    def unexpected(self, char: str) -> str:
        if _unwritable(char):
            return "a NUL character or a lone surrogate"
        if char == "'":
            return "unexpected ': strings are written in double quotes"
        if char.isalpha():
            return f"unexpected {char!r}: write a field name with such characters in backquotes"
        return f"unexpected {char!r}"

    def quoted(self, start: int, kind: str) -> _Token:
        """A string or a backquoted name: the quote and the backslash are its escapes."""
        quote, parts, i = self.text[start], [], start + 1
        what = "a string" if kind == "string" else "a backquoted name"
        while True:
            j = _next_special(self.text, i, quote)
            if j < 0:
                raise self.fail(f"{what} that is never closed", start)
            parts.append(self.text[i:j])
            self.check_characters(i, j)
            if self.text[j] == quote:
                value = "".join(parts)
                if not value:
                    empty = "an empty string" if kind == "string" else "an empty field name"
                    raise self.fail(empty, start)
                return _Token(kind, value, start, self.text[start : j + 1])
            escaped = self.text[j + 1 : j + 2]
            if escaped not in (quote, "\\"):
                raise self.fail(f"unknown escape in {what}: only \\{quote} and \\\\ are escapes", j)
            parts.append(escaped)
            i = j + 2

    def check_characters(self, start: int, end: int) -> None:
        """No NUL (PostgreSQL text cannot hold one) and no lone surrogate (no character)."""
        for i in range(start, end):
            if _unwritable(self.text[i]):
                raise self.fail("a NUL character or a lone surrogate", i)

    def literal(self, i: int) -> _Token:
        """A date or a number, whichever is written here."""
        if match := _DATE.match(self.text, i):
            token = _Token("date", self.date(match), i, match.group())
        elif match := _NUMBER.match(self.text, i):
            token = _Token("number", Decimal(match.group()), i, match.group())
        elif self.text[i] == "-":
            raise self.fail("unexpected '-': a minus sign is part of a number, as in -5", i)
        else:
            raise self.fail("malformed number or date", i)
        if _GLUED.match(self.text, match.end()):
            raise self.fail("malformed number or date", i)
        return token

    def date(self, match: re.Match[str]) -> date:
        parts = [int(p) for p in match.groups() if p is not None]
        try:
            if len(parts) == 3:
                return date(*parts)
            return datetime(*parts)
        except ValueError:
            raise self.fail(f"{match.group()} is not a real date", match.start()) from None


def _next_special(text: str, start: int, quote: str) -> int:
    """Where the next quote or backslash is, or -1."""
    ends = [j for j in (text.find(quote, start), text.find("\\", start)) if j >= 0]
    return min(ends, default=-1)


# --- Parser ----------------------------------------------------------------------------


def parse(text: str) -> Condition:
    """The condition `text` states; ConditionError shows where and why it does not."""
    if not isinstance(text, str):
        raise TypeError("a condition is a str")
    if len(text) > MAX_BLANKED_LENGTH:
        raise ConditionError(
            f"a condition is at most {MAX_BLANKED_LENGTH:,} characters, blanks included"
            f" (this one has {len(text):,})",
            text,
            MAX_BLANKED_LENGTH,
        )
    return _Parser(text).condition()


class _Parser:
    """Recursive descent; only parentheses and `not` recurse, each counted against
    MAX_DEPTH, so a hostile condition cannot exhaust the stack."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokenizer = _Tokenizer(text)
        self.token = self.tokenizer.after(None)
        self.depth = 0

    def advance(self) -> _Token:
        token = self.token
        self.token = self.tokenizer.after(token)
        return token

    def at(self, kind: str, value: object = None) -> bool:
        return self.token.kind == kind and (value is None or self.token.value == value)

    def fail(self, reason: str, token: _Token | None = None) -> ConditionError:
        return ConditionError(reason, self.text, (token or self.token).start)

    def condition(self) -> Condition:
        if self.at("end"):
            raise self.fail("the condition is empty")
        result = self.disjunction()
        if self.at(")"):
            raise self.fail("unexpected ')': no '(' to close")
        if not self.at("end"):
            raise self.fail(f"expected 'and', 'or' or the end, found {_shown(self.token)}")
        return result

    def disjunction(self) -> Condition:
        operands = [self.conjunction()]
        while self.at("keyword", "or"):
            self.advance()
            operands.append(self.conjunction())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def conjunction(self) -> Condition:
        operands = [self.negation()]
        while self.at("keyword", "and"):
            self.advance()
            operands.append(self.negation())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def negation(self) -> Condition:
        if self.at("keyword", "not"):
            self.enter()
            self.advance()
            result: Condition = Not(self.negation())
        elif self.at("("):
            self.enter()
            opening = self.advance()
            result = self.disjunction()
            self.close(opening)
        else:
            return self.comparison()
        self.depth -= 1
        return result

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nested more than {MAX_DEPTH} deep")

    def close(self, opening: _Token) -> None:
        if self.at(")"):
            self.advance()
        elif self.at("end"):
            column = opening.start + 1
            raise self.fail(f"expected ')' to close the '(' at column {column}")
        else:
            raise self.fail(f"expected 'and', 'or' or ')', found {_shown(self.token)}")

    def comparison(self) -> Condition:
        if not self.at("field"):
            raise self.fail(self.not_a_field())
        field = self.advance().value
        if self.at("op"):
            return self.compared(field, self.advance())
        if self.at("keyword", "contains"):
            contains = self.advance()
            if self.at("number") or self.at("date"):
                raise self.fail("'contains' takes a string")
            return Compare(field, "contains", self.value(contains))
        if self.at("keyword", "in"):
            return In(field, self.values(self.advance()))
        if self.at("keyword", "not"):
            self.advance()
            if not self.at("keyword", "in"):
                raise self.fail("expected 'in' after 'not'")
            return In(field, self.values(self.advance()), negated=True)
        raise self.fail(
            f"expected an operator (=, !=, <, <=, >, >=, in, not in, contains) after"
            f" {_field_text(field)}, found {_shown(self.token)}"
        )

    def not_a_field(self) -> str:
        token = self.token
        if token.kind == "keyword":
            return (
                f"expected a field name, found the keyword {token.source!r}"
                f" (a field of that name is written `{token.source}`)"
            )
        return f"expected a field name, found {_shown(token)}"

    def compared(self, field: str, op: _Token) -> Compare:
        if op.value in ORDERING and self.at("string"):
            raise self.fail(
                f"{op.value!r} compares numbers and dates; a string takes only"
                " =, !=, in, not in and contains"
            )
        return Compare(field, op.value, self.value(op))

    def value(self, after: _Token) -> Value:
        if self.at("string") or self.at("number") or self.at("date"):
            return self.advance().value
        hint = " (a string is written in double quotes)" if self.at("field") else ""
        raise self.fail(f"expected a value after {after.source!r}{hint}")

    def values(self, after: _Token) -> tuple[Value, ...]:
        if not self.at("("):
            raise self.fail(f"expected '(' after {after.source!r}")
        opening = self.advance()
        values = [self.value(opening)]
        while self.at(","):
            values.append(self.value(self.advance()))
        if not self.at(")"):
            raise self.fail(f"expected ',' or ')' in the list, found {_shown(self.token)}")
        self.advance()
        return tuple(values)


def _shown(token: _Token) -> str:
    if token.kind == "end":
        return "the end"
    source = token.source if len(token.source) <= 30 else token.source[:29] + "…"
    return repr(source)


# --- Canonical text --------------------------------------------------------------------


def to_text(condition: Condition) -> str:
    """The condition in canonical form: lower-case keywords, single spaces, parentheses
    only where the tree needs them; `parse` gives back an equal tree."""
    match condition:
        case Compare(field, op, value):
            return f"{_field_text(field)} {op} {_value_text(value)}"
        case In(field, values, negated):
            listed = ", ".join(_value_text(v) for v in values)
            return f"{_field_text(field)} {'not in' if negated else 'in'} ({listed})"
        case Not(operand):
            return f"not {_nested(operand, (And, Or))}"
        case And(operands):
            return " and ".join(_nested(o, (And, Or)) for o in operands)
        case Or(operands):
            return " or ".join(_nested(o, (Or,)) for o in operands)
    raise TypeError(f"not a condition: {condition!r}")


def _nested(condition: Condition, grouped: tuple[type, ...]) -> str:
    text = to_text(condition)
    return f"({text})" if isinstance(condition, grouped) else text


def _field_text(field: str) -> str:
    if _IDENT.fullmatch(field) and field.lower() not in KEYWORDS:
        return field
    return "`" + field.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _value_text(value: Value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):  # seconds only when there are: never longer than written
        return value.isoformat(timespec="seconds" if value.second else "minutes")
    return value.isoformat()


# --- Evaluation in Python --------------------------------------------------------------

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def matches(condition: Condition, contact: Mapping[str, Any]) -> bool:
    """Whether `contact` ({"email", "name", "status", "fields"}) meets `condition`: the
    semantics of the module docstring, in plain Python (tests' oracle, previews)."""
    match condition:
        case Compare(field, "!=", value):
            return not _holds(_value_of(contact, field), "=", value)
        case Compare(field, op, value):
            return _holds(_value_of(contact, field), op, value)
        case In(field, values, negated):
            text = _value_of(contact, field)
            return any(_holds(text, "=", v) for v in values) != negated
        case Not(operand):
            return not matches(operand, contact)
        case And(operands):
            return all(matches(o, contact) for o in operands)
        case Or(operands):
            return any(matches(o, contact) for o in operands)
    raise TypeError(f"not a condition: {condition!r}")


def _value_of(contact: Mapping[str, Any], field: str) -> str | None:
    """The field's text, or None when it is missing."""
    source = contact if field in COLUMNS else (contact.get("fields") or {})
    value = source.get(field)
    return value if isinstance(value, str) and value else None


def _holds(text: str | None, op: str, literal_value: Value) -> bool:
    if text is None:
        return False
    if isinstance(literal_value, str):
        return literal_value in text if op == "contains" else text == literal_value
    if isinstance(literal_value, Decimal):
        return bool(_NUMBER_VALUE.search(text)) and _ORDER[op](Decimal(text), literal_value)
    if not _DATE_VALUE.search(text):
        return False
    return _ORDER[op](_normal_date_value(text), _normal_date_literal(literal_value))


def _normal_date_value(text: str) -> str:
    """A date-shaped value as YYYY-MM-DDTHH:MM:SS."""
    day, _, clock = text.rstrip("Z").replace(" ", "T").partition("T")
    return f"{day}T{(clock or '00:00') + ':00' * (clock.count(':') < 2)}"


def _normal_date_literal(value: date) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return f"{value.isoformat()}T00:00:00"


def _number_key(value: Decimal) -> str:
    """The magnitude of a number as text that sorts like it: its count of integer digits
    (KEY_DIGITS wide), then its digits without leading zeros nor trailing fraction zeros
    (12.50 -> "000000000212.5", 0.5 -> "0000000000.5", 0 -> "0000000000")."""
    # copy_abs, not abs(): arithmetic rounds to the context's 28 digits.
    whole, _, fraction = format(value.copy_abs(), "f").partition(".")
    whole, fraction = whole.lstrip("0"), fraction.rstrip("0")
    return f"{len(whole):0{KEY_DIGITS}d}{whole}" + ("." + fraction if fraction else "")


def _signed_key(value: Decimal) -> str:
    """A number as `_SQLBuilder.any_of` writes a value: "-" if below zero, and its key."""
    return ("-" if value < 0 else "") + _number_key(value)


# --- SQL -------------------------------------------------------------------------------


def to_sql(condition: Condition, contacts_table: Table) -> ColumnElement[bool]:
    """A WHERE clause on `contacts_table` (edm.db.models.Contact.__table__, or an alias
    of it) that selects exactly the contacts `matches` accepts, on SQLite and PostgreSQL.

    Every literal is a bound parameter. The SQL is built when the statement is compiled,
    for the dialect it is compiled for (statements holding it are not cached)."""
    return _ConditionClause(condition, contacts_table)


class _ConditionClause(FunctionElement[bool]):
    """A function element only for what that gives for free: the FROM it needs (the
    contacts table, through its `fields` column) and its place in an expression."""

    name = "edm_condition"
    type = Boolean()
    inherit_cache = False

    def __init__(self, condition: Condition, table: Table) -> None:
        self.condition = condition
        self.table = table
        super().__init__(table.c.fields)


@compiles(_ConditionClause)
def _compile(element: _ConditionClause, compiler: SQLCompiler, **kw: Any) -> str:
    dialect = _DIALECTS.get(compiler.dialect.name)
    if dialect is None:
        raise CompileError(
            f"audience conditions run on SQLite and PostgreSQL, not {compiler.dialect.name}"
        )
    built = _SQLBuilder(element.table, dialect).build(element.condition)
    return compiler.process(Grouping(built), **kw)


Text = ColumnElement[str]
Predicate = Callable[[Text], ColumnElement[bool]]


@dataclass(frozen=True)
class _Dialect:
    """What differs between the two databases."""

    field_atom: Callable[[Table, str, Predicate], ColumnElement[bool]]
    find: str  # the function giving a substring's 1-based position, 0 when absent
    pad: Callable[[ColumnElement[int]], Text]  # a count as KEY_DIGITS digits
    collation: str | None  # to order ASCII text byte by byte


def _sqlite_field(table: Table, field: str, predicate: Predicate) -> ColumnElement[bool]:
    """EXISTS over json_each: its `key` is the decoded key, which a JSON path is not
    (SQLite matches a path against the key as escaped in the stored text, so a key like
    `prénom` or one holding a quote cannot be reached by one)."""
    entry = func.json_each(table.c.fields).table_valued(
        column("key", String), column("value", String), column("type", String)
    )
    value = entry.c.value
    return exists().where(
        entry.c.key == field, entry.c.type == "text", value != "", predicate(value)
    )


def _postgresql_field(table: Table, field: str, predicate: Predicate) -> ColumnElement[bool]:
    """EXISTS over the one-row relation `nullif(fields ->> key, '') AS v(v)`: the
    predicate names the value `v` however often it uses it, instead of repeating the
    JSON access (and the database re-reading the JSON) each time."""
    entry = table.c.fields[field]
    text = type_coerce(entry.as_string(), String)
    value = func.nullif(text, "").table_valued(column("v", String)).render_derived().c.v
    return exists().where(func.json_typeof(entry) == "string", predicate(value))


_DIALECTS = {
    "sqlite": _Dialect(
        _sqlite_field, "instr", lambda n: _text("printf", f"%0{KEY_DIGITS}d", n), None
    ),
    "postgresql": _Dialect(
        _postgresql_field, "strpos", lambda n: _text("lpad", cast(n, String), KEY_DIGITS, "0"), "C"
    ),
}


def _never_null(expression: ColumnElement[bool]) -> ColumnElement[bool]:
    """NULL (a missing column met a comparison) as false: two-valued, so NOT is exact."""
    return func.coalesce(expression, false(), type_=Boolean)


def _text(name: str, *args: Any) -> Text:
    return getattr(func, name)(*args, type_=String)


class _SQLBuilder:
    """The condition as SQLAlchemy expressions for one dialect. Each comparison is an
    EXISTS or a COALESCE, never NULL, so NOT, AND and OR are two-valued."""

    def __init__(self, table: Table, dialect: _Dialect) -> None:
        self.table = table
        self.dialect = dialect

    def build(self, condition: Condition) -> ColumnElement[bool]:
        match condition:
            case Compare(field, "!=", value):
                return not_(self.atom(field, lambda v: self.holds(v, "=", value)))
            case Compare(field, op, value):
                return self.atom(field, lambda v: self.holds(v, op, value))
            case In(field, values, negated):
                hit = self.atom(field, lambda v: self.any_of(v, values))
                return not_(hit) if negated else hit
            case Not(operand):
                return not_(self.build(operand))
            case And(operands):
                return and_(*(self.build(o) for o in operands))
            case Or(operands):
                return or_(*(self.build(o) for o in operands))
        raise TypeError(f"not a condition: {condition!r}")

    def atom(self, field: str, predicate: Predicate) -> ColumnElement[bool]:
        """True when the field is present and `predicate` holds on its text."""
        if field in COLUMNS:
            value = type_coerce(self.table.c[field], String)
            return _never_null(and_(value != "", predicate(value)))
        return self.dialect.field_atom(self.table, field, predicate)

    def holds(self, value: Text, op: str, literal_value: Value) -> ColumnElement[bool]:
        if isinstance(literal_value, str):
            if op == "contains":
                return self.find(value, literal_value) > 0
            return value == literal_value
        if isinstance(literal_value, Decimal):
            return and_(value.regexp_match(NUMBER_SHAPE), self.number(value, op, literal_value))
        normal = self.ordered(_normal_date(value))
        bound = self.ordered(literal(_normal_date_literal(literal_value), String))
        return and_(value.regexp_match(DATE_SHAPE), _ORDER[op](normal, bound))

    def any_of(self, value: Text, values: tuple[Value, ...]) -> ColumnElement[bool]:
        """`in`, as one IN list per kind of value, so a long list stays one expression."""
        texts = [v for v in values if isinstance(v, str)]
        numbers = [_signed_key(v) for v in values if isinstance(v, Decimal)]
        dates = [_normal_date_literal(v) for v in values if isinstance(v, date)]
        parts = []
        if texts:
            parts.append(value.in_(texts))
        if numbers:
            signed = _case_text(self.negative(value), "-" + self.key(value), self.key(value))
            parts.append(and_(value.regexp_match(NUMBER_SHAPE), signed.in_(numbers)))
        if dates:
            parts.append(and_(value.regexp_match(DATE_SHAPE), _normal_date(value).in_(dates)))
        return or_(*parts)

    def find(self, text: Text, part: str) -> ColumnElement[int]:
        return getattr(func, self.dialect.find)(text, part, type_=Integer)

    def ordered(self, text: Text) -> Text:
        collation = self.dialect.collation
        return text.collate(collation) if collation else text

    # Numbers are compared as text, exactly: SQLite has no exact decimal type, and the
    # same text on PostgreSQL keeps the two databases to one definition.

    def key(self, numeral: Text) -> Text:
        """The magnitude's sort key, as `_number_key`: the count of integer digits
        (leading zeros dropped), padded, then the digits without leading zeros nor
        trailing fraction zeros."""
        trimmed = _text("ltrim", numeral, "-0")
        digits = self.find(trimmed + ".", ".") - 1
        has_point = self.find(trimmed, ".") > 0
        bare = _case_text(has_point, _text("rtrim", _text("rtrim", trimmed, "0"), "."), trimmed)
        return self.dialect.pad(digits) + bare

    def negative(self, numeral: Text) -> ColumnElement[bool]:
        """Below zero: a minus sign and a digit other than 0 (so "-0.0" is zero)."""
        return and_(_text("substr", numeral, 1, 1) == "-", _text("ltrim", numeral, "-0.") != "")

    def number(self, numeral: Text, op: str, literal_value: Decimal) -> ColumnElement[bool]:
        key, negative = self.ordered(self.key(numeral)), self.negative(numeral)
        bound = self.ordered(literal(_number_key(literal_value), String))
        if op == "=":
            return and_(negative if literal_value < 0 else not_(negative), key == bound)
        if literal_value < 0:
            below, above = and_(negative, key > bound), or_(not_(negative), key < bound)
        else:
            below, above = or_(negative, key < bound), and_(not_(negative), key > bound)
        return {"<": below, ">": above, "<=": not_(above), ">=": not_(below)}[op]


def _case_text(when: ColumnElement[bool], then: Any, otherwise: Any) -> Text:
    return type_coerce(case((when, then), else_=otherwise), String)


def _normal_date(value: Text) -> Text:
    """A date-shaped value as YYYY-MM-DDTHH:MM:SS: the `Z` trimmed, the separator made
    a `T`, and the time (from character 12) completed by its length."""
    core = _text("rtrim", value, "Z")
    clock = _text("substr", core, 12)
    completed = case(
        (func.length(core) == 10, literal("00:00:00", String)),
        (func.length(core) == 16, clock + ":00"),
        else_=clock,
    )
    return _text("substr", core, 1, 10) + "T" + type_coerce(completed, String)
