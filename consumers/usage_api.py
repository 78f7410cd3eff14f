"""The usage HTTP API: what `metering usage` prints, served by the process that owns ClickHouse.

An embedded chDB database can be open in one process only, so the store process (sink, API,
metrics) answers `metering usage` for the others. Standard library only: a
``ThreadingHTTPServer`` in a daemon thread.

- ``GET /usage?from=&to=&app=&account=&by=&timezone=&format=``: the text `metering usage`
  prints, byte for byte (both render with :func:`usage_report`).
- ``GET /plans?account=&month=&timezone=&format=``: the text `metering plans` prints.
- ``GET /healthz``: 200 while the server serves. ``GET /readyz``: 200 when ClickHouse answers
  a trivial query, 503 with the reason otherwise.
- ``POST /reconcile/sessions`` ``{"from", "to", "timezone"}``: what ClickHouse bills for those
  local days (``consumers.clickhouse.reconcile.Snapshot``), for `metering reconcile`.
- ``POST /reconcile/repair``: one ``RepairBatch`` (audit row, inserts, voids) of a repair.

The reconcile endpoints change billing data, and the API may listen beyond loopback (it also
serves /metrics to Prometheus), so they require ``Authorization: Bearer <token>``, the token
the store process writes to ``<data_dir>/run/store.token`` readable by its own OS user only:
whoever may open the embedded database directly may reconcile through the service, nobody
else. Without a token configured they answer 403.

Bad parameters get a 400 with a JSON body naming the parameter and the fix. The client is
shared with the sink thread; that is safe without a lock of ours: clickhouse-connect's chDB
backend serializes calls on its handle with its own lock, and its HTTP client
(``autogenerate_session_id=False``) is thread-safe.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, cast
from urllib.parse import parse_qs, urlsplit

import msgspec
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import Error as DriverError

from consumers.clickhouse.errors import ClickHouseError
from consumers.clickhouse.plans import usage_with_agents
from consumers.clickhouse.reconcile import PeriodRequest, RepairBatch, apply_batch, snapshot
from consumers.clickhouse.usage import PERIODS, Period, usage
from pipeline.agent_book import AGENT_COLUMNS
from pipeline.logs import fields
from pipeline.report import FORMATS, Format, render
from pipeline.rules.attribution import USAGE_COLUMNS, UnknownZoneError, zone

__all__ = ["UsageApi", "UsageParameterError", "UsageQuery", "usage_columns", "usage_query", "usage_report"]

log = logging.getLogger(__name__)

_DAY: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SINGLE: Final = ("from", "to", "account", "by", "timezone", "format")
_PARAMETERS: Final = (*_SINGLE[:2], "app", *_SINGLE[2:])
#: Largest accepted reconcile request body: a full RepairBatch is well under it.
MAX_BODY_BYTES: Final = 64 * 1024 * 1024
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


class UsageApi:
    """The HTTP server; no socket until :meth:`start`. Port 0 binds a free port."""

    def __init__(
        self,
        client: Client,
        database: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        reconcile_token: str | None = None,
    ) -> None:
        self.client = client
        self.database = database
        self.reconcile_token = reconcile_token
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


_RECONCILE: Final = frozenset({"/reconcile/sessions", "/reconcile/repair"})

#: A GET endpoint's text and format from its query string (raises UsageParameterError).
_BodyOf = Callable[[UsageApi, str], tuple[str, Format]]


def _usage_body(api: UsageApi, query_string: str) -> tuple[str, Format]:
    query = parse_parameters(query_string)
    return usage_report(api.client, api.database, query), query.fmt


def _plans_body(api: UsageApi, query_string: str) -> tuple[str, Format]:
    """``GET /plans``: what `metering plans` prints (consumers.plans_report)."""
    # plans_report imports this module (UsageParameterError): imported here, not at the top.
    from consumers.plans_report import parse_plans_parameters, plans_report  # noqa: PLC0415

    query = parse_plans_parameters(query_string)
    return plans_report(api.client, api.database, query), query.fmt


def _check_period(period: PeriodRequest) -> None:
    """The days are in order and the zone is one we know; UsageParameterError names what is not."""
    usage_query(start=period.start, end=period.end, tz=period.timezone)


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
        elif url.path == "/plans":
            self._usage(url.query, _plans_body)
        elif url.path in _RECONCILE:
            self._not_allowed()
        else:
            endpoints = "/usage, /plans, /healthz or /readyz"
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {url.path!r}: use {endpoints}"})

    def _not_allowed(self) -> None:
        if urlsplit(self.path).path in _RECONCILE:
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only POST is supported here"}, allow="POST")
        else:
            self._json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "only GET is supported"}, allow="GET")

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        if path not in _RECONCILE:
            self._not_allowed()
            return
        problem = self._unauthorized()
        if problem is not None:
            status, message = problem
            self._json(status, {"error": message})
            return
        body = self._body()
        if body is None:
            return
        api = self.server.api
        try:
            if path == "/reconcile/sessions":
                period = msgspec.json.decode(body, type=PeriodRequest)
                _check_period(period)
                answer: msgspec.Struct = snapshot(
                    api.client, api.database, start=period.start, end=period.end, tz=period.timezone
                )
            else:
                answer = apply_batch(api.client, api.database, msgspec.json.decode(body, type=RepairBatch))
        except (msgspec.ValidationError, msgspec.DecodeError, UsageParameterError, UnknownZoneError, ValueError) as e:
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"{path}: {e}"})
            return
        except ClickHouseError as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        self._send(HTTPStatus.OK, msgspec.json.encode(answer), "application/json")

    def _unauthorized(self) -> tuple[HTTPStatus, str] | None:
        token = self.server.api.reconcile_token
        if not token:
            return HTTPStatus.FORBIDDEN, "reconcile is not enabled on this server (it was started without a token)"
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return (
                HTTPStatus.UNAUTHORIZED,
                "send Authorization: Bearer <token>, the token in <data_dir>/run/store.token of this service",
            )
        return None

    def _body(self) -> bytes | None:
        """The request body, or None after answering why it cannot be read."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "send a JSON body with a Content-Length"})
            return None
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            self._json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"body of {length} bytes is over {MAX_BODY_BYTES}: send smaller batches"},
            )
            return None
        return self.rfile.read(int(length))

    def _usage(self, query_string: str, body_of: _BodyOf | None = None) -> None:
        api = self.server.api
        try:
            body, fmt = (body_of or _usage_body)(api, query_string)
        except UsageParameterError as exc:
            self._json(HTTPStatus.BAD_REQUEST, exc.as_json())
            return
        except UnknownZoneError as exc:  # the server's tz database lacks a zone Python knows
            self._json(HTTPStatus.BAD_REQUEST, UsageParameterError("timezone", str(exc), "use another zone").as_json())
            return
        except ClickHouseError as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
            return
        self._send(HTTPStatus.OK, body.encode("utf-8"), _CONTENT_TYPES[fmt])

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
