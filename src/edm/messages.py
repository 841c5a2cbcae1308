"""Rendering a task's templates for one contact, in a sandboxed Jinja2 environment.

Templates come from marketing users, not developers: the sandbox keeps them from
reaching Python internals, and StrictUndefined turns a misspelt field into an error
for that one sub-task instead of a silently blank greeting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_HTML_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


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


class TaskTemplates:
    """A task's subject, HTML and text templates, compiled once per worker."""

    def __init__(self, subject: str, html: str | None, text: str | None) -> None:
        try:
            self.subject = _ENV.from_string(subject)
            self.html = _HTML_ENV.from_string(html) if html is not None else None
            self.text = _ENV.from_string(text) if text is not None else None
        except TemplateSyntaxError as exc:
            raise TemplateError(f"line {exc.lineno}: {exc.message}") from None

    def render(self, contact: dict, extra: dict | None = None) -> Rendered:
        context = template_context(contact, extra)
        try:
            return Rendered(
                subject=self.subject.render(context).strip(),
                html=self.html.render(context) if self.html else None,
                text=self.text.render(context) if self.text else None,
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
