"""RS256 with a JWKS URL (``console.auth._JwksUrl``): key rotation, a slow or failing identity provider, https.

A local HTTP server plays the identity provider (http on a loopback address is allowed for this).
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

from console.auth import AuthError, KeysUnavailableError, _JwksUrl
from consumers.clickhouse import Client
from pipeline.infra.settings import read_console_settings
from tests.console_support import bearer, console_settings, http, make_app, serve_console


def _claims() -> dict[str, Any]:
    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    return {"sub": "u", "account_id": "acme", "role": "admin", "shared": False, "exp": exp}


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**public, "kid": kid, "use": "sig", "alg": "RS256"}


class IdentityProvider:
    """Serves ``keys`` as a JWKS at /jwks; ``delay`` seconds before each answer; ``status`` other than 200: down."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.delay = 0.0
        self.fetches = 0
        self.status = 200
        provider = self

        class Handler(http_server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                time.sleep(provider.delay)
                body = json.dumps({"keys": provider.keys}).encode()
                self.send_response(provider.status)
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
        assert idp.fetches == 2, "fetched once, and again for the new key id"
        assert c.get("/api/v1/apps", headers=bearer(signed_old)).status_code == 200
        assert idp.fetches == 2, "the set is cached"


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


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("http://idp.example.com/.well-known/jwks.json", False),
        ("http://10.0.0.7/jwks", False),
        ("https://idp.example.com/.well-known/jwks.json", True),
        ("http://127.0.0.1:8080/jwks", True),
        ("http://[::1]:8080/jwks", True),
        ("http://localhost/jwks", True),
    ],
)
def test_a_remote_jwks_url_must_be_https(url: str, accepted: bool) -> None:
    """Whoever can change the JWKS on the way (plain HTTP to a remote host) signs any token they like:
    an admin of every account. Only https, or a loopback address for local runs, is accepted."""
    _, errors = read_console_settings({"METERING_CONSOLE_JWKS": url})
    assert (not errors) == accepted, errors
    if errors:
        assert "https" in errors[0]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_made_up_key_ids_fetch_at_most_once_per_interval(idp: IdentityProvider) -> None:
    """Tokens naming key ids the provider never published cannot make the console hammer it: one fetch for
    an unknown key id, then none until the interval has passed (the set's own lifespan aside)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.keys = [_jwk(key, "k1")]
    clock = Clock()
    keys = _JwksUrl(idp.url, lifespan=600, refetch_interval=30, failure_ttl=10, clock=clock)
    assert keys.key_for(jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"})) is not None
    assert idp.fetches == 1
    for n in range(20):
        forged = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": f"made-up-{n}"})
        with pytest.raises(AuthError, match="not one of the identity provider's keys"):
            keys.key_for(forged)
    assert idp.fetches == 2, "one refetch for the first unknown key id, none for the next 19"
    clock.now += 31
    with pytest.raises(AuthError):
        keys.key_for(jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "made-up-again"}))
    assert idp.fetches == 3
    clock.now += 600
    keys.key_for(jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"}))
    assert idp.fetches == 4, "the set expires after its lifespan"


def test_a_failing_provider_is_asked_again_only_after_a_pause_and_the_last_set_keeps_working(
    idp: IdentityProvider,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.keys = [_jwk(key, "k1")]
    idp.status = 500
    clock = Clock()
    keys = _JwksUrl(idp.url, lifespan=600, refetch_interval=30, failure_ttl=10, clock=clock)
    signed = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(KeysUnavailableError, match="cannot fetch"):
        keys.key_for(signed)
    with pytest.raises(KeysUnavailableError, match="try again"):
        keys.key_for(signed)
    assert idp.fetches == 1, "the failure is remembered: the second request fails fast"
    clock.now += 11
    idp.status = 200
    assert keys.key_for(signed) is not None
    assert idp.fetches == 2
    idp.status = 500
    clock.now += 601  # the set expired and the provider is down: the last set still verifies
    assert keys.key_for(signed) is not None
    assert idp.fetches == 3


def test_the_api_answers_503_with_retry_after_when_the_keys_cannot_be_fetched(
    chdb_client: Client, database: str, idp: IdentityProvider
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.status = 503
    app = make_app(chdb_client, database, console_settings(secret="", jwks=idp.url))
    signed = jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "k1"})
    with http(app) as c:
        answer = c.get("/api/v1/apps", headers=bearer(signed))
        login = c.post("/login", json={"token": signed})
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == "10"
    assert "cannot fetch the identity provider's keys" in answer.json()["error"]
    assert login.status_code == 503
