"""Console auth in detail: login and cookies, CSRF, RS256 with a JWKS file, claims, leeway, settings, `metering token`.

The auth matrix over every route is ``test_console_auth_matrix.py``; this file checks the
mechanisms it relies on. A POST billing route for the CSRF checks is mounted by the test itself
(the app's own POST routes belong to other sections).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cli.main import main
from console.app import ROUTERS, create_app
from console.auth import Authenticator, deployment_secret, secret_file
from console.context import ConsoleContext
from console.deps import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, billing_router, csrf_token
from consumers.clickhouse import Client
from pipeline.infra.settings import read_console_settings
from tests.console_support import (
    ACCOUNT,
    OPERATOR_TOKEN,
    SECRET,
    bearer,
    claims_token,
    console_settings,
    http,
    make_app,
    token,
)
from tests.support import migrated_database

poke = billing_router(prefix="/api/v1/test")


@poke.post("/poke", status_code=202)
def poke_route() -> dict[str, str]:
    return {"poked": "yes"}


@pytest.fixture(scope="module")
def auth_db(chdb_client: Client) -> Iterator[str]:
    with migrated_database(chdb_client) as database:
        yield database


def app_with_poke(client: Client, database: str, **changes: Any) -> FastAPI:
    settings = console_settings(**changes)
    context = ConsoleContext(client, database, settings, Authenticator(settings, settings.secret))
    return create_app(context, [*ROUTERS, poke])


@pytest.fixture
def app(chdb_client: Client, auth_db: str) -> FastAPI:
    return app_with_poke(chdb_client, auth_db)


# -- login, cookies, CSRF ------------------------------------------------------------------


def test_json_login_sets_an_httponly_lax_cookie_that_expires_with_the_token(app: FastAPI) -> None:
    with http(app) as c:
        answer = c.post("/login", json={"token": token()})
        assert answer.status_code == 200
        body = answer.json()
        assert body["account_id"] == ACCOUNT
        assert body["billing"] is True
        cookies = answer.headers.get_list("set-cookie")
        session = next(h for h in cookies if h.startswith(f"{SESSION_COOKIE}="))
        assert "HttpOnly" in session
        assert "SameSite=lax" in session or "samesite=lax" in session.lower()
        assert "Secure" not in session, "plain HTTP: a Secure cookie would never come back"
        assert "expires=" in session.lower()
        assert "Max-Age=" in session
        csrf = next(h for h in cookies if h.startswith(f"{CSRF_COOKIE}="))
        assert "HttpOnly" not in csrf
        assert body["csrf_token"] == csrf_token(token())
        assert c.get("/api/v1/usage").status_code == 200, "the cookie signs the next requests in"


def test_a_cookie_post_needs_the_csrf_token_a_bearer_post_does_not(app: FastAPI) -> None:
    with http(app) as c:
        session = token()
        csrf = c.post("/login", json={"token": session}).json()["csrf_token"]
        refused = c.post("/api/v1/test/poke")
        assert refused.status_code == 403
        assert refused.json()["reason"] == "csrf"
        assert c.post("/api/v1/test/poke", headers={CSRF_HEADER: "wrong"}).status_code == 403
        assert c.post("/api/v1/test/poke", headers={CSRF_HEADER: csrf}).status_code == 202
        assert c.post("/api/v1/test/poke", data={"csrf_token": csrf}).status_code == 202, "a form field does too"
        assert c.get("/api/v1/usage").status_code == 200, "GET needs none"
    with http(app) as c:
        assert c.post("/api/v1/test/poke", headers=bearer(token())).status_code == 202
        member = c.post("/api/v1/test/poke", headers=bearer(token(role="member")))
        assert member.status_code == 403
        assert member.json()["reason"] == "not_admin"


def test_form_login_redirects_and_a_refused_token_goes_back_to_login_with_the_reason(app: FastAPI) -> None:
    with http(app) as c:
        answer = c.post("/login", data={"token": token(), "next": "/console/plans"}, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/plans"
        assert SESSION_COOKIE in answer.cookies
        away = c.post("/login", data={"token": token(), "next": "//evil.example/"}, follow_redirects=False)
        assert away.headers["location"] == "/console/usage", "only a path of this site"
        bad = c.post("/login", data={"token": "nope"}, follow_redirects=False)
        assert bad.status_code == 303
        assert bad.headers["location"].startswith("/login?error=")


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
    ],
)
def test_a_sign_in_from_another_site_is_refused(app: FastAPI, headers: dict[str, str]) -> None:
    """Login CSRF: another site's page auto-submitting its owner's token to POST /login would leave the visitor
    signed in to the attacker's account (what they then enter, they enter there). Browsers say where a POST
    comes from (Sec-Fetch-Site, Origin): anything but this site is refused, and no cookie is set."""
    with http(app) as c:
        attacker = token("attacker-account")
        form = c.post(
            "/login", data={"token": attacker, "next": "/console/plans"}, headers=headers, follow_redirects=False
        )
        assert form.status_code == 403, form.text
        assert form.json()["reason"] == "cross_site"
        assert "set-cookie" not in form.headers
        as_json = c.post("/login", json={"token": attacker}, headers=headers)
        assert as_json.status_code == 403


def test_a_sign_in_from_this_site_or_without_browser_headers_is_accepted(app: FastAPI) -> None:
    with http(app) as c:
        same = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        answer = c.post("/login", data={"token": token()}, headers=same, follow_redirects=False)
        assert answer.status_code == 303, answer.text
        typed = c.post("/login", data={"token": token()}, headers={"Sec-Fetch-Site": "none"}, follow_redirects=False)
        assert typed.status_code == 303, "typed or bookmarked: no site sent it"
        assert c.post("/login", json={"token": token()}).status_code == 200, "curl, scripts: no browser headers"


@pytest.mark.parametrize("content_type", ["text/plain", "", "application/x-json-ish"])
def test_json_sign_in_only_with_a_json_content_type(app: FastAPI, content_type: str) -> None:
    """A text/plain POST is what another site can send without asking (no CORS preflight): only JSON typed as
    JSON, or the login form, is read."""
    with http(app) as c:
        body = json.dumps({"token": token()}).encode()
        answer = c.post("/login", content=body, headers={"Content-Type": content_type} if content_type else {})
        assert answer.status_code == 415, answer.text
        assert answer.json()["parameter"] == "Content-Type"
        assert "set-cookie" not in answer.headers
        charset = c.post("/login", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
        assert charset.status_code == 200


@pytest.mark.parametrize("target", ["/\\evil.example", "/\t/evil.example", "/%2F%2Fevil.example", "/%5Cevil.example"])
def test_login_next_is_never_an_off_site_redirect(app: FastAPI, target: str) -> None:
    """Starlette percent-encodes what browsers would normalise to //host."""
    with http(app) as c:
        answer = c.post("/login", data={"token": token(), "next": target}, follow_redirects=False)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("/"), location
    assert not location.startswith(("//", "/\\")), location
    assert "\t" not in location, location
    assert "\\" not in location, location


