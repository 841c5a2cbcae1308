"""Email addresses: which a contact may have, and the one form that identifies it."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email


class InvalidAddress(ValueError):
    """Not an address a contact may have; the message says why (no address in it)."""


def normalise_email(address: str) -> str:
    """The address as contacts are keyed by, or InvalidAddress.

    Checked by email-validator for syntax only: an import must not wait on DNS. Both the
    domain and the local part are lower-cased. RFC 5321 lets a server treat `Ann@` and
    `ann@` as two mailboxes, but no mainstream provider does, and one person imported
    twice in two cases would be sent every campaign twice.
    """
    try:
        result = validate_email(address.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    return result.normalized.lower()


def valid_email(address: str) -> str | None:
    """The normalised address, or None when it is not one."""
    try:
        return normalise_email(address)
    except InvalidAddress:
        return None
