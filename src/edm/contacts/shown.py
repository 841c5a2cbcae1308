"""How contact data may appear in messages, logs and reports: cut short.

An import's messages name the line and show the offending value, never more of it than
this: an error message is copied into tickets and chats, where a contact's data must not
go, and a 200 KB field would bury the message itself.
"""

from __future__ import annotations

SHOWN_CHARS = 40


def cut(value: str, limit: int = SHOWN_CHARS) -> str:
    """`value`, or its first `limit` characters and an ellipsis."""
    return value if len(value) <= limit else value[:limit] + "…"
