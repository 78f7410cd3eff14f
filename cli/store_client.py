"""The CLI's HTTP client for the running store's operators' routes (httpx, the one HTTP client).

`metering usage`, `plans` and `reconcile` ask the store that holds an embedded database. Every
call carries the operator token the store wrote to ``<data_dir>/run/store.token`` (readable by
its OS user only); none goes through a proxy from the environment (``trust_env=False``).
:class:`StoreHttpError` keeps the status and JSON body of a refusal so each command can say
what went wrong in its own words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import httpx

from pipeline.infra.http import local_client

__all__ = ["StoreClient", "StoreHttpError", "StoreUnreachableError"]

TIMEOUT_SECONDS: Final = 120.0


class StoreHttpError(Exception):
    """The store answered with an error status; ``body`` is its JSON (empty if it was not JSON)."""

    def __init__(self, status: int, body: dict[str, Any], reason: str) -> None:
        super().__init__(f"{status}: {body.get('error', reason)}")
        self.status = status
        self.body = body
        self.reason = reason

    @property
    def message(self) -> str:
        return str(self.body.get("error", self.reason))


class StoreUnreachableError(Exception):
    """The store did not answer (stopped, not listening)."""


class StoreClient:
    """Calls to one store's API with its operator token."""

    def __init__(self, api: str, token: str | None, *, timeout: float = TIMEOUT_SECONDS) -> None:
        self.api = api
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._headers = headers

    def get_text(self, path: str, params: Sequence[tuple[str, str]]) -> str:
        return self._send("GET", path, params=list(params)).text

    def post_json(self, path: str, body: bytes) -> bytes:
        return self._send("POST", path, content=body, headers={"Content-Type": "application/json"}).content

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        try:
            with local_client(self.api, self._timeout) as client:
                response = client.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise StoreUnreachableError(f"{exc.__class__.__name__}: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise StoreHttpError(response.status_code, body if isinstance(body, dict) else {}, response.reason_phrase)
        return response
