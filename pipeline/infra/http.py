"""The one HTTP client library, httpx, set up once: calls on this machine never go through a proxy.

httpx logs every request at INFO; a command's stderr is for what went wrong, so it logs warnings only.
"""

from __future__ import annotations

import logging

import httpx

__all__ = ["HTTPError", "local_client", "local_get"]

logging.getLogger("httpx").setLevel(logging.WARNING)

HTTPError = httpx.HTTPError


def local_client(base_url: str, timeout: float) -> httpx.Client:
    """A client for a process of this deployment on this machine (the store's API): proxies ignored."""
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=False)


def local_get(url: str, timeout: float) -> httpx.Response:
    """GET ``url`` on this machine (a store's /healthz, a worker's /metrics): proxies ignored."""
    return httpx.get(url, timeout=timeout, trust_env=False)
