"""The one-time local login link ``metering run`` prints: open it, and you are the demo account's admin.

``metering run`` mints an ordinary console token (HS256, the deployment's secret, 8 hours) and
keeps it in ``<data_dir>/run/login-link.json`` (mode 0600, like the secret itself) beside the
SHA-256 of a random code; the link carries only the code (``/login?once=CODE``). The first visit
exchanges the code for the session cookie and removes the file, so the link works once, and the
token never appears in a URL, a browser history or an access log. A stale link (older than an
hour, or already used) leads to the login form with a message saying how to get a token.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from console.auth import AuthError, Principal, deployment_secret, issue_token
from console.context import ConsoleContext
from pipeline.infra.settings import ConsoleSettings

__all__ = ["LINK_TTL", "create", "link_file", "redeem"]

LINK_TTL: Final = timedelta(hours=1)
SESSION_TTL: Final = timedelta(hours=8)
_STALE: Final = (
    "This login link was already used or has expired. Paste a token below: `metering token --account ACCOUNT` "
    "makes one for a local run."
)


def link_file(data_dir: Path) -> Path:
    return data_dir / "run" / "login-link.json"


def create(settings: ConsoleSettings, data_dir: Path, *, account_id: str, user: str) -> str | None:
    """A fresh one-time code for ``account_id``'s admin ``user`` (replacing any earlier link); None in RS256 mode."""
    if settings.algorithm != "HS256":
        return None  # tokens come from the identity provider; this deployment cannot sign one
    token = issue_token(
        deployment_secret(settings, data_dir),
        account_id=account_id,
        user=user,
        role="admin",
        shared=False,
        ttl=SESSION_TTL,
        issuer=settings.issuer,
        audience=settings.audience,
    )
    code = secrets.token_urlsafe(24)
    record = {
        "code_sha256": hashlib.sha256(code.encode()).hexdigest(),
        "token": token,
        "expires_at": (datetime.now(UTC) + LINK_TTL).isoformat(),
    }
    path = link_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    temporary.replace(path)
    return code


def redeem(context: ConsoleContext, code: str) -> tuple[str, Principal] | str:  # noqa: PLR0911 - one early answer per reason a link is refused
    """The session token and its principal for a valid code (the link is used up), else why not."""
    data_dir = context.extras.get("data_dir")
    if not isinstance(data_dir, Path):
        return _STALE
    path = link_file(data_dir)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        expected = str(record["code_sha256"])
        token = str(record["token"])
        expires_at = datetime.fromisoformat(str(record["expires_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return _STALE
    given = hashlib.sha256(code.encode()).hexdigest()
    if not hmac.compare_digest(given, expected):
        return _STALE
    claimed = path.with_suffix(".used")
    try:
        path.rename(claimed)  # atomic: of two concurrent visits, one wins
    except FileNotFoundError:
        return _STALE
    with contextlib.suppress(FileNotFoundError):
        claimed.unlink()
    if datetime.now(UTC) > expires_at:
        return _STALE
    try:
        return token, context.authenticator.verify(token)
    except AuthError as exc:
        return f"This login link's token is not valid here ({exc}). Paste a token below."
