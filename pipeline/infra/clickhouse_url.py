"""``METERING_CLICKHOUSE_URL`` and the database name: what makes them valid, checked at start-up.

Here, below storage, so settings validate the address without importing the ClickHouse layer;
``consumers.clickhouse`` imports these names back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import SplitResult, unquote, urlsplit

__all__ = [
    "URL_SETTING",
    "ClickHouseConfigError",
    "ClickHouseError",
    "Target",
    "check_database_name",
    "parse_url",
    "redact",
]

#: The one setting that names the database; every connection message points at it.
URL_SETTING: Final = "METERING_CLICKHOUSE_URL"

_DATABASE_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_DEFAULT_PORTS: Final = {"http": 8123, "https": 8443}


class ClickHouseError(Exception):
    """Base of every error raised by ``consumers.clickhouse``."""


class ClickHouseConfigError(ClickHouseError, ValueError):
    """A setting is wrong (bad URL, bad database name): fix the configuration, do not retry."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where ``METERING_CLICKHOUSE_URL`` points; ``password`` never appears in messages."""

    scheme: Literal["chdb", "http", "https"]
    path: str = ""  # chdb: the database directory
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = ""
    database: str | None = None  # http(s): the database named in the URL path, if any

    @property
    def embedded(self) -> bool:
        return self.scheme == "chdb"


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _bad_url(url: str, problem: str) -> ClickHouseConfigError:
    return ClickHouseConfigError(
        f"{URL_SETTING}={redact(url)!r}: {problem}. Use chdb:///absolute/directory for the embedded "
        "database, or http(s)://user:password@host:port/database for a ClickHouse server."
    )


def parse_url(url: str) -> Target:
    """Validate ``METERING_CLICKHOUSE_URL``; :class:`ClickHouseConfigError` says what is wrong."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise _bad_url(url, f"not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise _bad_url(url, "query strings and fragments are not supported")
    if scheme == "chdb":
        return _parse_chdb(url, parts)
    if scheme in _DEFAULT_PORTS:
        return _parse_http(url, parts, "http" if scheme == "http" else "https", port)
    raise _bad_url(url, f"unsupported scheme {parts.scheme!r}" if parts.scheme else "no scheme")


def _parse_chdb(url: str, parts: SplitResult) -> Target:
    if parts.netloc:
        raise _bad_url(url, f"an embedded database URL has no host (got {parts.netloc!r}); write three slashes")
    path = unquote(parts.path)
    if not os.path.isabs(path) or path == "/":
        raise _bad_url(url, "an embedded database URL must name an absolute directory")
    return Target(scheme="chdb", path=os.path.normpath(path))


def _parse_http(url: str, parts: SplitResult, scheme: Literal["http", "https"], port: int | None) -> Target:
    if not parts.hostname:
        raise _bad_url(url, "no host")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) > 1:
        raise _bad_url(url, "the path may name one database only")
    database = unquote(segments[0]) if segments else None
    if database is not None:
        check_database_name(database)
    return Target(
        scheme=scheme,
        host=parts.hostname,
        port=port or _DEFAULT_PORTS[scheme],
        username=unquote(parts.username) if parts.username else "default",
        password=unquote(parts.password) if parts.password else "",
        database=database,
    )


def check_database_name(database: str) -> str:
    """``database`` if it is a plain identifier, else :class:`ClickHouseConfigError`."""
    if not _DATABASE_NAME.match(database):
        raise ClickHouseConfigError(
            f"database name {database!r} is not a plain identifier: use letters, digits and "
            "underscores, starting with a letter or underscore (the default is 'metering')"
        )
    return database
