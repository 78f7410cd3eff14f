"""§1 Usage: ``GET /api/v1/usage`` (JSON) and ``GET /api/v1/usage.csv`` (the same rows, an attachment)."""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated

from fastapi import Depends, Query, Response
from pydantic import BaseModel, Field

from console.attachments import attachment
from console.context import ConsoleContext
from console.deps import account_scope, billing_router, console_context
from console.errors import bad_parameter
from console.tenancy import AccountScope
from console.usage import METRICS, UsageSeries, usage_series
from console.usage_range import resolve_range
from consumers.clickhouse.usage import UnknownZoneError

router = billing_router(prefix="/api/v1", tags=["usage"])


class Metrics(BaseModel):
    billing_sessions: int = Field(description="usage + alert sessions (R8)")
    usage_sessions: int
    voice_sessions: int
    alert_sessions: int
    agents: int = Field(description="seats subscribed (R11); for all apps the sum of the apps' seats")
    active_agents: int = Field(description="distinct agents who took a transfer")


class Point(Metrics):
    period: str = Field(description="first local day (YYYY-MM-DD), or for hours its start in RFC 3339")


class RangeOut(BaseModel):
    from_: str = Field(alias="from")
    to: str
    by: str
    timezone: str


class UsageOut(BaseModel):
    account_id: str
    app: str | None
    range: RangeOut
    series: list[Point]
    totals: Metrics


_App = Annotated[str | None, Query(description="one app of the account; all apps when left out")]
_Range = Annotated[str | None, Query(description="24h, 7d, 30d, 3m or custom (with from and to)")]
_From = Annotated[str | None, Query(alias="from", description="custom range: first local date, YYYY-MM-DD")]
_To = Annotated[str | None, Query(description="custom range: last local date, included (at most 366 days)")]
_By = Annotated[str | None, Query(description="hour (24h only), day, week or month")]
_Zone = Annotated[str, Query(description="IANA time zone of the periods")]


def series_of(
    *,
    scope: Annotated[AccountScope, Depends(account_scope)],
    context: Annotated[ConsoleContext, Depends(console_context)],
    app: _App = None,
    range: _Range = None,
    from_: _From = None,
    to: _To = None,
    by: _By = None,
    timezone: _Zone = "UTC",
) -> UsageSeries:
    """The request's series: parameters checked (400 naming one), the app the account's (else 404)."""
    rng = resolve_range(context.now(), range_name=range, start=from_, end=to, by=by, timezone=timezone)
    if app is not None:
        if not app.strip():
            raise bad_parameter("app", "is empty: give an app id, or leave it out for all apps")
        scope.require_app(app)
    try:
        return usage_series(scope, rng, app)
    except UnknownZoneError as exc:  # the database's zone data lacks a zone Python knows
        raise bad_parameter("timezone", str(exc)) from exc


Series = Annotated[UsageSeries, Depends(series_of)]


@router.get("/usage", response_model=UsageOut, summary="Usage per period of all apps of the account, or one app")
def usage(series: Series) -> Response:
    return Response(_json(series), media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get(
    "/usage.csv",
    summary="The same rows as CSV: period, then the metrics",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "the series as an attachment"}},
)
def usage_csv(series: Series) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("period", *METRICS))
    writer.writerows(point.row() for point in series.series)
    name = f"usage-{series.app or 'all-apps'}-{series.range.label_from[:10]}-{series.range.label_to[:10]}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": attachment(name), "Cache-Control": "no-store"},
    )


def _json(series: UsageSeries) -> bytes:
    return json.dumps(series.as_json(), separators=(",", ":")).encode()
