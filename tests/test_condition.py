"""The audience condition language: its grammar, its canonical text, and its SQL held to
the Python evaluation (`matches`) on SQLite and PostgreSQL alike."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, and_, delete, func, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import CompileError

from edm.audience.condition import (
    COLUMNS,
    MAX_BLANKED_LENGTH,
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Compare,
    Condition,
    ConditionError,
    In,
    Not,
    Or,
    Value,
    matches,
    parse,
    to_sql,
    to_text,
)
from edm.contacts import add_contacts
from edm.db.models import CONTACT_STATUSES, Contact

CONTACTS = Contact.__table__
DROP = "'; DROP TABLE contacts; --"


def c(field: str, op: str, value: object) -> Compare:
    return Compare(field, op, value)  # type: ignore[arg-type]


# --- Grammar ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ('city = "Paris"', c("city", "=", "Paris")),
        ("age >= 18", c("age", ">=", Decimal(18))),
        ("x != -3.50", c("x", "!=", Decimal("-3.50"))),
        ("x<=0", c("x", "<=", Decimal(0))),
        ("d < 2025-01-01", c("d", "<", date(2025, 1, 1))),
        ("d > 2025-01-01T10:30", c("d", ">", datetime(2025, 1, 1, 10, 30))),
        ("d > 2025-01-01T10:30:05Z", c("d", ">", datetime(2025, 1, 1, 10, 30, 5))),
        ('email contains "@gmail."', c("email", "contains", "@gmail.")),
        ('x = "say \\"hi\\" \\\\ bye"', c("x", "=", 'say "hi" \\ bye')),
        ('x = "50%_off\nline"', c("x", "=", "50%_off\nline")),
        ('`first name` = "Ann"', c("first name", "=", "Ann")),
        ('`a\\`b\\\\c` = "v"', c("a`b\\c", "=", "v")),
        ('`and` = "v"', c("and", "=", "v")),
        ('country in ("FR", "BE")', In("country", ("FR", "BE"))),
        (
            "n NOT IN (1, 2.5, 2025-01-01)",
            In("n", (Decimal(1), Decimal("2.5"), date(2025, 1, 1)), True),
        ),
        ('x In ("a")', In("x", ("a",))),
        ('NOT vip = "yes"', Not(c("vip", "=", "yes"))),
        ('not not vip = "yes"', Not(Not(c("vip", "=", "yes")))),
        ("((((x = 1))))", c("x", "=", Decimal(1))),
        ("_x1 = 1", c("_x1", "=", Decimal(1))),
        (
            "Notes = 1 AnD Order = 2",
            And((c("Notes", "=", Decimal(1)), c("Order", "=", Decimal(2)))),
        ),
    ],
)
def test_parses(text: str, tree: Condition) -> None:
    assert parse(text) == tree


def test_precedence_not_then_and_then_or() -> None:
    a, b, cc = (c(name, "=", Decimal(1)) for name in "abc")
    assert parse("a = 1 or b = 1 and c = 1") == Or((a, And((b, cc))))
    assert parse("a = 1 and b = 1 or c = 1") == Or((And((a, b)), cc))
    assert parse("not a = 1 and b = 1") == And((Not(a), b))
    assert parse("not a = 1 or b = 1") == Or((Not(a), b))
    assert parse("not (a = 1 or b = 1)") == Not(Or((a, b)))
    assert parse("a = 1 and (b = 1 or c = 1)") == And((a, Or((b, cc))))
    assert parse("a = 1 or b = 1 or c = 1") == Or((a, b, cc))
    assert parse("(a = 1 or b = 1) or c = 1") == Or((Or((a, b)), cc))


def test_the_example_conditions() -> None:
    assert parse('city = "Paris" and plan != "free"') == And(
        (c("city", "=", "Paris"), c("plan", "!=", "free"))
    )
    assert parse('age >= 18 and (country in ("FR", "BE") or not vip = "yes")') == And(
        (
            c("age", ">=", Decimal(18)),
            Or((In("country", ("FR", "BE")), Not(c("vip", "=", "yes")))),
        )
    )
    assert parse('signup_date < 2025-01-01 and email contains "@gmail."') == And(
        (c("signup_date", "<", date(2025, 1, 1)), c("email", "contains", "@gmail."))
    )


def test_error_message_shows_the_condition_and_a_caret() -> None:
    with pytest.raises(ConditionError) as caught:
        parse("city = and x")
    assert str(caught.value) == (
        "expected a value after '=' at column 8:\n  city = and x\n         ^"
    )
    assert caught.value.position == 7
    assert caught.value.reason == "expected a value after '='"


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("", 0, "the condition is empty"),
        ("   ", 3, "the condition is empty"),
        ("city", 4, "expected an operator"),
        ("city foo @", 5, "expected an operator"),
        ("= 5", 0, "expected a field name, found '='"),
        ("and = 5", 0, "expected a field name, found the keyword 'and'"),
        ("x = 1 and", 9, "expected a field name, found the end"),
        ('city = "Paris', 7, "a string that is never closed"),
        ('city = "a\\nb"', 9, "unknown escape in a string"),
        ("`first name = 1", 0, "a backquoted name that is never closed"),
        ('`a\\b` = "x"', 2, "unknown escape in a backquoted name"),
        ('city < "x"', 7, "'<' compares numbers and dates"),
        ('city >= "x" @', 8, "'>=' compares numbers and dates"),
        ("city contains 5", 14, "'contains' takes a string"),
        ("city contains 2025-01-01", 14, "'contains' takes a string"),
        ('city in "x"', 8, "expected '(' after 'in'"),
        ("city in ()", 9, "expected a value after '('"),
        ('city in ("a",)', 13, "expected a value after ','"),
        ('city in ("a" "b")', 13, "expected ',' or ')' in the list"),
        ("city not = 5", 9, "expected 'in' after 'not'"),
        ("(city = 1", 9, "expected ')' to close the '(' at column 1"),
        ("(city = 1 x", 10, "expected 'and', 'or' or ')'"),
        ("city = 1)", 8, "unexpected ')'"),
        ("city = 1 country = 2", 9, "expected 'and', 'or' or the end"),
        ("city = 1 not x = 2", 9, "expected 'and', 'or' or the end"),
        ("city = 'x'", 7, "unexpected ': strings are written in double quotes"),
        ("city = Paris", 7, "expected a value after '=' (a string is written in double quotes)"),
        ("city <> 1", 6, "expected a value after '<'"),
        ("city ! 1", 5, "unexpected '!'"),
        ("d < 2025-02-30", 4, "2025-02-30 is not a real date"),
        ("d < 2025-01-01T24:00", 4, "2025-01-01T24:00 is not a real date"),
        ("d < 0000-01-01", 4, "0000-01-01 is not a real date"),
        ("d < 2025-01-01T10", 4, "malformed number or date"),
        ("x = 18abc", 4, "malformed number or date"),
        ("x = 1.", 4, "malformed number or date"),
        ("x = 1.5.2", 4, "malformed number or date"),
        ("x = - 5", 4, "unexpected '-'"),
        ("x = --5", 4, "unexpected '-'"),
        ('x = ""', 4, "an empty string"),
        ("`` = 1", 0, "an empty field name"),
        ("prénom = 1", 2, "unexpected 'é': write a field name with such characters in backquotes"),
        ('x = "a\x00"', 6, "a NUL character"),
        ("x = 1 \x00", 6, "a NUL character"),
        ('x = "\ud800"', 5, "a NUL character or a lone surrogate"),
        ("x @ 1", 2, "unexpected '@'"),
        ("x = 1 and and y = 2", 10, "expected a field name, found the keyword 'and'"),
    ],
)
def test_rejects(text: str, position: int, reason: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse(text)
    assert caught.value.position == position, str(caught.value)
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert f"at column {position + 1}:\n" in str(caught.value)


def test_the_caret_stands_under_the_position_in_a_long_condition() -> None:
    text = " and ".join(f"f{i} = {i}" for i in range(60)) + " and f = @"
    with pytest.raises(ConditionError) as caught:
        parse(text)
    shown, caret = str(caught.value).splitlines()[1:]
    assert len(shown) < 100
    assert shown[caret.index("^")] == "@"


def test_a_line_break_in_the_condition_keeps_the_caret_in_place() -> None:
    with pytest.raises(ConditionError) as caught:
        parse('city = "a"\n  and\tx =')
    shown, caret = str(caught.value).splitlines()[1:]
    assert caught.value.position == len('city = "a"\n  and\tx =')
    assert caret.index("^") == len(shown)


def written(text: str) -> int:
    """A condition's length as the limit counts it: blanks between words aside."""
    return len("".join(text.split()))


