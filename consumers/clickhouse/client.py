"""Open the one ClickHouse client a process uses: embedded chDB by default, or a server.

``METERING_CLICKHOUSE_URL`` is either

- ``chdb:///abs/path``: an embedded chDB database in that directory (the default, under the
  data directory). chDB hosts one engine per process and locks its directory, so a database
  can be open in one process only; within it, the composition root calls :func:`connect`
  once and hands the client to the store, the migrations and the usage queries. Other
  processes (``metering usage`` while ``metering run`` is up) ask the running service.
- ``http(s)://user:password@host:port/database``: a ClickHouse server over HTTP(S).

:func:`connect` is the only place that touches the network or the disk; the other classes of
this package take a ready client, so constructing them never does I/O. It retries only what
is known to be transient (refused or reset connections), a bounded number of times with
backoff; a bad URL, wrong credentials or a database locked by another process fail at once
with a message naming the setting and the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from consumers.clickhouse.errors import ClickHouseUnavailableError
from pipeline.infra.clickhouse_url import (
    URL_SETTING,
    ClickHouseConfigError,
    ClickHouseError,
    Target,
    check_database_name,
    parse_url,
    redact,
)
from pipeline.infra.retry import Backoff, retrying

__all__ = ["Client", "Target", "check_database_name", "connect", "parse_url", "redact"]

_AUTH_CODES: Final = frozenset({192, 193, 194, 516})  # UNKNOWN_USER, WRONG_PASSWORD, ..., AUTHENTICATION_FAILED


def connect(url: str, database: str, *, attempts: int = 3, backoff_s: float = 0.5) -> Client:
    """Open a client for ``url``; ``database`` is where the metering tables live (or will).

    The client is not bound to ``database`` (it may not exist before the migrations run):
    every statement of this package names it as a bound identifier. A database in an
    http(s) URL must agree with ``database``, as contradictory settings are refused.
    """
    target = parse_url(url)
    check_database_name(database)
    if target.database is not None and target.database != database:
        raise ClickHouseConfigError(
            f"{URL_SETTING}={redact(url)!r} names database {target.database!r} but the metering "
            f"database setting is {database!r}: make them agree, or drop the database from the URL"
        )
    if target.embedded:
        return _connect_chdb(url, target)
    return _connect_http(url, target, attempts=max(1, attempts), backoff_s=backoff_s)


def _connect_chdb(url: str, target: Target) -> Client:
    try:
        Path(target.path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ClickHouseConfigError(
            f"{URL_SETTING}={url!r}: cannot create the embedded database directory ({exc.strerror}); "
            "point it at a writable directory"
        ) from exc
    try:
        return clickhouse_connect.get_client(interface="chdb", path=target.path, tz_mode="aware")
    except ImportError as exc:
        raise ClickHouseConfigError(
            f"{URL_SETTING}={url!r} needs the chdb package: run `make setup` "
            "(or pip install 'clickhouse-connect[chdb]')"
        ) from exc
    except ProgrammingError as exc:
        raise _chdb_open_error(url, target.path, exc) from exc


def _chdb_open_error(url: str, path: str, exc: ProgrammingError) -> ClickHouseError:
    text = str(exc)
    if "already initialized with path" in text:
        return ClickHouseConfigError(
            f"{URL_SETTING}={url!r}: this process already has another embedded database open "
            f"and chDB hosts one per process ({text}). Use one URL per process, or close the other client first."
        )
    holder = _lock_holder(path)
    return ClickHouseUnavailableError(
        f"the embedded database {path} is open in another process{holder}; chDB lets one process "
        "open it. Ask the running service (`metering usage` does), stop that process, or set "
        f"{URL_SETTING} to another directory or a ClickHouse server. ({text})"
    )


def _lock_holder(path: str) -> str:
    """`` (pid N)`` from chDB's ``status`` lock file, if it is there to read."""
    try:
        status = Path(path, "status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    match = re.search(r"PID:\s*(\d+)", status)
    return f" (pid {match.group(1)})" if match else ""


def _connect_http(url: str, target: Target, *, attempts: int, backoff_s: float) -> Client:
    # Connection refused/reset, name resolution (OperationalError): the server may be starting up.
    connecting = retrying(
        "connecting to ClickHouse",
        transient=OperationalError,
        attempts=attempts,
        backoff=Backoff(initial=backoff_s, maximum=30.0, jitter=0.0),
        url=redact(url),
    )
    try:
        return connecting(
            clickhouse_connect.get_client,
            host=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            secure=target.scheme == "https",
            connect_timeout=5,
            send_receive_timeout=60,
            autogenerate_session_id=False,  # the shared client is used from several threads
            tz_mode="aware",
        )
    except OperationalError as exc:
        raise ClickHouseUnavailableError(
            f"cannot reach the ClickHouse server at {redact(url)} after {attempts} attempts: "
            f"{_first_line(exc)}. Start the server, or fix host and port in {URL_SETTING}."
        ) from exc
    except DatabaseError as exc:
        if exc.code in _AUTH_CODES:
            raise ClickHouseConfigError(
                f"the ClickHouse server at {redact(url)} refused user {target.username!r} "
                f"(code {exc.code}): fix the user and password in {URL_SETTING}"
            ) from exc
        raise ClickHouseUnavailableError(
            f"the ClickHouse server at {redact(url)} failed the connection check "
            f"(code {exc.code}): {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
