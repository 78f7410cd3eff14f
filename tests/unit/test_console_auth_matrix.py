"""The auth matrix, generated from the app's route table: every route, every kind of caller.

A route added later by anyone is in the table (``console.app.api_routes``) and so in this test,
with the expectations of the audience it declares (console.md, "Who may see what"):

- billing admin: the account's admin gets the route's success code; a member, a shared admin,
  an expired token, a wrong signature, ``alg: none``, a malformed token or none get 403/401; an
  admin of another account gets 404 for this account's app, and never sees its data;
- operator: only the store's operator token passes; every console token, even an admin's, is 401;
- open: anyone, no token needed.

A route's request is built from its OpenAPI operation: path parameters named like an app get
the account's app; a JSON body comes from the schema's ``example`` (a route that takes a body
must give one, or this test says so).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from console.app import RouteInfo, api_routes
from console.deps import Audience
from consumers.clickhouse import Client
from consumers.clickhouse.plans import PlanStore
from tests.console_support import (
    ACCOUNT,
    OPERATOR_TOKEN,
    OTHER_ACCOUNT,
    bearer,
    fill,
    http,
    issued_invoice,
    make_app,
    plan_snapshot,
    token,
    unsigned_token,
)
from tests.support import Conversation, alert, migrated_database

APP = "acme-support"
OTHER_APP = "globex-sales"
INVOICE = "INV-000001"
#: The value a path parameter gets (default: the account's app): a resource of the account.
PATH_VALUES = {"invoice_id": INVOICE}


@pytest.fixture(scope="module")
def matrix_db(chdb_client: Client) -> Iterator[str]:
    with migrated_database(chdb_client) as database:
        ours = Conversation("c-acme", app_id=APP, account_id=ACCOUNT).user(0).bot(1).user(3).events
        theirs = Conversation("c-globex", app_id=OTHER_APP, account_id=OTHER_ACCOUNT).user(0).bot(2).events
        fill(chdb_client, database, [*ours, *theirs, alert(5, app_id=APP, account_id=ACCOUNT)])
        # an app on a plan with a term (extension requests) and an invoice of the account (its PDF)
        PlanStore(chdb_client, database).insert([plan_snapshot(APP), issued_invoice(INVOICE)], "matrix:billing")
        yield database


@pytest.fixture(scope="module")
def app(chdb_client: Client, matrix_db: str) -> FastAPI:
    return make_app(chdb_client, matrix_db)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with http(app) as c:
        yield c


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    params: dict[str, str]
    json: Any
    success: int
    names_app: bool  # the request names an app (so another account's admin gets 404)
    resource: str = APP  # what it names (an app, an invoice)
    headers: tuple[tuple[str, str], ...] = ()  # required headers (an Idempotency-Key: a fresh one per call)


def calls(app: FastAPI, route: RouteInfo) -> list[Call]:
    """The requests that exercise ``route``: as given, and naming the app where it takes one."""
    document = app.openapi()
    out: list[Call] = []
    for method in sorted(route.methods - {"HEAD"}):
        operation = document["paths"][route.path][method.lower()]
        path, names_app, resource = route.path, False, APP
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                resource = PATH_VALUES.get(parameter["name"], APP)
                path = path.replace("{" + parameter["name"] + "}", resource)
                names_app = True  # any path parameter names a resource of the account
        body = None
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" in content and route.audience is Audience.BILLING:
            schema = content["application/json"].get("schema", {})
            body = schema.get("example") or _resolve_example(document, schema)
            assert body is not None, f"{method} {route.path}: give its JSON body schema an example for this matrix"
        success = route.status_code or 200
        headers = tuple(
            (p["name"], "") for p in operation.get("parameters", []) if p["in"] == "header" and p.get("required")
        )
        out.append(Call(method, path, {}, body, success, names_app, resource, headers))
        query_names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        if "app" in query_names:
            out.append(Call(method, path, {"app": APP}, body, success, True, APP, headers))
    return out


def _resolve_example(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    ref = schema.get("$ref")
    if ref:
        target = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        examples = target.get("examples") or ([target["example"]] if "example" in target else [])
        return examples[0] if examples else None
    return None


def test_every_route_declares_one_audience(app: FastAPI) -> None:
    routes = api_routes(app)
    assert routes, "the app has routes"
    for route in routes:
        assert len(route.audiences) == 1, route


def _billing_routes(app: FastAPI) -> list[RouteInfo]:
    return [r for r in api_routes(app) if r.audience is Audience.BILLING]


def _send(client: TestClient, call: Call, headers: dict[str, str]) -> Any:
    required = {name: uuid.uuid4().hex for name, _ in call.headers}  # e.g. Idempotency-Key: new each time
    return client.request(call.method, call.path, params=call.params, json=call.json, headers={**required, **headers})


def test_billing_routes_answer_each_kind_of_caller_as_the_spec_says(app: FastAPI, client: TestClient) -> None:
    routes = _billing_routes(app)
    assert routes, "there are billing routes to check"
    now = datetime.now(UTC)
    refused = {
        "member": (403, token(role="member")),
        "shared admin": (403, token(shared=True)),
        "shared member": (403, token(role="member", shared=True)),
        "expired": (401, token(ttl=timedelta(minutes=5), now=now - timedelta(hours=2))),
        "wrong signature": (401, token(secret="x" * 40)),
        "alg none": (401, unsigned_token()),
        "malformed": (401, "not-a-jwt"),
    }
    checked = 0
    for route in routes:
        for call in calls(app, route):
            what = f"{call.method} {call.path} {call.params}"
            answer = _send(client, call, bearer(token()))
            assert answer.status_code == call.success, f"{what} as the account's admin: {answer.text[:300]}"
            for caller, (status, value) in refused.items():
                answer = _send(client, call, bearer(value))
                assert answer.status_code == status, f"{what} as {caller}: {answer.status_code} {answer.text[:200]}"
                assert answer.json()["error"], f"{what} as {caller}: the body says why"
                if status == 403:
                    assert answer.json()["reason"] in ("not_admin", "shared_user")
            answer = _send(client, call, {})
            assert answer.status_code == 401, f"{what} without a token"
            assert answer.headers["www-authenticate"].startswith("Bearer")
            answer = _send(client, call, bearer(OPERATOR_TOKEN))
            assert answer.status_code == 401, f"{what} with the operator token: it is no console token"
            stranger = _send(client, call, bearer(token(OTHER_ACCOUNT)))
            if call.names_app:
                assert stranger.status_code == 404, f"{what} as another account's admin: {stranger.text[:200]}"
                missing = Call(
                    call.method,
                    call.path.replace(call.resource, "no-such-app"),
                    _no_app(call.params),
                    call.json,
                    call.success,
                    True,
                    call.resource,
                    call.headers,
                )
                if missing != call:
                    nobody = _send(client, missing, bearer(token()))
                    assert nobody.status_code == 404
                    assert nobody.json()["error"].replace("no-such-app", call.resource) == stranger.json()["error"], (
                        "another account's app answers exactly like a missing one"
                    )
            else:
                assert stranger.status_code == call.success, f"{what} as another account's admin"
                assert APP not in stranger.text, f"{what}: another account's admin sees none of this account's data"
            checked += 1
    assert checked >= len(routes)


def _no_app(params: dict[str, str]) -> dict[str, str]:
    return {k: ("no-such-app" if k == "app" else v) for k, v in params.items()}


def test_operator_routes_take_the_operator_token_only(app: FastAPI, client: TestClient) -> None:
    routes = [r for r in api_routes(app) if r.audience is Audience.OPERATOR]
    assert {r.path for r in routes} >= {"/usage", "/plans", "/reconcile/sessions", "/reconcile/repair"}
    for route in routes:
        for call in calls(app, route):
            what = f"{call.method} {call.path}"
            for value in (token(), token(role="member"), unsigned_token(), "guess"):
                assert _send(client, call, bearer(value)).status_code == 401, f"{what}: a console token"
            assert _send(client, call, {}).status_code == 401, f"{what}: no token"
            answer = _send(client, call, bearer(OPERATOR_TOKEN))
            assert answer.status_code not in (401, 403, 404), f"{what} with the operator token: {answer.text[:200]}"


def test_open_routes_need_no_token(app: FastAPI, client: TestClient) -> None:
    routes = [r for r in api_routes(app) if r.audience is Audience.OPEN]
    assert {r.path for r in routes} >= {"/healthz", "/readyz", "/login", "/logout"}
    for route in routes:
        for call in calls(app, route):
            answer = _send(client, call, {})
            assert answer.status_code not in (401, 403, 404, 500), f"{call.method} {call.path}: {answer.text[:200]}"