def test_length_limit_leaves_blanks_between_words_aside() -> None:
    text = as_many_as_fit(" or ", ["f=1"] * MAX_LENGTH)
    text += "1" * (MAX_LENGTH - written(text))  # the last number takes what is left
    assert written(text) == MAX_LENGTH
    assert parse(text)
    with pytest.raises(ConditionError) as caught:
        parse(text + "1")
    assert caught.value.position == len(text)
    assert "at most 4,000 characters, blanks between words aside" in caught.value.reason
    # Canonical text adds blanks ("f = 1"), so it could not otherwise be parsed back.
    assert len(to_text(parse(text))) > MAX_LENGTH
    assert parse(to_text(parse(text))) == parse(text)


def test_blanks_are_capped_apart() -> None:
    assert parse("x = 1" + " " * (MAX_BLANKED_LENGTH - 5)) == c("x", "=", 1)
    with pytest.raises(ConditionError) as caught:
        parse("x = 1" + " " * (MAX_BLANKED_LENGTH - 4))
    assert caught.value.position == MAX_BLANKED_LENGTH
    assert "at most 16,000 characters, blanks included" in caught.value.reason


@pytest.mark.parametrize("opening", ["(", "not ", "not ("])
def test_nesting_limit(opening: str) -> None:
    closing = ")" * opening.count("(")
    depth = MAX_DEPTH // len(opening.split())  # "not (" nests twice per step
    ok = opening * depth + "x = 1" + closing * depth
    assert parse(ok)
    deep = opening * (depth + 1) + "x = 1" + closing * (depth + 1)
    with pytest.raises(ConditionError) as caught:
        parse(deep)
    assert caught.value.reason == f"nested more than {MAX_DEPTH} deep"


