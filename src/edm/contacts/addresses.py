"""Email addresses: which a contact may have, and the one form that identifies it."""

from __future__ import annotations

import re
from functools import lru_cache

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from email_validator.rfc_constants import DOMAIN_MAX_LENGTH, EMAIL_MAX_LENGTH

# The plain ASCII address most files hold: a dot-atom local part and a hostname whose last
# label ends in a letter, with no label over 63 characters. For such an address
# email-validator's answer is known without asking it (it is valid, and its normal form is
# the address itself, lower-cased), and asking costs 20 µs, most of an import's time per
# row. Written without IGNORECASE, which would let the Kelvin sign match `k`.
_ATEXT = r"[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LAST_LABEL = r"(?:[A-Za-z0-9][A-Za-z0-9-]{0,61})?[A-Za-z]"
_PLAIN = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*@((?:{_LABEL}\.)+{_LAST_LABEL})\Z")
_SPECIAL_USE = re.compile(
    rf"(?:^|\.)(?:{'|'.join(re.escape(name) for name in SPECIAL_USE_DOMAIN_NAMES)})\Z"
)


class InvalidAddress(ValueError):
    """Not an address a contact may have; the message says why (no address in it)."""


def normalise_email(address: str) -> str:
    """The address as contacts are keyed by, or InvalidAddress.

    Checked by email-validator for syntax only: an import must not wait on DNS. Both the
    domain and the local part are lower-cased. RFC 5321 lets a server treat `Ann@` and
    `ann@` as two mailboxes, but no mainstream provider does, and one person imported
    twice in two cases would be sent every campaign twice.
    """
    address = address.strip()
    plain = _plain(address)
    if plain is not None:
        return plain
    try:
        result = validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    return result.normalized.lower()


def _plain(address: str) -> str | None:
    """The normal form of a plain address, exactly as email-validator gives it; None for
    any other address (email-validator then decides). `tests/test_addresses.py` holds
    the two to the same answers."""
    match = _PLAIN.match(address)
    if match is None or len(address) > EMAIL_MAX_LENGTH or not _plain_domain(match.group(1)):
        return None
    return address.lower()


@lru_cache(maxsize=4096)  # a file's addresses share a few domains
def _plain_domain(domain: str) -> bool:
    """R-LDH and Punycode labels (`ab--c`, `xn--`), long names and special-use names
    (`.local`, `.test`) are rare: email-validator has rules of its own for each."""
    domain = domain.lower()
    return (
        "--" not in domain
        and len(domain) <= DOMAIN_MAX_LENGTH
        and _SPECIAL_USE.search(domain) is None
    )


def valid_email(address: str) -> str | None:
    """The normalised address, or None when it is not one."""
    try:
        return normalise_email(address)
    except InvalidAddress:
        return None
