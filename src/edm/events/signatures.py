"""Checking who sent a webhook: EngageLab's signature headers, and our own token.

EngageLab's official pages give two different signature recipes, so both are accepted.
Several EngageLab services may post to one URL, each with its own key, so a request is
valid if any key signs it. Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping

TIMESTAMP = "x-webhook-timestamp"
APP_KEY = "x-webhook-appkey"
SIGNATURE = "x-webhook-signature"


def engagelab_signatures(timestamp: str, app_key: str, key: str) -> tuple[str, str]:
    """The two signatures EngageLab documents, as lower-case hex."""
    md5 = hashlib.md5((timestamp + app_key + key).encode(), usedforsecurity=False).hexdigest()
    sha = hmac.new(key.encode(), timestamp.encode(), hashlib.sha256).hexdigest()
    return md5, sha


def engagelab_signature_valid(headers: Mapping[str, str], keys: Iterable[str]) -> bool:
    """Whether any of `keys` signs the request; header names are matched without case.

    Empty keys are skipped: an HMAC with an empty key is one anybody can compute."""
    lowered = {str(name).lower(): str(value).strip() for name, value in headers.items()}
    timestamp = lowered.get(TIMESTAMP)
    app_key = lowered.get(APP_KEY)
    signature = lowered.get(SIGNATURE)
    if not (timestamp and app_key and signature):
        return False
    given = signature.lower().encode("utf-8", "replace")
    valid = False
    for key in keys:
        if not key:
            continue
        for expected in engagelab_signatures(timestamp, app_key, key):
            # No early return: the time taken does not tell which key or recipe matched.
            valid |= hmac.compare_digest(given, expected.encode())
    return valid


def bearer_or_basic_token(authorization_header: str | None) -> str | None:
    """The secret of `Authorization: Bearer TOKEN`, or the password of Basic auth.

    Senders that can only do Basic auth put the token in the password; the user name is
    ignored. Anything malformed gives None, never an exception."""
    if not authorization_header:
        return None
    scheme, _, credentials = authorization_header.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return None
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, non-ASCII input
        return None
    user, colon, password = decoded.partition(":")
    return password if colon and password else None
