"""The Billing pages: server-rendered HTML shells under ``/console/``, filled by a small script each.

A page carries no billing data of its own: its script reads the same ``/api/v1`` routes any
client uses, with the session cookie (and its CSRF token on POST), so the page and the API can
never disagree and every figure passes the API's role and tenancy checks. The page itself checks
the session first, so nobody but the account's own admins even gets the shell:

- no session, or an expired or invalid one: 303 to ``/login`` with a message (and ``next``);
- a member or a shared account user: 403, a page saying they lack access, with no data;
- Orders & invoices for an Enterprise account: 403 as well, and the navigation leaves it out.

``/login`` is the sign-in form (it posts the platform token to ``POST /login``), and
``/login?once=CODE`` the one-time link ``metering run`` prints (:mod:`console.login_link`).
``/login?error=CODE`` shows the text of a code of :data:`LOGIN_MESSAGES`, never text from the URL.

The pages are on the open audience (``open_router``) because their refusals are pages, not the
API's JSON: :func:`billing_viewer` applies the same permission check (``console.permissions``)
and turns a refusal into the 403 page or the login redirect.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from console.auth import AuthError, KeysUnavailableError, Principal
from console.billing import PROVIDERS, billing_type, plan_catalog
from console.context import ConsoleContext
from console.deps import SESSION_COOKIE, console_context, csrf_token, open_router
from console.login_link import redeem
from console.permissions import BILLING_VIEW, refusal
from console.routers.session import _set_cookies as set_session_cookies  # one way to set the session cookies
from console.tenancy import AccountScope
from pipeline.balance.catalog import CatalogPlan

__all__ = ["STATIC_DIR", "install_pages", "router"]

HERE: Final = Path(__file__).parent
STATIC_DIR: Final = HERE / "static"
templates: Final = Jinja2Templates(directory=HERE / "templates")
router = open_router(tags=["pages"])

RANGES: Final = (("24h", "24 hours"), ("7d", "7 days"), ("30d", "30 days"), ("3m", "3 months"), ("custom", "Custom"))
PAYMENT_METHOD_LABELS: Final = {"manual": "Manual (paid at once)", "transfer": "Bank transfer"}
_NO_STORE: Final = {"Cache-Control": "no-store"}
#: Set by every page rendered for a session, without an expiry: when the browser has dropped the
#: expired session cookie, this one still says there was a session, so the login page can say it ended.
SIGNED_IN_COOKIE: Final = "metering_signed_in"
SESSION_ENDED: Final = "Your session has ended. Log in again to continue."
#: What ``/login?error=CODE`` shows: only these texts, chosen by code, so a link can never make the console's
#: own page say something else (an unknown code shows nothing).
LOGIN_MESSAGES: Final = {
    "expired": SESSION_ENDED,
    "session_invalid": "Your session is no longer valid here. Log in again.",
    "token_expired": "That token has expired. Get a new one from your identity provider and log in again.",
    "signature": "That token's signature does not verify: it was not issued for this console.",
    "invalid": "That is not a valid token for this console. Paste the token your identity provider issued.",
    "unavailable": "Sign-in is unavailable for a moment: the identity provider's keys could not be fetched. "
    "Try again shortly.",
    "cross_site": "Sign-in from another site was refused. Log in here, on this page.",
}


@dataclass(frozen=True)
class NavItem:
    key: str
    label: str
    href: str


NAV: Final = (
    NavItem("usage", "Usage", "/console/usage"),
    NavItem("plans", "Plan & usage", "/console/plans"),
    NavItem("orders", "Orders & invoices", "/console/orders"),
)


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to /login saying why (a code of ``LOGIN_MESSAGES``)."""

    def __init__(self, code: str, next_path: str) -> None:
        super().__init__(code)
        self.code = code
        self.next_path = next_path


