"""The usage HTTP API: what `metering usage` prints, served by the process that owns ClickHouse.

An embedded chDB database can be open in one process only, so the store process (sink, API,
metrics) answers `metering usage` for the others. Standard library only: a
``ThreadingHTTPServer`` in a daemon thread.

- ``GET /usage?from=&to=&app=&account=&by=&timezone=&format=``: the text `metering usage`
  prints, byte for byte (both render with :func:`usage_report`).
- ``GET /healthz``: 200 while the server serves. ``GET /readyz``: 200 when ClickHouse answers
  a trivial query, 503 with the reason otherwise.

Bad parameters get a 400 with a JSON body naming the parameter and the fix. The client is
shared with the sink thread; that is safe without a lock of ours: clickhouse-connect's chDB
backend serializes calls on its handle with its own lock, and its HTTP client
(``autogenerate_session_id=False``) is thread-safe.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, cast
from urllib.parse import parse_qs, urlsplit

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import Error as DriverError

from consumers.clickhouse.errors import ClickHouseError
from consumers.clickhouse.usage import PERIODS, Period, usage
from pipeline.logs import fields
from pipeline.report import FORMATS, Format, render
from pipeline.rules.attribution import USAGE_COLUMNS, UnknownZoneError, zone

__all__ = ["UsageApi", "UsageParameterError", "UsageQuery", "usage_columns", "usage_query", "usage_report"]

log = logging.getLogger(__name__)

_DAY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SINGLE: Final = ("from", "to", "account", "by", "timezone", "format")
_PARAMETERS: Final = (*_SINGLE[:2], "app", *_SINGLE[2:])
_CONTENT_TYPES: Final = {
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
            "from", f"the first day {start.isoformat()} is after the last day (to) {end.isoformat()}",
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
    """``metering compute``'s columns; the period column is named after ``by`` (``day`` for days)."""
    return tuple(by if c == "day" else c for c in USAGE_COLUMNS)


def usage_report(client: Client, database: str, query: UsageQuery) -> str:
    """The text `metering usage` prints for ``query``, read from ``database``."""
    rows = usage(
        client,
        database,
        start=query.start,
        end=query.end,
        apps=list(query.apps),
        account=query.account,
        period=query.by,
        tz=query.tz,
    )
    return render(usage_columns(query.by), rows, query.fmt, title=f"Usage by {query.by} ({query.tz})")


class UsageApi:
    """The HTTP server; no socket until :meth:`start`. Port 0 binds a free port."""

    def __init__(self, client: Client, database: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.client = client
        self.database = database
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Bind and serve in a daemon thread; returns the bound ``(host, port)``."""
        if self._server is not None:
            raise RuntimeError("the usage API is already started")
        try:
            server = _Server(self._address, _Handler, self)
        except OSError as exc:
            host, port = self._address
            raise OSError(
                exc.errno,
                f"the usage API cannot listen on {host}:{port} ({exc.strerror}): set METERING_API_PORT to a free "
                "port (0 picks one) or METERING_API_HOST to an address of this machine",
            ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="usage-api", daemon=True
        )
        self._thread.start()
        address = server.server_address
        host, port = str(address[0]), int(address[1])
        log.info("usage API listening", extra=fields(url=f"http://{host}:{port}", database=self.database))
        return host, port

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def unready_reason(self) -> str | None:
        """None when ClickHouse answers ``SELECT 1``, else why not."""
        try:
            self.client.command("SELECT 1")
        except DriverError as exc:
            return f"ClickHouse does not answer: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], api: UsageApi) -> None:
        self.api = api
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "metering-usage-api"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._json(HTTPStatus.OK, {"status": "ok"})
        elif url.path == "/readyz":
            reason = self.server.api.unready_reason()
            if reason is None:
                self._json(HTTPStatus.OK, {"status": "ready"})
            else:
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "reason": reason})
        elif url.path == "/usage":
            self._usage(url.query)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {url.path!r}: use /usage, /healthz or /readyz"})

    def _not_allowed(self) -> None:
        self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET is supported"}, allow="GET")

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _usage(self, query_string: str) -> None:
        api = self.server.api
        try:
            query = parse_parameters(query_string)
            body = usage_report(api.client, api.database, query)
        except UsageParameterError as exc:
            self._json(HTTPStatus.BAD_REQUEST, exc.as_json())
            return
        except UnknownZoneError as exc:  # the server's tz database lacks a zone Python knows
            self._json(HTTPStatus.BAD_REQUEST, UsageParameterError("timezone", str(exc), "use another zone").as_json())
            return
        except ClickHouseError as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        self._send(HTTPStatus.OK, body.encode("utf-8"), _CONTENT_TYPES[query.fmt])

    def _json(self, status: HTTPStatus, payload: Mapping[str, Any], **headers: str) -> None:
        self._send(status, (json.dumps(payload) + "\n").encode("utf-8"), "application/json", **headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name.capitalize(), value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("usage API request", extra=fields(client=self.client_address[0], line=format % args))
