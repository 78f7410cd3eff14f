"""Per account, app and period usage from ClickHouse, in the exact shape `metering compute` prints.

The rows come from ``usage_15m`` (``sql/queries/usage_by_period.sql``) and match
``pipeline.rules.attribution.USAGE_COLUMNS`` column for column and in order, so the stream's
totals and an offline recomputation can be compared line by line (R8). The zone, dates and
filters are bound parameters: nothing the caller passes is formatted into SQL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Final, Literal, get_args

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

import sql
from consumers.clickhouse.client import check_database_name
from consumers.clickhouse.errors import ClickHouseError, ClickHouseUnavailableError, MissingTablesError
from pipeline.rules.attribution import UnknownZoneError, UsageRow, zone

__all__ = ["Period", "UnknownZoneError", "named_query", "usage"]

Period = Literal["day", "week", "month"]
PERIODS: Final[tuple[str, ...]] = get_args(Period)

_UNKNOWN_DATABASE: Final = 81
_UNKNOWN_TABLE: Final = 60


def usage(
    client: Client,
    database: str,
    *,
    start: date | None,
    end: date | None,
    apps: Sequence[str],
    account: str | None,
    period: Period,
    tz: str,
) -> list[UsageRow]:
    """Rows ``(account_id, app_id, day, conversations, usage, voice, alert, billing)``.

    ``day`` is the first local day of the period as ``YYYY-MM-DD`` (weeks start on Monday,
    ISO). ``start``/``end`` bound the local days counted, inclusive; a week or month they cut
    holds only the days inside. Only rows with a non-zero count, sorted by account, app, day.
    Raises :class:`UnknownZoneError` for a zone that is not an IANA name.
    """
    if period not in PERIODS:
        raise ValueError(f"period must be one of {', '.join(PERIODS)}, not {period!r}")
    if start is not None and end is not None and start > end:
        raise ValueError(f"the first day {start.isoformat()} is after the last day {end.isoformat()}")
    zone(tz)  # UnknownZoneError with the fix, before anything reaches the database
    if isinstance(apps, str):
        raise TypeError("apps is a sequence of app ids, not one string")
    rows = named_query(
        client,
        database,
        "usage_by_period",
        tz=tz,
        period=period,
        **{"from": start, "to": end},
        apps=list(apps),
        account=account,
    )
    result: list[UsageRow] = [
        (str(acc), str(app), str(day), int(conv), int(use), int(voice), int(alert), int(billing))
        for acc, app, day, conv, use, voice, alert, billing in rows
    ]
    result.sort()  # the order `metering compute` uses (Python string order), whatever the server's collation
    return result


def named_query(client: Client, database: str, name: str, **parameters: Any) -> list[tuple[Any, ...]]:
    """Run ``sql/queries/<name>.sql`` with bound ``parameters`` (plus ``database``).

    For the dashboard queries too (``sessions_by_channel``, ``top_apps``, ``sessions_of_day``).
    """
    check_database_name(database)
    if "tz" in parameters:
        zone(str(parameters["tz"]))
    text = sql.query(name)
    bound: Mapping[str, Any] = {"database": database, **parameters}
    try:
        result = client.query(text, parameters=dict(bound))
    except OperationalError as exc:
        raise ClickHouseUnavailableError(f"query {name} on database {database} failed: {exc}") from exc
    except DatabaseError as exc:
        raise _query_error(name, database, parameters, exc) from exc
    return [tuple(row) for row in result.result_rows]


def _query_error(name: str, database: str, parameters: Mapping[str, Any], exc: DatabaseError) -> Exception:
    text = str(exc)
    if "time zone" in text.lower() and "tz" in parameters:
        # Python's tzdata knows the zone but the server's does not: still the caller's zone.
        return UnknownZoneError(
            f"the ClickHouse server does not know time zone {parameters['tz']!r}: use an IANA name it "
            "ships (UTC, Europe/Paris, Asia/Kolkata) or update its time zone data"
        )
    if exc.code in (_UNKNOWN_DATABASE, _UNKNOWN_TABLE):
        return MissingTablesError(
            f"query {name}: database {database} has no metering tables yet (ClickHouse code {exc.code}); "
            "run the migrations (metering run applies them at start)"
        )
    return ClickHouseError(f"query {name} on database {database} failed (ClickHouse code {exc.code}): {exc}")