def test_hostile_nesting_within_the_length_limit_is_refused_not_a_crash() -> None:
    for text in ("(" * (MAX_LENGTH - 5) + "x=1", "not " * 1330 + "x=1"):
        with pytest.raises(ConditionError, match="nested more than"):
            parse(text)


def test_a_long_flat_condition_parses() -> None:
    text = " or ".join(f"f = {i}" for i in range(MAX_LENGTH // 11))
    assert len(parse(text).operands) == MAX_LENGTH // 11  # type: ignore[union-attr]


# --- The tree --------------------------------------------------------------------------


def test_tree_values_are_checked_and_normalised() -> None:
    assert c("x", "=", 5).value == Decimal(5)
    paris = timezone(timedelta(hours=2))
    assert c("x", "<", datetime(2025, 1, 1, 12, tzinfo=paris)).value == datetime(2025, 1, 1, 10)
    assert In("x", ["a", 1]).values == ("a", Decimal(1))  # type: ignore[arg-type]
    for bad in (
        lambda: c("x", "<", "a"),
        lambda: c("x", "contains", Decimal(1)),
        lambda: c("x", "~", "a"),
        lambda: c("x", "=", ""),
        lambda: c("", "=", "a"),
        lambda: c("x", "=", "a\x00"),
        lambda: c("x", "=", Decimal("NaN")),
        lambda: c("x", "=", datetime(2025, 1, 1, 0, 0, 0, 5)),
        lambda: In("x", ()),
        lambda: And((c("x", "=", "a"),)),
        lambda: Or(()),
    ):
        with pytest.raises(ValueError):
            bad()
    for wrong in (True, 1.5, None, ["a"]):
        with pytest.raises(TypeError):
            c("x", "=", wrong)


# --- Canonical text --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ('A = 1 AND b = "x" OR NOT c IN (1, "a")', 'A = 1 and b = "x" or not c in (1, "a")'),
        ("((a = 1))", "a = 1"),
        ("(a = 1 or b = 2) and c = 3", "(a = 1 or b = 2) and c = 3"),
        ("a = 1 or (b = 2 or c = 3)", "a = 1 or (b = 2 or c = 3)"),
        ("(a = 1 and b = 2) or c = 3", "a = 1 and b = 2 or c = 3"),
        ("a = 1 and (b = 2 and c = 3)", "a = 1 and (b = 2 and c = 3)"),
        ("not (a = 1 and b = 2)", "not (a = 1 and b = 2)"),
        ("not (not a = 1)", "not not a = 1"),
        ('`first name` = "x\\"y\\\\"', '`first name` = "x\\"y\\\\"'),
        ('`city` = "x"', 'city = "x"'),
        ('`IN` = "x"', '`IN` = "x"'),
        ("x not in (007.50,-0)", "x not in (7.50, -0)"),
        ("d >= 2025-01-01T10:00:00Z", "d >= 2025-01-01T10:00"),
        ("d >= 2025-01-01T10:00:01", "d >= 2025-01-01T10:00:01"),
        ("d>=0001-01-01", "d >= 0001-01-01"),
        ('x contains "%"', 'x contains "%"'),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert to_text(parse(text)) == canonical
    assert parse(canonical) == parse(text)


FIELD_NAMES = st.one_of(
    st.sampled_from(
        ["city", "email", "name", "status", "first name", "and", "NOT", 'q"k', "a`b\\", "prénom"]
    ),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1),
)
STRINGS = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12
)
NUMBERS = st.builds(  # from text: Decimal arithmetic would round to 28 digits
    lambda digits, places: Decimal(f"{digits}E-{places}"),
    st.integers(-(10**40), 10**40),
    st.integers(0, 25),
)
DATES = st.one_of(st.dates(), st.datetimes().map(lambda moment: moment.replace(microsecond=0)))


