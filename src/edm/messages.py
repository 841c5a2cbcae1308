"""Rendering a task's templates for one contact, in a sandboxed Jinja2 environment.

Templates come from marketing users, not developers: the sandbox keeps them from
reaching Python internals, and StrictUndefined turns a misspelt field into an error
for that one sub-task instead of a silently blank greeting.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from email.utils import parseaddr
from functools import lru_cache
from html.parser import HTMLParser

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from edm.providers.base import OutgoingMessage

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_HTML_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


# Every contact has these, though `name` may be empty: a template may always use them.
# Any other name a template uses must be a field of the contact, or carry a default.
STANDARD_FIELDS = frozenset({"email", "name", "unsubscribe_url"})
# Filters and tests that make a missing field harmless where they are applied.
_DEFAULT_FILTERS = frozenset({"default", "d"})
_DEFINED_TESTS = frozenset({"defined", "undefined"})


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str | None
    text: str | None


def validate(name: str, source: str | None, *, html: bool = False) -> None:
    """Raise TemplateError naming the template and line of the first syntax error."""
    if source is None:
        return
    try:
        (_HTML_ENV if html else _ENV).parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{name} template, line {exc.lineno}: {exc.message}") from None


def required_fields(source: str | None, *, html: bool = False) -> set[str]:
    """The contact fields a template cannot render without.

    A use under `| default(...)` needs nothing, and a name tested with `is defined`
    anywhere is taken as optional; standard fields and the environment's globals are
    always there.
    """
    if source is None:
        return set()
    env = _HTML_ENV if html else _ENV
    tree = env.parse(source)
    used = meta.find_undeclared_variables(tree)
    defaulted = {
        id(node.node)
        for node in tree.find_all(nodes.Filter)
        if node.name in _DEFAULT_FILTERS and isinstance(node.node, nodes.Name)
    }
    tested = {
        node.node.name
        for node in tree.find_all(nodes.Test)
        if node.name in _DEFINED_TESTS and isinstance(node.node, nodes.Name)
    }
    needed = {
        node.name
        for node in tree.find_all(nodes.Name)
        if node.ctx == "load" and node.name in used and id(node) not in defaulted
    }
    return needed - tested - STANDARD_FIELDS - set(env.globals)


class _Part:
    """One compiled template, with its globals flattened once.

    A template's globals are a ChainMap over the environment's, which every render
    iterates twice (to copy it into the context and to list its keys); a plain copy,
    made once per worker, more than halves a render. The environment's globals are fixed
    at import, so the copy cannot go stale.
    """

    def __init__(self, template: Template) -> None:
        template.globals = dict(template.globals)  # a new dict: nothing shared is changed
        self.template = template

    def render(self, context: dict) -> str:
        template = self.template
        state = template.new_context({**template.globals, **context}, shared=True)
        return template.environment.concat(template.root_render_func(state))  # type: ignore[attr-defined]


class TaskTemplates:
    """A task's subject, HTML and text templates, compiled once per worker."""

    def __init__(self, subject: str, html: str | None, text: str | None) -> None:
        try:
            self.subject = _Part(_ENV.from_string(subject))
            self.html = _Part(_HTML_ENV.from_string(html)) if html is not None else None
            self.text = _Part(_ENV.from_string(text)) if text is not None else None
        except TemplateSyntaxError as exc:
            raise TemplateError(f"line {exc.lineno}: {exc.message}") from None

    def render(self, contact: dict, extra: dict | None = None) -> Rendered:
        context = template_context(contact, extra)
        try:
            html = self.html.render(context) if self.html else None
            text = self.text.render(context) if self.text else None
            return Rendered(
                subject=self.subject.render(context).strip(),
                html=html,
                text=text if text is not None or html is None else html_to_text(html),
            )
        except Exception as exc:  # any failure of a user's template fails one sub-task
            raise TemplateError(f"template failed: {exc}") from None


def template_context(contact: dict, extra: dict | None = None) -> dict:
    fields = contact.get("fields") or {}
    if isinstance(fields, str):
        fields = json.loads(fields)
    context = {**fields, "email": contact["email"], "name": contact.get("name") or ""}
    context.update(extra or {})
    return context


