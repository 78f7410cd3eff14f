"""Review reproductions (branch `review`): RS256 with a JWKS URL.

A local HTTP server plays the identity provider. Marked ``xfail(strict=True)`` while open;
``pytest --runxfail`` shows them failing on main.
"""

from __future__ import annotations

import http.server as http_server
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from consumers.clickhouse import Client
from tests.console_support import bearer, console_settings, http, make_app, serve_console


def _claims() -> dict[str, Any]:
    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    return {"sub": "u", "account_id": "acme", "role": "admin", "shared": False, "exp": exp}


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**public, "kid": kid, "use": "sig", "alg": "RS256"}


class IdentityProvider:
    """Serves ``keys`` as a JWKS at /jwks; ``delay`` seconds before each answer."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.delay = 0.0
        self.fetches = 0
        provider = self

        class Handler(http_server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                time.sleep(provider.delay)
                body = json.dumps({"keys": provider.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.close()


@pytest.mark.xfail(strict=True, reason="review: a rotated-in signing key is refused until the JWKS cache expires")
def test_a_token_signed_with_a_newly_published_key_is_accepted(
    chdb_client: Client, database: str, idp: IdentityProvider
) -> None:
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.keys = [_jwk(old, "2026-10")]
    app = make_app(chdb_client, database, console_settings(secret="", jwks=idp.url))
    with http(app) as c:
        signed_old = jwt.encode(_claims(), old, algorithm="RS256", headers={"kid": "2026-10"})
        assert c.get("/api/v1/apps", headers=bearer(signed_old)).status_code == 200
        # the provider rotates: publishes the new key and signs with it from now on
        idp.keys = [_jwk(old, "2026-10"), _jwk(new, "2026-11")]
        signed_new = jwt.encode(_claims(), new, algorithm="RS256", headers={"kid": "2026-11"})
        answer = c.get("/api/v1/apps", headers=bearer(signed_new))
        assert answer.status_code == 200, (answer.status_code, answer.text, f"JWKS fetched {idp.fetches} time(s)")


@pytest.mark.xfail(strict=True, reason="review: the JWKS fetch blocks the event loop (async dependency, sync HTTP)")
def test_a_slow_identity_provider_does_not_stall_other_requests(
    chdb_client: Client, database: str, idp: IdentityProvider
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.keys = [_jwk(key, "k1")]
    idp.delay = 4.0
    signed = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"})
    with serve_console(chdb_client, database, settings=console_settings(secret="", jwks=idp.url)) as url:
        slow = threading.Thread(target=lambda: httpx.get(f"{url}/api/v1/apps", headers=bearer(signed), timeout=30))
        slow.start()
        time.sleep(0.5)  # the signed request is now waiting for the provider's keys
        started = time.monotonic()
        probe = httpx.get(f"{url}/healthz", timeout=30)
        waited = time.monotonic() - started
        slow.join()
    assert probe.status_code == 200
    assert waited < 1.5, f"/healthz waited {waited:.1f} s behind another request's JWKS fetch"


@pytest.mark.xfail(strict=True, reason="review: a JWKS URL over plain http is accepted")
def test_a_remote_jwks_url_must_be_https() -> None:
    """Whoever can change the JWKS on the way (plain HTTP to a remote host) signs any token they like:
    an admin of every account. Only https (or a loopback address for local runs) should be accepted."""
    from console.settings import read_console_settings  # noqa: PLC0415

    _, errors = read_console_settings({"METERING_CONSOLE_JWKS": "http://idp.example.com/.well-known/jwks.json"})
    assert errors, "a remote JWKS over http is accepted"