def comparisons(
    fields: st.SearchStrategy[str],
    strings: st.SearchStrategy[str],
    numbers: st.SearchStrategy[Decimal],
    dates: st.SearchStrategy[date],
) -> st.SearchStrategy[Condition]:
    values = st.one_of(strings, numbers, dates)
    return st.one_of(
        st.builds(Compare, fields, st.sampled_from(["=", "!="]), values),
        st.builds(
            Compare, fields, st.sampled_from(["<", "<=", ">", ">="]), st.one_of(numbers, dates)
        ),
        st.builds(Compare, fields, st.just("contains"), strings),
        st.builds(In, fields, st.lists(values, min_size=1, max_size=4).map(tuple), st.booleans()),
    )


def trees(
    leaves: st.SearchStrategy[Condition], max_leaves: int = 8
) -> st.SearchStrategy[Condition]:
    def branches(children: st.SearchStrategy[Condition]) -> st.SearchStrategy[Condition]:
        several = st.lists(children, min_size=2, max_size=3).map(tuple)
        return st.one_of(st.builds(Not, children), st.builds(And, several), st.builds(Or, several))

    return st.recursive(leaves, branches, max_leaves=max_leaves)


@settings(max_examples=300, deadline=None)
@given(trees(comparisons(FIELD_NAMES, STRINGS, NUMBERS, DATES)))
def test_printed_trees_parse_back_equal(tree: Condition) -> None:
    text = to_text(tree)
    assert parse(text) == tree
    assert to_text(parse(text)) == text


CONDITION_ALPHABET = st.sampled_from(
    list(' ()=!<>,"`\\-.:TZ0123456789') + ["and", "or", "not", "in", "contains", "x", "é", "\n"]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(CONDITION_ALPHABET, max_size=40).map("".join))
def test_any_text_parses_or_fails_with_a_position(text: str) -> None:
    try:
        tree = parse(text)
    except ConditionError as exc:
        assert 0 <= exc.position <= len(text)
        assert f"at column {exc.position + 1}:" in str(exc)
    else:
        assert parse(to_text(tree)) == tree


# --- Semantics, on both databases ------------------------------------------------------


def reset(engine: Engine, contacts: list[dict]) -> list[dict]:
    """The contacts table holds exactly `contacts`; they come back as stored."""
    with engine.begin() as conn:
        conn.execute(delete(CONTACTS))
    if contacts:
        add_contacts(engine, contacts)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                CONTACTS.c.id,
                CONTACTS.c.email,
                CONTACTS.c.name,
                CONTACTS.c.status,
                CONTACTS.c.fields,
            )
        )
        return [dict(row._mapping) for row in rows]


