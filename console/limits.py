"""Request bodies over a route's limit get 413 before the route reads them.

An ASGI middleware: a ``Content-Length`` over the limit is refused at once; a body sent without
one (chunked) is counted as it arrives and refused when it passes the limit (the route's own
answer is then dropped). Console bodies are small JSON; the operators' reconcile routes carry a
repair batch of up to 64 MiB.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["DEFAULT_BODY_LIMIT", "PREFIX_BODY_LIMITS", "BodyLimit"]

DEFAULT_BODY_LIMIT: Final = 1024 * 1024
#: Path prefixes with a larger limit (first match wins).
PREFIX_BODY_LIMITS: Final[Sequence[tuple[str, int]]] = (("/reconcile/", 64 * 1024 * 1024),)


def _limit(path: str) -> int:
    for prefix, limit in PREFIX_BODY_LIMITS:
        if path.startswith(prefix):
            return limit
    return DEFAULT_BODY_LIMIT


class BodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _limit(str(scope.get("path", "")))
        length = _content_length(scope)
        if length is not None and length > limit:
            await _too_large(send, limit)
            return
        received = 0
        refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not refused:
                    refused = True
                    await _too_large(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # the route saw the body end early (ClientDisconnect); the 413 is already sent


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int) -> None:
    body: dict[str, Any] = {"error": f"the request body is over {limit:,} bytes: send less", "parameter": "body"}
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
