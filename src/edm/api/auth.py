"""Who may post webhooks: EngageLab's signatures, checked against every EngageLab
service's key, and our own token for the generic endpoint.

A request that fails is refused before its body is read, counted and logged, and never
stored: the event log holds only what a known sender sent.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections import Counter
from collections.abc import Mapping

from sqlalchemy import Engine, select

from edm.db.models import Service
from edm.events.signatures import bearer_or_basic_token, engagelab_signature_valid

log = logging.getLogger(__name__)

TRUE = ("true", "1", "yes")
# Webhook requests refused for authentication, by provider, since the process started.
rejected: Counter[str] = Counter()


def engagelab_webhook_keys(engine: Engine) -> list[str]:
    """The keys of every EngageLab service that verifies its webhooks; empty: none does.

    `webhook_verify` defaults to on (as in the provider), so a service with a
    `webhook_key` and no `webhook_verify` verifies. A verifying service without a key
    (possible only for rows older than the option check) contributes an empty key,
    which signs nothing: verification fails closed rather than open.
    """
    with engine.connect() as conn:
        rows = conn.execute(select(Service.options).where(Service.provider == "engagelab"))
        options_list = [_options(row.options) for row in rows]
    keys = []
    for options in options_list:
        key = str(options.get("webhook_key") or "")
        verify = options.get("webhook_verify")
        if bool(key) if verify is None else str(verify).strip().lower() in TRUE:
            keys.append(key)
    return keys


def engagelab_allowed(headers: Mapping[str, str], keys: list[str]) -> bool:
    return not keys or engagelab_signature_valid(headers, keys)


def token_allowed(authorization: str | None, configured: str, sandbox: str) -> bool:
    """Whether the request carries EDM_WEBHOOK_TOKEN or the installation's sandbox token.

    Both are compared, in constant time, whichever matches."""
    given = bearer_or_basic_token(authorization)
    if given is None:
        return False
    given_bytes = given.encode("utf-8", "replace")
    valid = False
    for expected in (configured, sandbox):
        if expected:
            valid |= hmac.compare_digest(given_bytes, expected.encode())
    return valid


def count_rejection(provider: str, client: str | None) -> None:
    rejected[provider] += 1
    log.warning(
        "webhook request for %s refused: not authenticated",
        provider,
        extra={"action": "webhook_rejected", "provider": provider, "client": client},
    )


def _options(value: object) -> dict:
    if isinstance(value, dict):
        return value
    try:
        decoded = json.loads(str(value or "{}"))
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}