def test_the_login_page_shows_only_its_own_texts_for_a_code(app: FastAPI) -> None:
    """Content spoofing: /login?error=... used to print any sentence of the link as the console's own error."""
    text = "Your account is suspended. Call +1 555 0100 and read out your token to restore access."
    with http(app) as c:
        spoofed = c.get("/login", params={"error": text})
        assert spoofed.status_code == 200
        assert "suspended" not in spoofed.text
        assert 'role="alert"' not in spoofed.text, "an unknown code shows nothing"
        known = c.get("/login", params={"error": "token_expired"})
        assert "That token has expired" in known.text
        assert 'role="alert"' in known.text
        refused = c.post("/login", data={"token": token()[:-4] + "AAAA"}, follow_redirects=False)
        assert refused.headers["location"] == "/login?error=signature"
        assert "signature does not verify" in c.get(refused.headers["location"]).text


def test_operator_token_never_opens_billing_and_console_token_never_opens_operators(
    chdb_client: Client, auth_db: str
) -> None:
    with http(make_app(chdb_client, auth_db)) as c:
        assert c.get("/usage", headers=bearer(token())).status_code == 401
        assert c.get("/api/v1/apps", headers=bearer(OPERATOR_TOKEN)).status_code == 401


def test_logout_clears_the_cookies(app: FastAPI) -> None:
    with http(app) as c:
        c.post("/login", json={"token": token()})
        answer = c.post("/logout")
        assert answer.status_code == 200
        assert all("Max-Age=0" in h or "expires=" in h.lower() for h in answer.headers.get_list("set-cookie"))
        assert c.get("/api/v1/usage").status_code == 401


