"""The console's ASGI application: the routers wired together, one error shape, one auth model.

:func:`create_app` is the factory (the store process serves it with uvicorn, tests call it with a
context of their own). It checks that every route declares exactly one audience
(``console.deps``) before anything is served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import fastapi.routing
from clickhouse_connect.driver.client import Client
from fastapi import APIRouter, Depends, FastAPI
from fastapi.dependencies.models import Dependant

from console.auth import Authenticator, deployment_secret
from console.billing import billing_extras
from console.context import ConsoleContext
from console.deps import Audience, audience_of, reject_unknown_parameters
from console.errors import install_handlers
from console.headers import SecurityHeaders
from console.limits import BodyLimit
from console.pages import install_pages
from console.routers import exports, health, operators, orders, plan_operators, plans, session, usage
from consumers.clickhouse.client import connect
from pipeline.infra.settings import Settings

__all__ = ["OPENAPI_URL", "ROUTERS", "RouteInfo", "api_routes", "create_app", "store_context"]

OPENAPI_URL: Final = "/api/v1/openapi.json"

#: Every section's router, in the order their routes are matched. Add a section here.
ROUTERS: Final[list[APIRouter]] = [
    health.router,
    session.router,
    operators.router,
    plan_operators.router,
    usage.router,
    exports.router,
    plans.router,
    orders.router,
]


def create_app(context: ConsoleContext, routers: Sequence[APIRouter] | None = None) -> FastAPI:
    """The app over ``context``; raises RuntimeError naming a route without exactly one audience."""
    app = FastAPI(
        title="metering Billing console",
        version="1",
        openapi_url=OPENAPI_URL,
        docs_url="/api/v1/docs",
        redoc_url=None,
        dependencies=[Depends(reject_unknown_parameters)],
    )
    app.state.console = context
    for router in ROUTERS if routers is None else routers:
        app.include_router(router)
    install_pages(app)
    install_handlers(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)  # outermost: a 413 gets the headers too
    check_audiences(app)
    return app


@dataclass(frozen=True)
class RouteInfo:
    """One API route as the app serves it (the router's dependencies included)."""

    path: str
    methods: frozenset[str]
    dependant: Dependant
    audiences: frozenset[Audience]
    status_code: int | None = None  # the route's success code, when it declares one

    @property
    def audience(self) -> Audience:
        (only,) = self.audiences
        return only


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every API route of ``app`` (not the OpenAPI document or docs pages), as served."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)  # FastAPI >= 0.16x keeps included routers
    entries: Iterable[Any] = iterate(app.routes) if iterate is not None else app.routes
    out: list[RouteInfo] = []
    for entry in entries:
        dependant = getattr(entry, "dependant", None)
        if not isinstance(dependant, Dependant) or isinstance(getattr(entry, "original_route", entry), APIRouter):
            continue
        path = str(getattr(entry, "path", ""))
        methods = frozenset(getattr(entry, "methods", None) or ())
        status = getattr(entry, "status_code", None)
        out.append(RouteInfo(path, methods, dependant, audience_of(dependant), status))
    return out


def check_audiences(app: FastAPI) -> None:
    """Every API route declares one audience (billing admin, operator or open), no more."""
    for route in api_routes(app):
        if len(route.audiences) != 1:
            raise RuntimeError(
                f"route {','.join(sorted(route.methods))} {route.path} declares {len(route.audiences)} audiences "
                f"({sorted(route.audiences)}): put it on exactly one of billing_router(), operator_router() or "
                "open_router() (console.deps)"
            )


def store_context(settings: Settings, client: Client, database: str, operator_token: str | None) -> ConsoleContext:
    """The context the store process serves: its client, a way to open more, the deployment's keys."""
    console = settings.console
    secret = None if console.jwks else deployment_secret(console, settings.data_dir)
    url = settings.with_clickhouse_default().clickhouse_url

    return ConsoleContext(
        client=client,
        database=database,
        settings=console,
        authenticator=Authenticator(console, secret),
        operator_token=operator_token,
        open_handle=lambda: connect(url, database),
        # data_dir: where the one-time login link waits (console.login_link)
        extras={**billing_extras(settings, client, database), "data_dir": settings.data_dir},
    )
