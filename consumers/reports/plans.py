"""`metering plans`: every app's plan, balance and this month's usage and cost, as a table, CSV or JSON.

Like `metering usage`, it reads ClickHouse directly when it is a server, and asks the running
store process (``GET /plans``) when the database is embedded and held by it: both render with
:func:`plans_report`, so the text is the same either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final
from urllib.parse import parse_qs

from clickhouse_connect.driver.client import Client

from consumers.clickhouse.plans import PLAN_COLUMNS, plans_overview
from consumers.reports.usage import UsageParameterError
from pipeline.infra.report import FORMATS, Format, render
from pipeline.rules.attribution import UnknownZoneError, zone

__all__ = ["PlansQuery", "parse_plans_parameters", "plans_query", "plans_report"]

_MONTH: Final = re.compile(r"^\d{4}-\d{2}$")
_PARAMETERS: Final = ("account", "month", "timezone", "format")


@dataclass(frozen=True, slots=True)
class PlansQuery:
    """A validated `metering plans` request: the month is its first local day."""

    month: date
    account: str | None = None
    tz: str = "UTC"
    fmt: Format = "table"

    def parameters(self) -> list[tuple[str, str]]:
        out = [("account", self.account)] if self.account is not None else []
        return [*out, ("month", self.month.strftime("%Y-%m")), ("timezone", self.tz), ("format", self.fmt)]


def plans_query(
    *,
    account: str | None = None,
    month: str | None = None,
    tz: str = "UTC",
    fmt: str = "table",
    now: datetime | None = None,
) -> PlansQuery:
    """Validate; the month defaults to the current one in ``tz``. UsageParameterError names a wrong option."""
    try:
        zone_info = zone(tz)
    except UnknownZoneError as exc:
        raise UsageParameterError(
            "timezone", f"unknown time zone {tz!r}", "use an IANA name such as UTC, Europe/Paris or Asia/Kolkata"
        ) from exc
    if fmt not in FORMATS:
        raise UsageParameterError("format", f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    if account == "":
        raise UsageParameterError("account", "the account id is empty", "give an account id, or leave it out")
    if month is None:
        first = (now or datetime.now(zone_info)).astimezone(zone_info).date().replace(day=1)
    else:
        fix = "give a month as YYYY-MM, e.g. 2026-11, or leave it out for the current one"
        if not _MONTH.match(month):
            raise UsageParameterError("month", f"{month!r} is not a month", fix)
        try:
            first = date.fromisoformat(f"{month}-01")
        except ValueError as exc:
            raise UsageParameterError("month", f"{month!r} is not a valid month ({exc})", fix) from exc
    return PlansQuery(month=first, account=account, tz=tz, fmt=fmt)


def parse_plans_parameters(query_string: str) -> PlansQuery:
    """The ``/plans`` query string; unknown or repeated parameters are refused."""
    raw = parse_qs(query_string, keep_blank_values=True, max_num_fields=20)
    for name, values in raw.items():
        if name not in _PARAMETERS:
            raise UsageParameterError(name, "unknown parameter", f"use only {', '.join(_PARAMETERS)}")
        if len(values) > 1:
            raise UsageParameterError(name, f"given {len(values)} times", "give it once")
    one = {name: values[0] for name, values in raw.items()}
    return plans_query(
        account=one.get("account"),
        month=one.get("month"),
        tz=one.get("timezone", "UTC"),
        fmt=one.get("format", "table"),
    )


def plans_report(client: Client, database: str, query: PlansQuery) -> str:
    """The text `metering plans` prints for ``query``, read from ``database``."""
    rows = plans_overview(client, database, account=query.account, month=query.month, tz=query.tz)
    title = f"Plans, balances and usage of {query.month:%Y-%m} ({query.tz})"
    return render(PLAN_COLUMNS, rows, query.fmt, title=title)
