"""The rules a ``METERING_*`` variable's text must follow: each parses it or says, in a ValueError, what is wrong.

Declared with their fields in :mod:`pipeline.infra.settings` as ``parsed(rule.<name>)``; the
``*_text`` functions write a value back the way its rule reads it.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

from pipeline.infra.clickhouse_url import ClickHouseConfigError, check_database_name, parse_url
from pipeline.infra.sections import WholeMessage
from pipeline.rules.attribution import zone
from pipeline.rules.config import MINUTE, check_idle_timeout

#: HS256 keys shorter than the hash (32 bytes) are guessable offline from one token.
MIN_SECRET_LENGTH: Final = 32
_SECRET: Final = "METERING_CONSOLE_SECRET"

V = TypeVar("V")


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None


def _float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _checked(parse: Callable[[str], V], ok: Callable[[V], bool], rule: str) -> Callable[[str], V]:
    """``parse``, then ``rule`` unless ``ok`` holds for the value."""

    def check(raw: str) -> V:
        value = parse(raw)
        if not ok(value):
            raise ValueError(rule)
        return value

    return check


positive_int = _checked(_int, lambda n: n >= 1, "must be at least 1")
port = _checked(_int, lambda n: 0 <= n <= 65535, "a port is 0 (any free port) to 65535")
positive_float = _checked(_float, lambda x: x > 0, "must be greater than 0")
non_negative_float = _checked(_float, lambda x: x >= 0, "must not be negative")
at_least_5_minutes = _checked(_int, lambda m: m >= 5, "must be at least 5 minutes")
seller = _checked(str, lambda name: len(name) <= 200, "at most 200 characters: the seller's name as invoices show it")


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        for option in options:
            if raw.lower() == option.lower():
                return option
        raise ValueError(f"expected one of {', '.join(options)}")

    return parse


def identifier(raw: str) -> str:
    if not raw.isascii() or not raw.replace("_", "").replace("-", "").isalnum():
        raise ValueError("use ASCII letters, digits, '-' and '_' only")
    return raw


def database(raw: str) -> str:
    try:
        return check_database_name(raw)
    except ClickHouseConfigError as exc:
        raise ValueError(str(exc)) from None


def clickhouse_url(raw: str) -> str:
    try:
        parse_url(raw)
    except ClickHouseConfigError as exc:
        raise ValueError(str(exc).removeprefix(f"METERING_CLICKHOUSE_URL={raw!r}: ")) from None
    return raw


def topic(raw: str) -> str:
    if raw in (".", "..") or len(raw) > 249 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in raw):
        raise ValueError("a Kafka topic name is up to 249 ASCII letters, digits, '.', '_' and '-' (not . or ..)")
    return raw


def bootstrap(raw: str) -> str:
    for server in raw.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("expected host:port[,host:port...], e.g. 127.0.0.1:9092")
    return raw


def pairs(raw: str) -> dict[str, str]:
    """``key=value`` pairs separated by commas (librdkafka settings passed through, e.g. SASL)."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("expected key=value[,key=value...]")
        out[key.strip()] = value.strip()
    return out


def pairs_text(values: Mapping[str, object]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def idle_minutes(raw: str) -> int:
    minutes = _int(raw)
    check_idle_timeout(minutes * MINUTE, "idle timeout")
    return minutes


def app_minutes(raw: str) -> dict[str, int]:
    """``app=minutes,app2=minutes``: per-app idle timeouts."""
    return {app: idle_minutes(minutes) for app, minutes in pairs(raw).items()}


def zone_name(raw: str) -> str:
    zone(raw)
    return raw


def names(raw: str) -> frozenset[str]:
    """Comma-separated names (plan names): blanks around each are ignored, none may be empty."""
    names = [name.strip() for name in raw.split(",")]
    if not all(names):
        raise ValueError("expected name[,name...] with no empty name")
    return frozenset(names)


def names_text(values: frozenset[str]) -> str:
    return ",".join(sorted(values))


def catalog(raw: str) -> Path:
    """A plan catalogue file that loads: checked now, not at the first request."""
    # imported on use: the catalogue pulls in the money rules, which most commands never need
    from pipeline.balance.catalog import CatalogError, load_catalog  # noqa: PLC0415

    path = Path(raw)
    try:
        load_catalog(path)
    except CatalogError as exc:
        raise ValueError(str(exc)) from None
    return path


def optional_text(value: object) -> str:
    return "" if value is None else str(value)


def http_url(raw: str) -> str:
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
        raise ValueError("expected an http:// or https:// URL with a host, e.g. https://hooks.example.com/metering")
    return raw


def secret(raw: str) -> str:
    if len(raw) < MIN_SECRET_LENGTH:
        raise WholeMessage(
            f"{_SECRET} is {len(raw)} characters long: use at least {MIN_SECRET_LENGTH} random "
            "characters (e.g. the output of `openssl rand -hex 32`)"
        )
    return raw


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def jwks(raw: str) -> str:
    """A JWKS file that has keys, or an https URL (fetched when a token needs it)."""
    scheme, sep, rest = raw.partition("://")
    if sep:
        if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
            raise ValueError("expected a JWKS file or an https:// URL with a host")
        if scheme.lower() == "http" and not _loopback(urlsplit(raw).hostname or ""):
            raise ValueError(
                "a remote JWKS must be fetched over https: whoever can change the keys on the way signs any token "
                "(an admin of every account); plain http is accepted only on a loopback address (127.0.0.1, ::1, "
                "localhost)"
            )
        return raw
    path = Path(raw)
    if not path.is_absolute():
        path = Path(os.getcwd(), path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(
            f"cannot read the JWKS file ({exc.strerror or exc}): give a readable file or an https:// URL"
        ) from None
    except ValueError as exc:
        raise ValueError(f"the JWKS file is not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise ValueError('the JWKS file has no "keys" list')
    return raw


def time(raw: str) -> datetime:
    try:
        now = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        now = None
    if now is None or now.tzinfo is None:
        raise ValueError("expected an RFC 3339 time with its offset, e.g. 2026-03-10T12:00:00Z")
    return now


def time_text(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def days(raw: str) -> int:
    try:
        days = int(raw)
    except ValueError:
        days = 0
    if days < 1:
        raise ValueError("expected a whole number of days >= 1")
    return days
