"""How the unsubscribe page shows a recipient's address."""

from __future__ import annotations


def masked(email: str) -> str:
    """`a…e@example.com`: enough for the owner to recognise, little for anyone the link
    was forwarded to."""
    local, at, domain = email.rpartition("@")
    if not at:
        local, domain = email, ""
    shown = local[:1] + "…" + local[-1:] if len(local) > 2 else local[:1] + "…"
    return f"{shown}@{domain}" if at else shown
