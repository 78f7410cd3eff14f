"""`metering token`: an HS256 console token signed with this deployment's secret.

For local use, demos and tests: the secret is ``METERING_CONSOLE_SECRET`` or, without it, the
one the data directory holds (created on first use, readable by its owner only), the same the
store verifies with. In RS256 mode only the identity provider can sign, so this refuses.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

from console.auth import ROLES, deployment_secret, issue_token
from pipeline.infra.settings import Settings

__all__ = ["TokenCommandError", "parse_ttl", "token_text"]

_TTL: Final = re.compile(r"^(\d+)([smhd])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL: Final = timedelta(days=366)


class TokenCommandError(ValueError):
    """The token cannot be made; the message says why and what to do."""


def parse_ttl(text: str) -> timedelta:
    match = _TTL.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise TokenCommandError(f"--ttl {text!r}: give a number and s, m, h or d, e.g. 30m, 8h or 7d")
    ttl = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if ttl > MAX_TTL:
        raise TokenCommandError(f"--ttl {text!r}: at most 366 days")
    return ttl


def token_text(settings: Settings, *, account: str, user: str, role: str, shared: bool, ttl: str) -> str:
    """The token and a newline."""
    console = settings.console
    if console.jwks:
        raise TokenCommandError(
            "this deployment verifies RS256 tokens from its identity provider (METERING_CONSOLE_JWKS): only the "
            "provider can sign them; unset METERING_CONSOLE_JWKS to use tokens from `metering token`"
        )
    if role not in ROLES:
        raise TokenCommandError(f"--role {role!r}: use one of {', '.join(ROLES)}")
    if not account.strip() or not user.strip():
        raise TokenCommandError("--account and --user must not be empty")
    secret = deployment_secret(console, settings.data_dir)
    token = issue_token(
        secret,
        account_id=account,
        user=user,
        role=role,
        shared=shared,
        ttl=parse_ttl(ttl),
        issuer=console.issuer,
        audience=console.audience,
    )
    return token + "\n"
