"""What `metering usage` asks and prints: the validated request and its report text.

One request model (:class:`UsageQuery`) for the CLI, the operators' ``GET /usage`` route of the
console app (``console/routers/operators.py``) and a direct query, and one renderer
(:func:`usage_report`), so `metering usage` prints the same text whether it reads ClickHouse
itself or asks the running store. A wrong parameter is a :class:`UsageParameterError` naming it
and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, cast
from urllib.parse import parse_qs

from clickhouse_connect.driver.client import Client

from consumers.clickhouse.plans import usage_with_agents
from consumers.clickhouse.usage import PERIODS, Period, usage
from pipeline.infra.report import FORMATS, Format, render
from pipeline.rules.agent_book import AGENT_COLUMNS
from pipeline.rules.attribution import USAGE_COLUMNS, UnknownZoneError, zone

__all__ = [
    "CONTENT_TYPES",
    "UsageParameterError",
    "UsageQuery",
    "check_period",
    "parse_parameters",
    "usage_columns",
    "usage_query",
    "usage_report",
]

_DAY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SINGLE: Final = ("from", "to", "account", "by", "timezone", "format")
_PARAMETERS: Final = (*_SINGLE[:2], "app", *_SINGLE[2:])
#: The media type of each report format.
CONTENT_TYPES: Final = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "table": "text/plain; charset=utf-8",
}


class UsageParameterError(ValueError):
    """A usage parameter is wrong; ``parameter`` names it and ``fix`` says what to give instead."""

    def __init__(self, parameter: str, problem: str, fix: str) -> None:
        super().__init__(f"{parameter}: {problem}; {fix}")
        self.parameter = parameter
        self.problem = problem
        self.fix = fix

    def as_json(self) -> dict[str, str]:
        return {"error": str(self), "parameter": self.parameter, "problem": self.problem, "fix": self.fix}


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """A validated usage request: the same for the CLI, the API and a direct query."""

    start: date | None = None
    end: date | None = None
    apps: tuple[str, ...] = ()
    account: str | None = None
    by: Period = "day"
    tz: str = "UTC"
    fmt: Format = "csv"

    def parameters(self) -> list[tuple[str, str]]:
        """As API query parameters (what :func:`parse_parameters` reads back)."""
        out = [("from", self.start.isoformat())] if self.start else []
        out += [("to", self.end.isoformat())] if self.end else []
        out += [("app", app) for app in self.apps]
        out += [("account", self.account)] if self.account is not None else []
        return [*out, ("by", self.by), ("timezone", self.tz), ("format", self.fmt)]


def usage_query(
    *,
    start: date | None = None,
    end: date | None = None,
    apps: Sequence[str] = (),
    account: str | None = None,
    by: str = "day",
    tz: str = "UTC",
    fmt: str = "csv",
) -> UsageQuery:
    """Validate a request; :class:`UsageParameterError` names the first wrong parameter and the fix."""
    if by not in PERIODS:
        raise UsageParameterError("by", f"unknown period {by!r}", f"use one of {', '.join(PERIODS)}")
    if fmt not in FORMATS:
        raise UsageParameterError("format", f"unknown format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    try:
        zone(tz)
    except UnknownZoneError as exc:
        raise UsageParameterError(
            "timezone", f"unknown time zone {tz!r}", "use an IANA name such as UTC, Europe/Paris or Asia/Kolkata"
        ) from exc
    if start is not None and end is not None and start > end:
        raise UsageParameterError(
            "from",
            f"the first day {start.isoformat()} is after the last day (to) {end.isoformat()}",
            "swap them, or give a range whose first day comes first",
        )
    for app in apps:
        if not app:
            raise UsageParameterError("app", "an app id is empty", "give an app id, or leave the parameter out")
    if account == "":
        raise UsageParameterError("account", "the account id is empty", "give an account id, or leave it out")
    return UsageQuery(start, end, tuple(apps), account, cast(Period, by), tz, fmt)


def parse_parameters(query_string: str) -> UsageQuery:
    """The ``/usage`` query string as a :class:`UsageQuery`; unknown or repeated parameters are refused."""
    try:
        raw = parse_qs(query_string, keep_blank_values=True, strict_parsing=False, max_num_fields=200)
    except ValueError as exc:
        raise UsageParameterError("query", f"cannot be parsed ({exc})", "send name=value pairs joined by &") from exc
    for name, values in raw.items():
        if name not in _PARAMETERS:
            raise UsageParameterError(name, "unknown parameter", f"use only {', '.join(_PARAMETERS)}")
        if name in _SINGLE and len(values) > 1:
            raise UsageParameterError(name, f"given {len(values)} times", "give it once (only app may repeat)")

    def one(name: str) -> str | None:
        values = raw.get(name)
        return values[0] if values else None

    return usage_query(
        start=_day("from", one("from")),
        end=_day("to", one("to")),
        apps=raw.get("app", []),
        account=one("account"),
        by=one("by") or "day",
        tz=one("timezone") or "UTC",
        fmt=one("format") or "csv",
    )


def _day(name: str, value: str | None) -> date | None:
    if value is None:
        return None
    fix = "give a calendar day as YYYY-MM-DD, e.g. 2026-11-01, or leave the parameter out"
    if not _DAY.match(value):
        raise UsageParameterError(name, f"{value!r} is not a day", fix)
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise UsageParameterError(name, f"{value!r} is not a valid day ({exc})", fix) from exc


def usage_columns(by: Period) -> tuple[str, ...]:
    """``metering compute``'s columns (R11's two last); the period column is named after ``by``."""
    return tuple(by if c == "day" else c for c in (*USAGE_COLUMNS, *AGENT_COLUMNS))


def usage_report(client: Client, database: str, query: UsageQuery) -> str:
    """The text `metering usage` prints for ``query``, read from ``database``."""
    selection: dict[str, Any] = {
        "start": query.start,
        "end": query.end,
        "apps": list(query.apps),
        "account": query.account,
        "period": query.by,
        "tz": query.tz,
    }
    rows = usage_with_agents(client, database, usage(client, database, **selection), **selection)
    return render(usage_columns(query.by), rows, query.fmt, title=f"Usage by {query.by} ({query.tz})")


def check_period(start: date, end: date, tz: str) -> None:
    """The days are in order and the zone is one we know; UsageParameterError names what is not."""
    usage_query(start=start, end=end, tz=tz)