def selected(engine: Engine, condition: Condition) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(select(CONTACTS.c.id).where(to_sql(condition, CONTACTS))).scalars())


def expected(rows: list[dict], condition: Condition) -> set[int]:
    return {row["id"] for row in rows if matches(condition, row)}


LONG = "12345678901234567890.000000000000000000001"
# Conditions on `x`, and for each stored value (None: no key) whether it matches.
SEMANTICS = [
    ('x = "Paris"', [("Paris", 1), ("paris", 0), ("Paris ", 0), ("", 0), (None, 0)]),
    ('x != "Paris"', [("Paris", 0), ("paris", 1), ("", 1), (None, 1), (5, 1)]),
    ('x contains "%"', [("50%", 1), ("50", 0), ("%", 1), ("a_b", 0)]),
    ('x contains "_"', [("a_b", 1), ("ab", 0), ("%", 0)]),
    ('x contains "ar"', [("Paris", 1), ("PARIS", 0)]),
    ("x > 9", [("10", 1), ("9", 0), ("9.0001", 1), ("10a", 0), ("1e3", 0), ("", 0)]),
    ("x = 7", [("007", 1), ("7.000", 1), ("+7", 0), (" 7", 0), ("7.", 0), ("٧", 0)]),
    ("x = 0", [("-0", 1), ("0.000", 1), ("-0.0", 1), ("0", 1), (".0", 0)]),
    ("x < 0", [("-0", 0), ("-0.001", 1), ("-12", 1), ("0", 0)]),
    ("x >= -3.5", [("-3.50", 1), ("-3.51", 0), ("-3", 1), ("3", 1), ("-10", 0)]),
    ("x < 1000000000000000000001", [("1000000000000000000000.9", 1), ("1" + "0" * 20 + "1", 0)]),
    ("x > 0.5", [("0.50", 0), ("0.500001", 1), ("1", 1)]),
    # Beyond Decimal's 28 digits of arithmetic and a double's 17: still exact.
    (f"x = {LONG}", [(LONG, 1), (LONG[:-1] + "2", 0), (LONG[:20], 0), ("0" + LONG + "00", 1)]),
    (f"x < {LONG}", [(LONG, 0), (LONG[:-1] + "09", 1), (LONG[:20], 1), ("1" + LONG, 0)]),
    (f"x > -{LONG}", [("-" + LONG, 0), ("-" + LONG[:-1] + "09", 1), ("-1" + LONG, 0)]),
    # JSON that is not a string is missing: the import stores only strings.
    ("x = 5", [(5, 0), (5.0, 0), (True, 0), (None, 0), (["5"], 0), ({"5": "5"}, 0)]),
    ("x < 2025-01-01", [("2024-12-31", 1), ("2024-12-31T23:59:59Z", 1), ("2025-01-01", 0)]),
    ("x = 2025-01-01", [("2025-01-01", 1), ("2025-01-01T00:00", 1), ("2025-01-01 00:00:00Z", 1)]),
    ("x = 2025-01-01T09:30", [("2025-01-01 09:30", 1), ("2025-01-01T09:30:00Z", 1)]),
    ("x > 2025-01-01", [("2025-13-45", 1), ("2025-1-2", 0), ("2025-01-02t00:00", 0)]),
    ("x > 2025-01-01", [("20250102", 0), ("2025-01-01Z", 0), ("2025-01-02T10:00Z", 1)]),
    ("x >= 2025-01-01T10:00:01", [("2025-01-01T10:00", 0), ("2025-01-01T10:00:01", 1)]),
    ('x in ("a", 7, 2025-01-01)', [("a", 1), ("7.0", 1), ("2025-01-01T00:00:00", 1), ("b", 0)]),
    ('x in ("a", "b", "c")', [("a", 1), ("b", 1), ("c", 1), ("d", 0), ("A", 0)]),
    ("x in (1, -2.5, 30)", [("1", 1), ("-2.50", 1), ("030", 1), ("2.5", 0), ("3", 0)]),
    ("x in (2025-01-01, 2025-01-02T10:00)", [("2025-01-01", 1), ("2025-01-02 10:00", 1)]),
    ('x not in ("a", 7)', [("a", 0), ("07", 0), ("b", 1), ("", 1), (None, 1)]),
    ('not x = "a"', [("a", 0), ("b", 1), ("", 1), (None, 1)]),
    ("not x < 18", [("17", 0), ("18", 1), ("abc", 1), ("", 1)]),
    ('x = "\'; DROP TABLE contacts; --"', [(DROP, 1), ("x", 0)]),
    ('x = "a\\"b\\\\c"', [('a"b\\c', 1), ('a"b\\\\c', 0)]),
    ('x = "😀"', [("😀", 1), ("😃", 0)]),
    ('x = "é"', [("é", 1), ("e\u0301", 0)]),
]


