"""Unsubscribe links: a confirmation page on GET, the unsubscribe itself on POST.

GET only shows a page, because mail scanners and link previews fetch every link in an
email; POST unsubscribes, whether from the page's button or from a mail client's
RFC 8058 one-click request (`List-Unsubscribe=One-Click`; the body is not needed: the
signed token in the URL says who). Recipients see HTML, so errors here are pages too.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, Template
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from edm.api.dependencies import EngineDep, InstallationSecrets, SecretsDep
from edm.api.recipients import masked
from edm.events.own import Recipient, link_recipient, record_unsubscribe
from edm.messages import read_unsubscribe_token

log = logging.getLogger(__name__)

# Pages for recipients' browsers, not part of the API: left out of the OpenAPI schema.
router = APIRouter(prefix="/unsubscribe", tags=["unsubscribe"], include_in_schema=False)

# The token is a credential in the URL: no caching, no referrer, no indexing.
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
    "X-Content-Type-Options": "nosniff",
}
MAX_TOKEN_CHARS = 100  # two 64-bit ids and a 22-character MAC fit in 63
TITLES = {
    "confirm": "Unsubscribe",
    "already": "Already unsubscribed",
    "done": "You are unsubscribed",
    "invalid": "Invalid link",
    "error": "Please try again",
}


@lru_cache(maxsize=1)
def _template() -> Template:
    return Environment(loader=PackageLoader("edm.api", "templates"), autoescape=True).get_template(
        "unsubscribe.html"
    )


def page(state: str, status: int = 200, **values: Any) -> HTMLResponse:
    html = _template().render(state=state, title=TITLES[state], **values)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


@router.get("/{token}", response_class=HTMLResponse)
async def confirm_page(token: str, engine: EngineDep, installation: SecretsDep) -> HTMLResponse:
    recipient = await run_in_threadpool(_recipient, engine, installation, token)
    if recipient is None:
        return page("invalid", 400)
    state = "already" if recipient.unsubscribed else "confirm"
    return page(state, email=masked(recipient.email), action=f"/unsubscribe/{quote(token)}")


@router.post("/{token}", response_class=HTMLResponse)
async def unsubscribe(token: str, engine: EngineDep, installation: SecretsDep) -> HTMLResponse:
    recipient = await run_in_threadpool(_recipient, engine, installation, token)
    if recipient is None:
        return page("invalid", 400)
    outcome = await run_in_threadpool(record_unsubscribe, engine, recipient.sub_task_id)
    if outcome == "error":  # kept with its error for an operator to reprocess
        return page("error", 503)
    log.info(
        "sub-task %s unsubscribed by its link (%s)",
        recipient.sub_task_id,
        outcome,
        extra={"action": "unsubscribed", "sub_task_id": recipient.sub_task_id},
    )
    return page("done", email=masked(recipient.email))


def _recipient(engine: Engine, installation: InstallationSecrets, token: str) -> Recipient | None:
    # Genuine tokens are short ASCII; anything else is refused before it is parsed.
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return None
    ids = read_unsubscribe_token(installation.signing_key(), token)
    return None if ids is None else link_recipient(engine, *ids)
