"""The operators' routes, across accounts: what `metering usage`, `plans` and `reconcile` ask the store.

They require the store's operator token (``<data_dir>/run/store.token``, mode 0600, a fresh one
per start): whoever may open the embedded database directly may use them, nobody else, and a
console token never does. Their answers are the text the commands print (the same renderers),
so a command prints the same whether it reads ClickHouse itself or asks here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Protocol, TypeVar

import msgspec
from fastapi import Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from console.context import ConsoleContext
from console.deps import console_context, operator_router
from consumers.clickhouse import Client
from consumers.clickhouse.reconcile import PeriodRequest, RepairBatch, apply_batch, snapshot
from consumers.reports.plans import parse_plans_parameters, plans_report
from consumers.reports.usage import CONTENT_TYPES, UsageParameterError, check_period, parse_parameters, usage_report
from pipeline.infra.report import Format
from pipeline.rules.attribution import UnknownZoneError

router = operator_router(tags=["operators"])

Context = Annotated[ConsoleContext, Depends(console_context)]
_Text = Annotated[str | None, Query()]


@router.get("/usage", summary="What `metering usage` prints, for every account (operator token)")
def usage(
    *,
    request: Request,
    context: Context,
    from_: Annotated[str | None, Query(alias="from")] = None,
    to: _Text = None,
    app: Annotated[list[str] | None, Query()] = None,
    account: _Text = None,
    by: _Text = None,
    timezone: _Text = None,
    format: _Text = None,
) -> Response:
    return _report(request, context, parse_parameters, usage_report)


@router.get("/plans", summary="What `metering plans` prints, for every account (operator token)")
def plans(
    *,
    request: Request,
    context: Context,
    account: _Text = None,
    month: _Text = None,
    timezone: _Text = None,
    format: _Text = None,
) -> Response:
    return _report(request, context, parse_plans_parameters, plans_report)


class _Query(Protocol):
    @property
    def fmt(self) -> Format: ...


Q = TypeVar("Q", bound=_Query)


def _report(
    request: Request, context: ConsoleContext, parse: Callable[[str], Q], report: Callable[[Client, str, Q], str]
) -> Response:
    """The command's text for the request's parameters, or a 400 naming the wrong one."""
    try:
        query = parse(request.url.query)
        text = report(context.client, context.database, query)
    except UsageParameterError as exc:
        return JSONResponse(exc.as_json(), status_code=400)
    except (UnknownZoneError, OSError) as exc:  # the server's tz data lacks the zone; "Etc" is a directory
        return JSONResponse(UsageParameterError("timezone", str(exc), "use another zone").as_json(), status_code=400)
    return Response(text, media_type=CONTENT_TYPES[query.fmt], headers={"Cache-Control": "no-store"})


_JSON_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}}


@router.post(
    "/reconcile/sessions",
    summary="What ClickHouse bills for local days {from, to, timezone}, for `metering reconcile`",
    openapi_extra=_JSON_BODY,
)
async def reconcile_sessions(request: Request, context: Context) -> Response:
    try:
        period = await _decoded(request, PeriodRequest)
        check_period(period.start, period.end, period.timezone)
    except (msgspec.ValidationError, msgspec.DecodeError, UsageParameterError, UnknownZoneError, ValueError, OSError) as e:  # noqa: E501
        return _bad_body("/reconcile/sessions", e)
    answer = await run_in_threadpool(
        snapshot, context.client, context.database, start=period.start, end=period.end, tz=period.timezone
    )
    return _json(answer)


@router.post(
    "/reconcile/repair",
    summary="Apply one repair batch (audit row, inserts, voids) of `metering reconcile --repair`",
    openapi_extra=_JSON_BODY,
)
async def reconcile_repair(request: Request, context: Context) -> Response:
    try:
        batch = await _decoded(request, RepairBatch)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        return _bad_body("/reconcile/repair", e)
    try:
        outcome = await run_in_threadpool(apply_batch, context.client, context.database, batch)
    except ValueError as e:
        return _bad_body("/reconcile/repair", e)
    return _json(outcome)


B = TypeVar("B")

async def _decoded(request: Request, body_type: type[B]) -> B:
    """The request's JSON body as ``body_type``; msgspec's DecodeError or ValidationError if it is not one."""
    return msgspec.json.decode(await request.body(), type=body_type)


def _bad_body(route: str, error: Exception) -> JSONResponse:
    """400 for a body ``route`` cannot use, naming the route and the parameter."""
    return JSONResponse({"error": f"{route}: {error}", "parameter": "body"}, status_code=400)


def _json(answer: Any) -> Response:
    return Response(msgspec.json.encode(answer), media_type="application/json")
