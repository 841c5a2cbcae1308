"""Who may post webhooks: EngageLab's signatures, checked against every EngageLab
service's key, and our own token for the generic endpoint.

A request that fails is refused before its body is read, counted and logged, and never
stored: the event log holds only what a known sender sent.
"""

from __future__ import annotations

import hmac
import logging
from collections import Counter
from collections.abc import Mapping

from edm.events.signatures import bearer_or_basic_token, engagelab_signature_valid

log = logging.getLogger(__name__)

# Webhook requests refused for authentication, by provider, since the process started.
rejected: Counter[str] = Counter()


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