class PageForbidden(Exception):
    """The viewer may not see this page: 403 with a page that says why, and nothing else."""

    def __init__(self, reason: str, principal: Principal | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.principal = principal


@dataclass(frozen=True)
class Viewer:
    """The signed-in admin a page is rendered for."""

    principal: Principal
    csrf: str
    enterprise: bool


def billing_viewer(request: Request, context: Annotated[ConsoleContext, Depends(console_context)]) -> Viewer:
    """The session's admin, or LoginRequired / PageForbidden (turned into HTML by ``install_pages``)."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise LoginRequired("expired" if request.cookies.get(SIGNED_IN_COOKIE) else "", target)
    try:
        principal = context.authenticator.verify(token)  # a sync dependency: FastAPI runs it in the thread pool
    except AuthError as exc:
        raise LoginRequired("expired" if exc.code == "token_expired" else "session_invalid", target) from exc
    except KeysUnavailableError as exc:
        raise LoginRequired("unavailable", target) from exc
    refused = refusal(principal, BILLING_VIEW)
    if refused is not None:
        raise PageForbidden(refused[1], principal)
    return Viewer(principal, csrf_token(token), enterprise=is_enterprise(context, principal.account_id))


def is_enterprise(context: ConsoleContext, account_id: str) -> bool:
    """Whether the account is billed as Enterprise (by contract: no plan changes, funds or orders here)."""
    return billing_type(AccountScope(context.client, context.database, account_id)) == "enterprise"


def _nav(viewer: Viewer) -> list[NavItem]:
    return [item for item in NAV if not (item.key == "orders" and viewer.enterprise)]


def _page(request: Request, name: str, viewer: Viewer, active: str, **extra: Any) -> HTMLResponse:
    context = {
        "viewer": viewer.principal,
        "csrf_token": viewer.csrf,
        "nav": _nav(viewer),
        "active": active,
        "enterprise": viewer.enterprise,
        **extra,
    }
    response = templates.TemplateResponse(request, name, context, headers=_NO_STORE)
    secure = request.url.scheme == "https"
    response.set_cookie(SIGNED_IN_COOKIE, "1", path="/", samesite="lax", httponly=True, secure=secure)
    return response


@cache
def _zones() -> list[str]:
    """IANA zones for the Time zone control: UTC first, then Area/Place names (no aliases like EST5EDT)."""
    places = (z for z in zoneinfo.available_timezones() if "/" in z and not z.startswith(("Etc/", "posix/", "right/")))
    return ["UTC", *sorted(places)]


@router.get("/", response_class=RedirectResponse)
@router.get("/console", response_class=RedirectResponse)
@router.get("/console/", response_class=RedirectResponse)
def home() -> RedirectResponse:
    return RedirectResponse("/console/usage", status_code=303)


#: The usage page's filters travel in its query string (its script reads them, so a view can be
#: bookmarked); declared here so the app's check of unknown parameters knows them.
_Filter = Annotated[str | None, Query(include_in_schema=True)]


@router.get("/console/usage", response_class=HTMLResponse)
def usage_page(  # noqa: PLR0917 - the filters
    request: Request,
    viewer: Annotated[Viewer, Depends(billing_viewer)],
    app: _Filter = None,
    range: _Filter = None,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: _Filter = None,
    by: _Filter = None,
    timezone: _Filter = None,
    view: _Filter = None,
) -> HTMLResponse:
    return _page(request, "usage.html", viewer, "usage", ranges=RANGES, zones=_zones())


@router.get("/console/plans", response_class=HTMLResponse)
def plans_page(
    request: Request,
    viewer: Annotated[Viewer, Depends(billing_viewer)],
    context: Annotated[ConsoleContext, Depends(console_context)],
) -> HTMLResponse:
    plans = sorted(plan_catalog(context).plans.values(), key=lambda p: p.rank)
    offered = [{"name": p.name, "rank": p.rank, "description": _plan_summary(p)} for p in plans]
    methods = context.extras.get(PROVIDERS) or ["manual"]
    payment_methods = [{"value": m, "label": PAYMENT_METHOD_LABELS.get(m, m)} for m in methods]
    page_data = {"plans": offered, "enterprise": viewer.enterprise}
    return _page(request, "plans.html", viewer, "plans", page_data=page_data, payment_methods=payment_methods)


def _plan_summary(plan: CatalogPlan) -> str:
    """What a plan costs, in a few words for the plan picker."""
    term = f", {plan.term_months}-month term" if plan.term_months else ""
    return (
        f"{plan.price_per_usage_session} {plan.currency}/usage session, "
        f"{plan.price_per_voice_session}/voice, {plan.price_per_alert_session}/alert{term}"
    )


@router.get("/console/orders", response_class=HTMLResponse)
def orders_page(request: Request, viewer: Annotated[Viewer, Depends(billing_viewer)]) -> HTMLResponse:
    if viewer.enterprise:
        raise PageForbidden(
            "Orders & invoices are not available to Enterprise accounts: your invoices come from your account "
            "manager; contact support for copies.",
            viewer.principal,
        )
    return _page(request, "orders.html", viewer, "orders")


@router.get("/login", response_class=HTMLResponse)
def login_page(
    request: Request,
    context: Annotated[ConsoleContext, Depends(console_context)],
    *,
    error: str = "",
    expired: str = "",
    next: str = "",
    once: str = "",
) -> Response:
    once_refused = ""  # the console's own text on a one-time link it refused
    if once:
        result = redeem(context, once)
        if isinstance(result, str):
            once_refused = result
        else:
            token, principal = result
            signed_in = RedirectResponse("/console/usage", status_code=303)
            set_session_cookies(signed_in, request, token, principal)
            return signed_in
    message, kind = "", "info"
    if error in LOGIN_MESSAGES:
        message, kind = LOGIN_MESSAGES[error], "error"
    elif once_refused:
        message, kind = once_refused, "error"
    elif expired:
        message = SESSION_ENDED
    landing = next if next.startswith("/") and not next.startswith("//") else ""
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"message": message, "message_kind": kind, "next": landing, "nav": [], "viewer": None, "csrf_token": ""},
        headers=_NO_STORE,
    )
    response.delete_cookie(SIGNED_IN_COOKIE, path="/")
    return response


def install_pages(app: FastAPI) -> None:
    """The pages, their static files (``/console/static``) and their HTML answers to LoginRequired/PageForbidden."""
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.include_router(router)

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        query = {"next": exc.next_path}
        if exc.code:
            query["error"] = exc.code
        return RedirectResponse(f"/login?{urlencode(query, quote_via=quote)}", status_code=303, headers=_NO_STORE)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageForbidden)
        principal = exc.principal
        context: dict[str, Any] = {"reason": exc.reason, "viewer": principal, "nav": [], "active": "", "csrf_token": ""}
        if principal is not None:
            token = request.cookies.get(SESSION_COOKIE, "")
            context["csrf_token"] = csrf_token(token) if token else ""
        return templates.TemplateResponse(request, "forbidden.html", context, status_code=403, headers=_NO_STORE)

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PageForbidden, forbidden)