def test_behind_https_the_cookies_are_secure(app: FastAPI) -> None:
    with TestClient(app, base_url="https://console.example") as c:
        answer = c.post("/login", json={"token": token()})
        assert all("Secure" in h for h in answer.headers.get_list("set-cookie"))


@pytest.mark.parametrize(
    ("body", "parameter"),
    [(b"{not json", "body"), (b'{"token": ""}', "token"), (b"{}", "token"), (b"[1]", "token")],
)
def test_a_bad_login_body_is_400_naming_it(app: FastAPI, body: bytes, parameter: str) -> None:
    with http(app) as c:
        answer = c.post("/login", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400
        assert answer.json()["parameter"] == parameter


def test_an_expired_token_cannot_sign_in(app: FastAPI) -> None:
    with http(app) as c:
        old = token(ttl=timedelta(minutes=1), now=datetime.now(UTC) - timedelta(hours=1))
        assert c.post("/login", json={"token": old}).status_code == 401


def test_oversized_bodies_are_413(app: FastAPI) -> None:
    with http(app) as c:
        big = b'{"token": "' + b"a" * (2 * 1024 * 1024) + b'"}'
        answer = c.post("/login", content=big, headers={"Content-Type": "application/json"})
        assert answer.status_code == 413
        assert answer.json()["parameter"] == "body"

        def chunks() -> Iterator[bytes]:
            for _ in range(40):
                yield b"x" * 65536

        chunked = c.post("/login", content=chunks(), headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413, "a body without Content-Length is counted as it comes"


def test_unknown_routes_and_methods_answer_in_the_error_shape(app: FastAPI) -> None:
    with http(app) as c:
        assert c.get("/api/v1/nope").json()["error"].startswith("no route")
        answer = c.delete("/api/v1/usage", headers=bearer(token()))
        assert answer.status_code == 405
        assert "error" in answer.json()


# -- claims, leeway, algorithms -------------------------------------------------------------


def claims(**changes: Any) -> dict[str, Any]:
    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    return {"sub": "u", "account_id": ACCOUNT, "role": "admin", "shared": False, "exp": exp, **changes}


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (claims(), 200),
        ({k: v for k, v in claims().items() if k != "shared"}, 401),
        ({k: v for k, v in claims().items() if k != "exp"}, 401),
        ({k: v for k, v in claims().items() if k != "account_id"}, 401),
        (claims(shared="false"), 401),
        (claims(account_id=""), 401),
        (claims(role="owner"), 403),
        (claims(exp=-20), 200),  # expired 20 s ago: within the 30 s leeway
        (claims(exp=-60), 401),
    ],
)
def test_claims_are_required_and_typed(app: FastAPI, payload: dict[str, Any], status: int) -> None:
    if isinstance(payload.get("exp"), int) and payload["exp"] < 0:  # seconds from now, when the test runs
        payload = {**payload, "exp": int(datetime.now(UTC).timestamp()) + payload["exp"]}
    with http(app) as c:
        assert c.get("/api/v1/usage", headers=bearer(claims_token(payload))).status_code == status


def test_issuer_and_audience_are_checked_when_configured(chdb_client: Client, auth_db: str) -> None:
    app = app_with_poke(chdb_client, auth_db, issuer="https://idp.example/", audience="metering")
    good = claims(iss="https://idp.example/", aud="metering")
    with http(app) as c:
        assert c.get("/api/v1/usage", headers=bearer(claims_token(good))).status_code == 200
        for wrong in ({**good, "iss": "https://other/"}, {**good, "aud": "billing"}, claims()):
            assert c.get("/api/v1/usage", headers=bearer(claims_token(wrong))).status_code == 401


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, path, pem


