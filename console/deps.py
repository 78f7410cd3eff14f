"""Route dependencies: who may call a route (its audience), the account scope, CSRF.

Every route of the app declares exactly one audience, by the router it is on:

- :func:`billing_router` (``Depends(require_billing_admin)``): the account's own admins
  (``role=admin``, ``shared=false``). Token in ``Authorization: Bearer`` or the session cookie;
  401 without a valid one, 403 with a reason for anyone else.
- :func:`operator_router` (``Depends(require_operator)``): the store's operator token
  (``<data_dir>/run/store.token``), never a console token; these routes span accounts.
- :func:`open_router` (``Depends(open_to_anyone)``): probes, login and logout.

``create_app`` refuses to start when a route declares none or several (so a new route cannot
forget its audience), and the auth matrix test walks the same route table.

CSRF: a request authenticated by the session cookie that is not GET/HEAD/OPTIONS must carry the
session's CSRF token in the ``X-CSRF-Token`` header or, for an HTML form, a ``csrf_token`` form
field. The token is an HMAC of the session token (signed double submit): ``POST /login`` returns
it and sets it in the ``metering_csrf`` cookie (readable by the page's script), and a page
rendered for a session can compute it with :func:`csrf_token`. Bearer requests need none: a
browser never adds that header on its own.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request
from fastapi.dependencies.models import Dependant
from starlette.concurrency import run_in_threadpool

from console.auth import AuthError, KeysUnavailableError, Principal
from console.context import ConsoleContext
from console.errors import ApiError, bad_parameter, forbidden, unauthorized
from console.permissions import BILLING_MANAGE, BILLING_VIEW, refusal
from console.tenancy import AccountScope

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "Audience",
    "account_scope",
    "audience_of",
    "billing_router",
    "console_context",
    "csrf_token",
    "open_router",
    "open_to_anyone",
    "operator_router",
    "reject_unknown_parameters",
    "require_billing_admin",
    "require_operator",
    "verify_token",
]

SESSION_COOKIE: Final = "metering_session"
CSRF_COOKIE: Final = "metering_csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf_token"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_CSRF_KEY: Final = b"metering console csrf v1"


class Audience(StrEnum):
    BILLING = "billing admin"
    OPERATOR = "operator"
    OPEN = "open"


def console_context(request: Request) -> ConsoleContext:
    context = request.app.state.console
    assert isinstance(context, ConsoleContext)
    return context


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: an HMAC of its token, so it needs no server-side state."""
    return hmac.new(_CSRF_KEY, session_token.encode(), hashlib.sha256).hexdigest()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("send Authorization: Bearer <token> (a token from your identity provider)")
    return token.strip()


async def verify_token(context: ConsoleContext, token: str) -> Principal:
    """The token's principal; in the thread pool when verifying may fetch the provider's keys (a JWKS URL), so a
    slow identity provider never holds the event loop (every other request) up."""
    if context.authenticator.fetches_keys:
        return await run_in_threadpool(context.authenticator.verify, token)
    return context.authenticator.verify(token)


async def require_billing_admin(request: Request) -> Principal:
    """The account's own admin, or 401/403; a cookie-authenticated POST also needs its CSRF token."""
    context = console_context(request)
    token = _bearer(request)
    by_cookie = token is None
    if token is None:
        token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise unauthorized("no token: send Authorization: Bearer <token>, or sign in with POST /login")
    try:
        principal = await verify_token(context, token)
    except AuthError as exc:
        raise unauthorized(str(exc)) from exc
    except KeysUnavailableError as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "10"}) from exc
    needed = BILLING_VIEW if request.method in _SAFE_METHODS else BILLING_MANAGE
    refused = refusal(principal, needed)
    if refused is not None:
        raise forbidden(*refused)
    if by_cookie and request.method not in _SAFE_METHODS:
        await _check_csrf(request, token)
    return principal


async def _check_csrf(request: Request, session_token: str) -> None:
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not given or not hmac.compare_digest(given, csrf_token(session_token)):
        raise forbidden(
            "csrf",
            f"a request signed in by cookie must carry its CSRF token: the {CSRF_HEADER} header or the "
            f"{CSRF_FIELD} form field (POST /login returns it; the {CSRF_COOKIE} cookie holds it)",
        )


def require_operator(request: Request) -> None:
    """The store's operator token: 401 without it or with another, 403 when the store has none."""
    expected = console_context(request).operator_token
    if not expected:
        raise forbidden("disabled", "operators' routes are disabled: this server was started without a token")
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise unauthorized(
            "send Authorization: Bearer <token>, the token in <data_dir>/run/store.token of this service "
            "(metering usage, plans and reconcile read it)"
        )


def open_to_anyone() -> None:
    """The open audience's marker: no check."""


AUDIENCES: Final[dict[Callable[..., Any], Audience]] = {
    require_billing_admin: Audience.BILLING,
    require_operator: Audience.OPERATOR,
    open_to_anyone: Audience.OPEN,
}


def billing_router(**kwargs: Any) -> APIRouter:
    """A router for the account's admins; its routes get the principal with ``Depends(require_billing_admin)``."""
    return APIRouter(dependencies=[Depends(require_billing_admin)], **kwargs)


def operator_router(**kwargs: Any) -> APIRouter:
    return APIRouter(dependencies=[Depends(require_operator)], **kwargs)


def open_router(**kwargs: Any) -> APIRouter:
    return APIRouter(dependencies=[Depends(open_to_anyone)], **kwargs)


def audience_of(dependant: Dependant) -> frozenset[Audience]:
    """The audiences a route's dependencies declare (the app accepts exactly one)."""
    found: set[Audience] = set()
    stack = list(dependant.dependencies)
    while stack:
        dependant = stack.pop()
        if dependant.call in AUDIENCES:
            found.add(AUDIENCES[dependant.call])
        stack.extend(dependant.dependencies)
    return frozenset(found)


def account_scope(
    principal: Annotated[Principal, Depends(require_billing_admin)],
    context: Annotated[ConsoleContext, Depends(console_context)],
) -> AccountScope:
    """The principal's account on the store's client (short queries)."""
    return AccountScope(context.client, context.database, principal.account_id)


def _query_names(root: Dependant) -> list[str]:
    """The query parameters a route takes, in the order it declares them."""
    names: list[str] = []
    stack = [root]
    while stack:
        dependant = stack.pop()
        names += [param.alias for param in dependant.query_params if param.alias not in names]
        stack.extend(reversed(dependant.dependencies))
    return names


def reject_unknown_parameters(request: Request) -> None:
    """400 naming a query parameter the route does not take (a typo would otherwise be ignored)."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if not isinstance(dependant, Dependant):
        return
    known = _query_names(dependant)
    for name in request.query_params:
        if name not in known:
            fix = f"use only {', '.join(known)}" if known else "this route takes no query parameters"
            error = bad_parameter(name, f"unknown parameter; {fix}")
            error.extra.update(problem="unknown parameter", fix=fix)
            raise error
