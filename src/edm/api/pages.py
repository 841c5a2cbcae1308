"""Cursor pagination: a page of items and the cursor of the next one.

The cursor is the last id of the page, as text: stable while rows are added (unlike an
offset), and opaque enough that a client only passes it back.
"""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

from edm.api.errors import ApiError

Item = TypeVar("Item")

Limit = Annotated[int, Query(ge=1, le=500, description="items per page")]
Cursor = Annotated[
    str | None, Query(max_length=20, description="`next_cursor` of the previous page")
]


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next_cursor: str | None  # None: this was the last page


def after_id(cursor: str | None) -> int:
    if cursor is None:
        return 0
    # ASCII digits only ("²" is a digit to Python, not to int()), within a BIGINT.
    if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > 2**63 - 1:
        raise ApiError(400, "invalid_request", "not a cursor this server gave", "cursor")
    return int(cursor)


def next_cursor(ids: list[int], limit: int) -> str | None:
    return str(ids[-1]) if len(ids) == limit else None
