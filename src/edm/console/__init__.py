"""The web console at `/`: server-rendered pages (Jinja2) refreshed by htmx.

No build step and nothing fetched from the internet: htmx is vendored in `static/`
(htmx.org 2.0.11 from npm, 0BSD, `static/LICENSE-htmx`), the pages carry no inline
script or style, so a strict Content-Security-Policy holds. Sign-in takes an API token
(`edm token create`) or a user's password (`edm user create`); `auth` keeps the session,
`view` what every page shares, and one module per part of the console its routes.
"""

from __future__ import annotations

from fastapi import APIRouter

from edm.console.view import STATIC_PATH, static_files

__all__ = ["STATIC_PATH", "routers", "static_files"]


def routers() -> list[APIRouter]:
    """Every console router; imported here, late, so the console's pages load with the app."""
    from edm.console import audience_pages, event_pages, pages, service_pages, task_pages

    return [
        pages.router,
        task_pages.router,
        service_pages.router,
        audience_pages.router,
        event_pages.router,
    ]
