"""The console's settings: how tokens are verified, what "now" is, how far an export may reach.

Read by ``pipeline.settings.Settings.from_env`` (the one place that reads the environment) through
:func:`read_console_settings`, which returns every wrong variable with its rule instead of
stopping at the first. A secret's value never appears in a message.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

__all__ = ["MIN_SECRET_LENGTH", "ConsoleSettings", "read_console_settings"]

PREFIX: Final = "METERING_CONSOLE_"
#: HS256 keys shorter than the hash (32 bytes) are guessable offline from one token.
MIN_SECRET_LENGTH: Final = 32
#: An export covers at most three months (92 days) unless the deployment raises it.
DEFAULT_EXPORT_MAX_DAYS: Final = 92


@dataclass(frozen=True)
class ConsoleSettings:
    """``secret`` (HS256) and ``jwks`` (RS256) exclude each other; neither: a secret of the data directory."""

    secret: str = field(default="", repr=False)
    jwks: str = ""  # a JWKS file, or an https URL serving one (http only on a loopback address)
    issuer: str = ""  # checked when set
    audience: str = ""  # checked when set
    now: datetime | None = None  # METERING_CONSOLE_NOW: fixes "now" for the usage ranges (tests, demos)
    export_max_days: int = DEFAULT_EXPORT_MAX_DAYS

    @property
    def algorithm(self) -> str:
        return "RS256" if self.jwks else "HS256"

    def to_env(self) -> dict[str, str]:
        env = {
            "SECRET": self.secret,
            "JWKS": self.jwks,
            "ISSUER": self.issuer,
            "AUDIENCE": self.audience,
            "NOW": self.now.isoformat() if self.now else "",
            "EXPORT_MAX_DAYS": str(self.export_max_days),
        }
        return {PREFIX + k: v for k, v in env.items() if v}


def read_console_settings(env: Mapping[str, str]) -> tuple[ConsoleSettings, list[str]]:
    """The console's ``METERING_CONSOLE_*`` variables, and one message per wrong one."""
    errors: list[str] = []

    def raw(name: str) -> str:
        return env.get(PREFIX + name, "").strip()

    secret, jwks = raw("SECRET"), raw("JWKS")
    if secret and jwks:
        errors.append(
            f"{PREFIX}SECRET and {PREFIX}JWKS are both set: a deployment verifies tokens one way, HS256 with the "
            "secret or RS256 with the identity provider's keys; unset one of them"
        )
    if secret and len(secret) < MIN_SECRET_LENGTH:
        errors.append(
            f"{PREFIX}SECRET is {len(secret)} characters long: use at least {MIN_SECRET_LENGTH} random characters "
            "(e.g. the output of `openssl rand -hex 32`)"
        )
    if jwks:
        problem = _jwks_problem(jwks)
        if problem:
            errors.append(f"{PREFIX}JWKS={jwks!r}: {problem}")
    now: datetime | None = None
    if raw("NOW"):
        try:
            now = datetime.fromisoformat(raw("NOW").replace("Z", "+00:00"))
            if now.tzinfo is None:
                raise ValueError("no offset")
        except ValueError:
            errors.append(
                f"{PREFIX}NOW={raw('NOW')!r}: expected an RFC 3339 time with its offset, e.g. 2026-03-10T12:00:00Z"
            )
            now = None
    max_days = DEFAULT_EXPORT_MAX_DAYS
    if raw("EXPORT_MAX_DAYS"):
        try:
            max_days = int(raw("EXPORT_MAX_DAYS"))
            if max_days < 1:
                raise ValueError
        except ValueError:
            errors.append(f"{PREFIX}EXPORT_MAX_DAYS={raw('EXPORT_MAX_DAYS')!r}: expected a whole number of days >= 1")
            max_days = DEFAULT_EXPORT_MAX_DAYS
    settings = ConsoleSettings(
        secret=secret if not errors else "",
        jwks=jwks,
        issuer=raw("ISSUER"),
        audience=raw("AUDIENCE"),
        now=now,
        export_max_days=max_days,
    )
    return settings, errors


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _jwks_problem(value: str) -> str | None:
    """Why ``value`` is not a JWKS file or URL, or None (a URL is fetched when a token needs it)."""
    scheme, sep, rest = value.partition("://")
    if sep:
        if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
            return "expected a JWKS file or an https:// URL with a host"
        if scheme.lower() == "http" and not _loopback(urlsplit(value).hostname or ""):
            return (
                "a remote JWKS must be fetched over https: whoever can change the keys on the way signs any token "
                "(an admin of every account); plain http is accepted only on a loopback address (127.0.0.1, ::1, "
                "localhost)"
            )
        return None
    path = Path(value)
    if not path.is_absolute():
        path = Path(os.getcwd(), path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return f"cannot read the JWKS file ({exc.strerror or exc}): give a readable file or an https:// URL"
    except ValueError as exc:
        return f"the JWKS file is not JSON ({exc})"
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        return 'the JWKS file has no "keys" list'
    return None
