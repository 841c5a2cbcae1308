"""Step one of every webhook: the raw request into the event log, committed.

Nothing is parsed before this commit, so a request that passed authentication is never
lost to a parsing bug, a crash or a database error further on; the caller answers 2xx
only once this returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import Engine

from edm.db import event_queries as eq
from edm.db.queries import query

# Headers kept with the raw body: enough to verify and to debug, nothing else.
KEPT_HEADERS = (
    "content-type",
    "user-agent",
    "x-webhook-timestamp",
    "x-webhook-appkey",
    "x-webhook-signature",
)


def log_request(engine: Engine, provider: str, headers: Mapping[str, str], body: bytes) -> int:
    """Commit the request to the event log; its id."""
    kept = {k: v for k, v in ((k.lower(), v) for k, v in headers.items()) if k in KEPT_HEADERS}
    with engine.begin() as conn:
        return int(
            conn.execute(
                query(eq.LOG_REQUEST, engine.dialect.name),
                {
                    "provider": provider,
                    "headers": json.dumps(kept),
                    # Kept as text; bytes that are not UTF-8 survive as replacement marks
                    # (such a body is not JSON and is logged as invalid).
                    "body": body.decode("utf-8", "replace"),
                },
            ).scalar_one()
        )