def test_rs256_with_a_jwks_file(chdb_client: Client, auth_db: str, rsa_keys: tuple[Any, Path, bytes]) -> None:
    key, path, pem = rsa_keys
    app = make_app(chdb_client, auth_db, console_settings(secret="", jwks=str(path)))
    signed = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "k1"})
    with http(app) as c:
        assert c.get("/api/v1/usage", headers=bearer(signed)).status_code == 200
        other_kid = jwt.encode(claims(), key, algorithm="RS256", headers={"kid": "k2"})
        assert c.get("/api/v1/usage", headers=bearer(other_kid)).status_code == 401
        hs = token()  # an HS256 token: not this deployment's algorithm
        assert c.get("/api/v1/usage", headers=bearer(hs)).status_code == 401
        confused = jwt.encode(claims(), "x" * 40, algorithm="HS256", headers={"kid": "k1"})
        assert c.get("/api/v1/usage", headers=bearer(confused)).status_code == 401
        assert pem  # the public key never signs: PyJWT refuses it as an HMAC secret, and RS256 is the only algorithm


# -- settings and `metering token` ------------------------------------------------------------------


def test_settings_name_what_is_wrong(tmp_path: Path) -> None:
    _, errors = read_console_settings({"METERING_CONSOLE_SECRET": "s" * 40, "METERING_CONSOLE_JWKS": "https://x/j"})
    assert len(errors) == 1
    assert "METERING_CONSOLE_SECRET and METERING_CONSOLE_JWKS" in errors[0]
    _, errors = read_console_settings({"METERING_CONSOLE_SECRET": "short"})
    assert "at least 32" in errors[0]
    assert "short" not in errors[0], "a secret is never printed"
    _, errors = read_console_settings({"METERING_CONSOLE_JWKS": str(tmp_path / "missing.json")})
    assert "cannot read" in errors[0]
    _, errors = read_console_settings({"METERING_CONSOLE_NOW": "yesterday", "METERING_CONSOLE_EXPORT_MAX_DAYS": "0"})
    assert len(errors) == 2


def test_metering_token_signs_with_the_deployments_secret(tmp_path: Path) -> None:
    env = {"METERING_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["token", "--account", "acme", "--role", "member", "--ttl", "30m"], env=env)
    assert result.exit_code == 0, result.output
    secret_path = secret_file(tmp_path)
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    secret = deployment_secret(console_settings(secret=""), tmp_path)
    decoded = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert (decoded["account_id"], decoded["role"], decoded["shared"]) == ("acme", "member", False)
    assert 1790 <= decoded["exp"] - decoded["iat"] <= 1800
    again = CliRunner().invoke(main, ["token", "--account", "acme", "--shared"], env=env)
    assert jwt.decode(again.stdout.strip(), secret, algorithms=["HS256"])["shared"] is True, "the same secret"
    with_secret = CliRunner().invoke(main, ["token", "--account", "a"], env={**env, "METERING_CONSOLE_SECRET": SECRET})
    jwt.decode(with_secret.stdout.strip(), SECRET, algorithms=["HS256"])


def test_metering_token_refuses_in_rs256_mode_and_bad_options(
    tmp_path: Path, rsa_keys: tuple[Any, Path, bytes]
) -> None:
    env = {"METERING_DATA_DIR": str(tmp_path), "METERING_CONSOLE_JWKS": str(rsa_keys[1])}
    result = CliRunner().invoke(main, ["token", "--account", "acme"], env=env)
    assert result.exit_code != 0
    assert "RS256" in result.output
    env = {"METERING_DATA_DIR": str(tmp_path)}
    bad_ttl = CliRunner().invoke(main, ["token", "--account", "acme", "--ttl", "soon"], env=env)
    assert bad_ttl.exit_code != 0
    assert "--ttl" in bad_ttl.output