# -- the text part, when only HTML is given ------------------------------------------------------
class _TextExtractor(HTMLParser):
    """HTML to readable plain text: blocks become lines, links keep their address."""

    BLOCKS = frozenset(
        {
            "p",
            "div",
            "br",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "table",
            "ul",
            "ol",
            "blockquote",
            "hr",
        }
    )
    SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links: list[str | None] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("\n- ")
        if tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(self.skipping - 1, 0)
        elif tag in self.BLOCKS:
            self.parts.append("\n")
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href and not href.startswith(("#", "mailto:")):
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (line.strip() for line in "".join(parser.parts).splitlines())
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# -- headers and unsubscribe links ---------------------------------------------------------------
def unsubscribe_token(secret: str, sub_task_id: int, contact_id: int) -> str:
    """A token naming the sub-task and contact, signed so it cannot be forged or altered."""
    payload = f"{sub_task_id}.{contact_id}"
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()[:16]
    return f"{payload}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"


def read_unsubscribe_token(secret: str, token: str) -> tuple[int, int] | None:
    """(sub_task_id, contact_id) of a genuine token, None for anything else."""
    if len(token) > 100 or not token.isascii():  # ours are about 40 ASCII characters
        return None
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    expected = unsubscribe_token(secret, int(parts[0]), int(parts[1]))
    if not hmac.compare_digest(expected, token):
        return None
    return int(parts[0]), int(parts[1])


def unsubscribe_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/unsubscribe/{token}"


def message_id(idempotency_key: str, from_addr: str | None) -> str:
    """Our Message-ID: derived from the idempotency key, so every attempt carries the same."""
    return f"<{idempotency_key}@{_sender_domain(from_addr)}>"


@lru_cache(maxsize=64)
def _sender_domain(from_addr: str | None) -> str:
    """The sender's domain; parsing the address is slow and a campaign has one sender."""
    if from_addr:
        address = parseaddr(from_addr)[1]
        if "@" in address:
            return address.rsplit("@", 1)[1]
    return "edm.invalid"


def tracking_headers(
    *, idempotency_key: str, from_addr: str | None, sub_task_id: int, task_id: int, unsubscribe: str
) -> dict[str, str]:
    return {
        "Message-ID": message_id(idempotency_key, from_addr),
        "X-EDM-Subtask": str(sub_task_id),
        "X-EDM-Task": str(task_id),
        "List-Unsubscribe": f"<{unsubscribe}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


# -- one sub-task's message --------------------------------------------------------------------
class MessageBuilder:
    """Everything a task's messages share, prepared once: templates, sender, signing key.

    Building a message for one contact is then rendering, one signature and the headers.
    """

    def __init__(
        self,
        templates: TaskTemplates,
        *,
        from_addr: str | None,
        default_from: str | None,
        public_url: str,
        signing_key: str,
    ) -> None:
        self.templates = templates
        self.from_addr = from_addr  # the task's own sender; None: the service's
        self.sender = from_addr or default_from
        self.public_url = public_url
        self.signing_key = signing_key

    def build(
        self, *, sub_task_id: int, task_id: int, idempotency_key: str, contact: dict
    ) -> OutgoingMessage:
        """Raises TemplateError when this contact's message cannot be rendered."""
        link = unsubscribe_url(
            self.public_url, unsubscribe_token(self.signing_key, sub_task_id, contact["id"])
        )
        rendered = self.templates.render(contact, {"unsubscribe_url": link})
        return OutgoingMessage(
            sub_task_id=sub_task_id,
            task_id=task_id,
            idempotency_key=idempotency_key,
            to_email=contact["email"],
            to_name=contact.get("name"),
            from_addr=self.from_addr,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            headers=tracking_headers(
                idempotency_key=idempotency_key,
                from_addr=self.sender,
                sub_task_id=sub_task_id,
                task_id=task_id,
                unsubscribe=link,
            ),
        )