def test_semantics_table(engine: Engine) -> None:
    for text, cases in SEMANTICS:
        condition = parse(text)
        contacts = [
            {"email": f"c{i}@example.com", "fields": {} if value is None else {"x": value}}
            for i, (value, _) in enumerate(cases)
        ]
        rows = reset(engine, contacts)
        hits = {f"c{i}@example.com" for i, (_, hit) in enumerate(cases) if hit}
        want = {row["id"] for row in rows if row["email"] in hits}
        assert expected(rows, condition) == want, text
        assert selected(engine, condition) == want, text


def test_columns_are_the_contacts_own(engine: Engine) -> None:
    rows = reset(
        engine,
        [
            {"email": "Ann@Example.com", "name": "Ann", "fields": {"email": "x", "name": "Bob"}},
            {"email": "bob@example.com", "status": "bounced"},
            {"email": "cy@example.com", "name": ""},
        ],
    )
    ids = {row["email"]: row["id"] for row in rows}
    for text, want in [
        ('email = "ann@example.com"', {"ann@example.com"}),  # stored lower-cased
        ('email contains "bob"', {"bob@example.com"}),
        ('name = "Ann"', {"ann@example.com"}),
        ('name != "Ann"', {"bob@example.com", "cy@example.com"}),
        ('status = "bounced"', {"bob@example.com"}),
        ('status in ("active")', {"ann@example.com", "cy@example.com"}),
    ]:
        assert selected(engine, parse(text)) == {ids[e] for e in want}, text
        assert expected(rows, parse(text)) == {ids[e] for e in want}, text


def test_to_sql_keeps_its_place_in_a_larger_expression(engine: Engine) -> None:
    rows = reset(
        engine,
        [
            {"email": "a@example.com", "fields": {"a": "1"}},
            {"email": "b@example.com", "status": "bounced", "fields": {"b": "1"}},
        ],
    )
    first = rows[0]["id"]
    either = to_sql(parse("a = 1 or b = 1"), CONTACTS)
    with engine.connect() as conn:
        active = conn.execute(
            select(CONTACTS.c.id).where(and_(CONTACTS.c.status == "active", either))
        ).scalars()
        assert set(active) == {first}
        count = conn.execute(select(func.count()).where(either)).scalar()
        assert count == 2  # the FROM comes with the condition
        negated = conn.execute(select(CONTACTS.c.id).where(~either)).scalars()
        assert list(negated) == []


def test_sql_on_other_databases_is_refused() -> None:
    with pytest.raises(CompileError, match="SQLite and PostgreSQL"):
        select(CONTACTS.c.id).where(to_sql(parse("a = 1"), CONTACTS)).compile(
            dialect=mysql.dialect()
        )


def test_literals_are_bound_parameters_never_sql_text() -> None:
    condition = parse(
        f'`{DROP}` = "{DROP}" or x contains "{DROP}" or y in ("{DROP}", 7) or z < 2025-01-01'
    )
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        compiled = select(CONTACTS.c.id).where(to_sql(condition, CONTACTS)).compile(dialect=dialect)
        assert "DROP" not in str(compiled)
        assert "2025" not in str(compiled)


HOSTILE = [
    DROP,
    "Robert'); DROP TABLE contacts;--",
    '" OR 1=1 --',
    "' OR '1'='1",
    "\\'; DELETE FROM contacts; --",
    "%",
    "_",
    "%%",
    "a%b_c",
    "$.x",
    '$."x"',
    "\\",
    '"',
    "`",
]


