"""Which parser reads which provider's webhooks; the webhook routes look parsers up here."""

from __future__ import annotations

from edm.events.parsers.base import WebhookParser
from edm.events.parsers.engagelab import EngageLabParser
from edm.events.parsers.generic import GenericParser

PARSERS: dict[str, WebhookParser] = {
    parser.provider: parser for parser in (EngageLabParser(), GenericParser())
}


def parser_for(name: str) -> WebhookParser | None:
    """The parser for a provider's webhooks; None for a provider that has none (smtp)."""
    return PARSERS.get(name.strip().lower())
