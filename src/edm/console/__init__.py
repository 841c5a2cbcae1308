"""The web console at `/`: server-rendered pages (Jinja2) refreshed by htmx.

No build step and nothing fetched from the internet: htmx is vendored in `static/`
(htmx.org 2.0.11 from npm, 0BSD, `static/LICENSE-htmx`), the pages carry no inline
script or style, so a strict Content-Security-Policy holds. Sign-in takes an API token
(`edm token create`); `auth` keeps the session, `pages` the routes.
"""
