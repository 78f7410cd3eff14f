"""Security headers on every console response (an ASGI middleware, so errors and 413s get them too).

- ``Content-Security-Policy``: the pages load scripts, styles and data from this origin only
  (no inline script or style, no ``eval``), may not be framed (``frame-ancestors 'none'``:
  the Manage dialog cannot be clickjacked) and may post forms only here. The API docs page
  (Swagger UI, FastAPI's, which loads its scripts from a CDN and starts with an inline script)
  gets a policy of its own; it shows no billing data.
- ``X-Frame-Options: DENY`` for browsers that predate ``frame-ancestors``,
  ``X-Content-Type-Options: nosniff`` (a CSV is never run as a script), ``Referrer-Policy:
  same-origin`` (an app id in a URL never leaves the site).
- ``Cache-Control: no-store`` on everything a route answers that does not say otherwise: billing
  data (API JSON, CSV, PDF, the pages) is kept by no browser or proxy cache. The static files
  (``/console/static``) keep their validators and may be cached.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "DOCS_CONTENT_SECURITY_POLICY", "SecurityHeaders"]

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
#: FastAPI's Swagger UI: its bundle from jsDelivr, an inline script that starts it, FastAPI's favicon.
DOCS_CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_PATH: Final = "/api/v1/docs"
STATIC_PREFIX: Final = "/console/static/"
_ALWAYS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        policy = DOCS_CONTENT_SECURITY_POLICY if path.startswith(DOCS_PATH) else CONTENT_SECURITY_POLICY
        cacheable = path.startswith(STATIC_PREFIX)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _ALWAYS:
                    headers[name] = value
                headers["Content-Security-Policy"] = policy
                if not cacheable and "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)
