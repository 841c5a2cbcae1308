"""Row checks that are written for speed hold to the rules they stand for."""

from __future__ import annotations

import json
import sys
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from edm.contacts.rows import _NOT_IN_NAMES
from edm.contacts.store import fields_json


def test_characters_refused_in_names_are_exactly_categories_cc_cs_zl_zp() -> None:
    refused = {"Cc", "Cs", "Zl", "Zp"}
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert bool(_NOT_IN_NAMES.search(char)) == (unicodedata.category(char) in refused), code


@given(st.dictionaries(st.text(), st.text(), max_size=5))
def test_staged_fields_are_the_json_sqlalchemy_writes(fields: dict[str, str]) -> None:
    # The staging table's fields become a new contact's `fields` as they are; a merge
    # compares them with what SQLAlchemy wrote for the contacts already there.
    assert fields_json(fields) == json.dumps(fields)


def test_staged_fields_that_are_not_strings_are_json_too() -> None:
    assert fields_json({"n": 3, "ok": True}) == json.dumps({"n": 3, "ok": True})
    assert fields_json(None) == fields_json({}) == "{}"
