"""Row checks that are written for speed hold to the rules they stand for."""

from __future__ import annotations

import sys
import unicodedata

from edm.contacts.rows import _NOT_IN_NAMES


def test_characters_refused_in_names_are_exactly_categories_cc_cs_zl_zp() -> None:
    refused = {"Cc", "Cs", "Zl", "Zp"}
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert bool(_NOT_IN_NAMES.search(char)) == (unicodedata.category(char) in refused), code
