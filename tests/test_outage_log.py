"""A loop's failure while the database is away is one line; a bug keeps its traceback."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from edm.db.outage import database_unavailable, log_failure
from edm.events.pipeline import BatchFailed


def unreachable() -> OperationalError:
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        return exc
    raise AssertionError("port 1 answered")


def test_an_outage_is_one_line(caplog: pytest.LogCaptureFixture) -> None:
    outage = unreachable()
    try:
        raise BatchFailed([1, 2]) from outage
    except BatchFailed as wrapped:
        assert database_unavailable(wrapped) == database_unavailable(outage)
        with caplog.at_level(logging.ERROR):
            log_failure(logging.getLogger("t"), "upkeep failed", wrapped)
    (record,) = caplog.records
    assert record.getMessage().startswith("upkeep failed: database unavailable: ")
    assert "127.0.0.1" in record.getMessage() and record.exc_info is None


def test_a_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bug = KeyError("x")
    assert database_unavailable(bug) is None
    with caplog.at_level(logging.ERROR):
        log_failure(logging.getLogger("t"), "upkeep failed", bug)
    (record,) = caplog.records
    assert record.getMessage() == "upkeep failed" and record.exc_info[1] is bug