def test_a_condition_with_sql_in_it_is_data(engine: Engine) -> None:
    contacts = [
        {"email": f"h{i}@example.com", "name": value[:200], "fields": {"x": value, value: "k"}}
        for i, value in enumerate(HOSTILE)
    ]
    rows = reset(engine, contacts)
    by_value = {row["fields"]["x"]: row["id"] for row in rows}
    for value in HOSTILE:
        quoted = to_text(c("x", "=", value))
        for text, want in [
            (quoted, {by_value[value]}),
            (to_text(c("name", "=", value)), {by_value[value]}),
            (to_text(c(value, "=", "k")), {by_value[value]}),
            (to_text(c("x", "contains", value)), {by_value[v] for v in HOSTILE if value in v}),
            (
                to_text(In("x", (value, "zz"), negated=True)),
                set(by_value.values()) - {by_value[value]},
            ),
        ]:
            assert selected(engine, parse(text)) == want, text
            assert expected(rows, parse(text)) == want, text
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CONTACTS)).scalar() == len(HOSTILE)


def as_many_as_fit(joiner: str, parts: list[str], room: int = MAX_LENGTH) -> str:
    """`parts` joined, as many as `room` characters hold, blanks between words aside."""
    text = parts[0]
    for part in parts[1:]:
        if written(text + joiner + part) > room:
            break
        text += joiner + part
    return text


WIDEST = {
    # The most comparisons a condition can hold: SQLite's expression depth (1,000).
    "comparisons": as_many_as_fit(" or ", [f"f={i % 9}" for i in range(MAX_LENGTH)]),
    # The most SQL per character (numbers are compared as text): SQLite's parameters.
    "orderings": as_many_as_fit(" and ", [f"f>-{i % 9}" for i in range(MAX_LENGTH)]),
    "list": as_many_as_fit(",", ["f in (1", *(str(i % 9) for i in range(MAX_LENGTH))], 3999) + ")",
}


@pytest.mark.parametrize("shape", WIDEST)
def test_the_widest_conditions_run(engine: Engine, shape: str) -> None:
    """The widest conditions the length limit admits stay within the databases' limits
    (SQLite: expression depth 1,000, 32,766 parameters), and exact."""
    rows = reset(
        engine, [{"email": f"c{i}@example.com", "fields": {"f": str(i)}} for i in range(5)]
    )
    text = WIDEST[shape]
    assert MAX_LENGTH - 10 < written(text) <= MAX_LENGTH
    condition = parse(text)
    assert selected(engine, condition) == expected(rows, condition)


def test_the_deepest_condition_runs(engine: Engine) -> None:
    rows = reset(
        engine, [{"email": f"c{i}@example.com", "fields": {"f": str(i)}} for i in range(5)]
    )
    text = "not (" * (MAX_DEPTH // 2) + "f >= 2" + ")" * (MAX_DEPTH // 2)
    condition = parse(text)
    assert selected(engine, condition) == expected(rows, condition)


# --- Random contacts, random conditions ------------------------------------------------

KEYS = ["city", "age", "first name", 'q"k', "prénom", "50%_off", DROP]
INTERESTING = [
    "Paris", "paris", "Par", "10", "9", "-3.50", "-3.5", "0", "-0", "0.0", "007", "7",
    "1e3", " 1", "1.", ".5", "+1", "٣", "12345678901234567890.000000000000000000001",
    "2025-01-01", "2025-01-01T00:00", "2025-01-01T10:00", "2025-01-01 10:00:00",
    "2024-12-31T23:59:59Z", "2025-13-45", "2025-1-1", "2025-01-01Z", DROP, 'a"b',
    "a\\b", "50%", "a_b", "%", "_", "😀", "é", "e\u0301", "line\nbreak",
]  # fmt: skip
NUMERALS = NUMBERS.map(lambda number: format(number, "f"))
DATE_TEXTS = st.builds(
    lambda moment, shape: moment.strftime(shape),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)),
    st.sampled_from(["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"]),
)
STORED = st.one_of(
    st.sampled_from(["", *INTERESTING]), STRINGS, NUMERALS, DATE_TEXTS,
    st.sampled_from([5, 1.5, True, None, ["a"], {"x": "y"}]),
)  # fmt: skip
CONTACT_FIELDS = st.dictionaries(st.sampled_from(KEYS), STORED, max_size=len(KEYS))
CONTACT = st.fixed_dictionaries(
    {"fields": CONTACT_FIELDS},
    optional={
        "name": st.one_of(st.sampled_from(INTERESTING), STRINGS),
        "status": st.sampled_from(CONTACT_STATUSES),
    },
)
FIELDS = [*KEYS, "email", "name", "status", "absent"]


def texts_of(contacts: list[dict], field: str) -> list[str]:
    """The non-empty texts `field` holds among `contacts`."""
    values = [(c if field in COLUMNS else c["fields"]).get(field) for c in contacts]
    return [value for value in values if isinstance(value, str) and value]


def numbers_in(texts: list[str]) -> list[Decimal]:
    numbers = []
    for text in texts:
        with contextlib.suppress(ArithmeticError):
            numbers.append(Decimal(text))
    return [number for number in numbers if number.is_finite()]


def dates_in(texts: list[str]) -> list[date]:
    dates: list[date] = []
    for text in texts:
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(text.rstrip("Z")).replace(microsecond=0)
            dates += [moment, moment.date()]
    return dates


def aimed_value(value: Value, texts: list[str], pick: int) -> Value:
    """Half the time (by `pick`), a literal of the same kind that `texts` hold, so that
    comparisons split the contacts instead of missing them all."""
    if pick % 2:
        return value
    pick //= 2
    if isinstance(value, str):
        if not texts:
            return value
        text = texts[pick % len(texts)]
        start = (pick // 7) % len(text)
        return text[start:] if pick % 3 else text[start : start + 1 + pick % 5] or text
    held: list = numbers_in(texts) if isinstance(value, Decimal) else dates_in(texts)
    return held[pick % len(held)] if held else value


def aimed(condition: Condition, contacts: list[dict], picks: Iterator[int]) -> Condition:
    """The condition with some literals replaced by ones the contacts hold."""
    match condition:
        case Compare(field, op, value):
            return Compare(field, op, aimed_value(value, texts_of(contacts, field), next(picks)))
        case In(field, values, negated):
            texts = texts_of(contacts, field)
            return In(field, tuple(aimed_value(v, texts, next(picks)) for v in values), negated)
        case Not(operand):
            return Not(aimed(operand, contacts, picks))
        case And(operands):
            return And(tuple(aimed(o, contacts, picks) for o in operands))
        case Or(operands):
            return Or(tuple(aimed(o, contacts, picks) for o in operands))
    raise AssertionError(condition)


# Static strategies: hypothesis validates each strategy it meets, and that is not cheap.
RANDOM_CONDITIONS = trees(
    comparisons(
        st.sampled_from(FIELDS),
        st.one_of(st.sampled_from([i for i in INTERESTING if i]), STRINGS),
        NUMBERS,
        DATES,
    ),
    max_leaves=4,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(CONTACT, min_size=2, max_size=10),
    st.lists(RANDOM_CONDITIONS, min_size=4, max_size=10),
    st.lists(st.integers(0, 2**20), min_size=1),
)
def test_sql_selects_what_python_matches(
    engine: Engine, contacts: list[dict], conditions: list[Condition], picks: list[int]
) -> None:
    for i, contact in enumerate(contacts):
        contact["email"] = f"c{i}@example.com"
    rows = reset(engine, contacts)
    everyone = {row["id"] for row in rows}
    cycled = itertools.cycle(picks)
    for condition in (aimed(c, contacts, cycled) for c in conditions):
        want = expected(rows, condition)
        assert selected(engine, condition) == want, to_text(condition)
        assert selected(engine, Not(condition)) == everyone - want, to_text(condition)


def test_fields_come_back_as_given(engine: Engine) -> None:
    """Keys and values with quotes and accents survive the round trip: the comparisons
    above are made on what the tests think is stored."""
    rows = reset(engine, [{"email": "a@example.com", "fields": {"prénom": "é", 'q"k': DROP}}])
    assert json.dumps(rows[0]["fields"], sort_keys=True) == json.dumps(
        {"prénom": "é", 'q"k': DROP}, sort_keys=True
    )
