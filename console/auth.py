"""Who is asking: the identity provider's JWT, verified one way per deployment.

HS256 with ``METERING_CONSOLE_SECRET`` (or, without it, a secret generated once in the data
directory, readable by its owner only), or RS256 with the provider's keys
(``METERING_CONSOLE_JWKS``, a file or URL). Only that one algorithm is accepted, so neither
``alg: none`` nor an HS256 token signed with a public key gets through. Claims ``sub``,
``account_id``, ``role``, ``shared`` and ``exp`` are required and typed; ``iss`` and ``aud`` are
checked when configured; 30 s of leeway for clocks that disagree.

:class:`Authenticator` is the one verifier (route dependencies call it); :func:`issue_token` mints
the HS256 tokens `metering token` prints for local use, demos and tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
import jwt

from pipeline.infra.logs import fields
from pipeline.infra.settings import ConsoleSettings

__all__ = [
    "LEEWAY_SECONDS",
    "ROLES",
    "AuthError",
    "Authenticator",
    "KeysUnavailableError",
    "Principal",
    "deployment_secret",
    "issue_token",
    "secret_file",
]

LEEWAY_SECONDS: Final = 30
#: A JWKS URL's set is kept this long, then fetched again.
JWKS_LIFESPAN_SECONDS: Final = 600.0
#: At most one fetch per this many seconds for tokens naming a key id the set lacks.
JWKS_REFETCH_INTERVAL_SECONDS: Final = 30.0
#: A failed fetch is not tried again for this long (requests fail fast meanwhile).
JWKS_FAILURE_TTL_SECONDS: Final = 10.0
ROLES: Final = ("admin", "member")
_REQUIRED: Final = ("sub", "account_id", "role", "shared", "exp")

log = logging.getLogger(__name__)


class AuthError(Exception):
    """The token is missing, malformed, badly signed or expired: 401, with this message.

    ``code`` names the kind for the login page, which shows only its own text for a code
    (``token_expired``, ``signature``, ``invalid``), never text from a URL.
    """

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class KeysUnavailableError(Exception):
    """The identity provider's keys could not be fetched: 503, try again."""


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified token's holder."""

    user: str  # sub
    account_id: str
    role: str  # admin | member (any other role is verified but holds no permission)
    shared: bool  # a user of another workspace this account shared apps with
    expires_at: datetime


class _Keys(Protocol):
    def key_for(self, token: str) -> Any: ...


@dataclass(frozen=True)
class _Secret:
    secret: str

    def key_for(self, token: str) -> Any:
        return self.secret


class _JwksFile:
    """The keys of a JWKS file, read once at start-up."""

    def __init__(self, path: str) -> None:
        self._keys = jwt.PyJWKSet.from_json(Path(path).read_text(encoding="utf-8"))

    def key_for(self, token: str) -> Any:
        return _pick(self._keys.keys, token)


class _JwksUrl:
    """The keys served at a URL (https, or http on a loopback address), fetched when needed and cached.

    - The set is fetched at the first token and kept ``lifespan`` seconds.
    - A token naming a key id the set lacks (the provider rotated in a new key) fetches the set
      again at once, but at most once per ``refetch_interval`` seconds: tokens with made-up key
      ids cannot make the console hammer the provider.
    - A failed fetch is remembered ``failure_ttl`` seconds (requests meanwhile fail fast, with
      503, instead of each waiting for the provider's timeout). While the provider is down, the
      set fetched last keeps verifying (a key it drops stops working at the next fetch).
    - One fetch at a time (the others wait for its result). This blocks: the console calls
      :meth:`Authenticator.verify` off the event loop when :attr:`Authenticator.fetches_keys`.
    """

    def __init__(
        self,
        url: str,
        *,
        lifespan: float = JWKS_LIFESPAN_SECONDS,
        refetch_interval: float = JWKS_REFETCH_INTERVAL_SECONDS,
        failure_ttl: float = JWKS_FAILURE_TTL_SECONDS,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._lifespan = lifespan
        self._refetch_interval = refetch_interval
        self._failure_ttl = failure_ttl
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None
        self._refetched_at: float | None = None
        self._failure: tuple[float, str] | None = None
        self.fetches = 0

    def key_for(self, token: str) -> Any:
        kid = _kid(token)
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._lifespan:
                self._fetch(now, keep_stale=self._fetched_at is not None)
            found = _find(self._keys, kid)
            if found is None and (self._refetched_at is None or now - self._refetched_at >= self._refetch_interval):
                self._refetched_at = now
                self._fetch(now, keep_stale=True)
                found = _find(self._keys, kid)
        if found is None:
            raise AuthError(f"the token's key id {kid!r} is not one of the identity provider's keys", "signature")
        return found

    def _fetch(self, now: float, *, keep_stale: bool) -> None:
        """Fetch the set; on failure keep the last one if ``keep_stale``, else raise KeysUnavailableError."""
        if self._failure is not None and now - self._failure[0] < self._failure_ttl:
            if keep_stale:
                return
            raise KeysUnavailableError(f"{self._failure[1]} (will try again in a few seconds)")
        self.fetches += 1
        try:
            answer = httpx.get(self._url, timeout=self._timeout, follow_redirects=False)  # proxies from the env
            answer.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(answer.json()).keys
        except (httpx.HTTPError, ValueError, TypeError, AttributeError, jwt.PyJWTError) as exc:
            reason = f"cannot fetch the identity provider's keys from {self._url}: {exc}"
            self._failure = (now, reason)
            log.warning("console: JWKS fetch failed", extra=fields(url=self._url, error=str(exc)))
            if keep_stale and self._keys:
                return
            raise KeysUnavailableError(reason) from exc
        self._keys, self._fetched_at, self._failure = keys, now, None


def _kid(token: str) -> str | None:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"the token is malformed ({exc})") from exc
    return kid if isinstance(kid, str) or kid is None else str(kid)


def _find(keys: list[jwt.PyJWK], kid: str | None) -> Any:
    """The key named ``kid``; without one, the set's only key; None when there is no such key."""
    if kid is None and len(keys) == 1:
        return keys[0].key
    for key in keys:
        if key.key_id == kid:
            return key.key
    return None


def _pick(keys: list[jwt.PyJWK], token: str) -> Any:
    """The key named by the token's ``kid``; without one, the set's only key."""
    kid = _kid(token)
    found = _find(keys, kid)
    if found is None:
        raise AuthError(f"the token's key id {kid!r} is not one of the identity provider's keys", "signature")
    return found


class Authenticator:
    """Verifies tokens as the deployment's settings say; no I/O here except a JWKS URL when needed."""

    def __init__(self, settings: ConsoleSettings, secret: str | None = None) -> None:
        self.algorithm = settings.algorithm
        self._issuer = settings.issuer or None
        self._audience = settings.audience or None
        keys: _Keys
        if settings.jwks:
            keys = _JwksUrl(settings.jwks) if "://" in settings.jwks else _JwksFile(settings.jwks)
        else:
            if not secret:
                raise ValueError("HS256 needs the deployment's secret (deployment_secret)")
            keys = _Secret(secret)
        self._keys = keys

    @property
    def fetches_keys(self) -> bool:
        """Whether :meth:`verify` may wait on the network (a JWKS URL): call it off the event loop then."""
        return isinstance(self._keys, _JwksUrl)

    def verify(self, token: str) -> Principal:
        """The token's principal; :class:`AuthError` says why it is refused."""
        if not token or token.count(".") != 2:
            raise AuthError("the token is malformed: expected a JWT (header.payload.signature)")
        key = self._keys.key_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self.algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_SECONDS,
                options={"require": list(_REQUIRED), "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("the token has expired: sign in again", "token_expired") from exc
        except jwt.InvalidAlgorithmError as exc:
            message = f"the token is not signed with {self.algorithm}, this deployment's algorithm"
            raise AuthError(message, "signature") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("the token's signature does not verify", "signature") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token is not valid: {exc}") from exc
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    for name in ("sub", "account_id", "role"):
        if not isinstance(claims[name], str) or not claims[name]:
            raise AuthError(f"the token's {name!r} claim must be a non-empty string")
    if not isinstance(claims["shared"], bool):
        raise AuthError("the token's 'shared' claim must be true or false")
    exp = claims["exp"]
    return Principal(
        user=claims["sub"],
        account_id=claims["account_id"],
        role=claims["role"],
        shared=claims["shared"],
        expires_at=datetime.fromtimestamp(int(exp), UTC),
    )


def issue_token(
    secret: str,
    *,
    account_id: str,
    user: str,
    role: str,
    shared: bool,
    ttl: timedelta,
    issuer: str = "",
    audience: str = "",
    now: datetime | None = None,
) -> str:
    """An HS256 token with the console's claims (for `metering token` and tests)."""
    issued = now or datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": user,
        "account_id": account_id,
        "role": role,
        "shared": shared,
        "iat": int(issued.timestamp()),
        "exp": int((issued + ttl).timestamp()),
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


def secret_file(data_dir: Path) -> Path:
    return data_dir / "console.secret"


def deployment_secret(settings: ConsoleSettings, data_dir: Path) -> str:
    """``METERING_CONSOLE_SECRET``, else the data directory's secret, created once (mode 0600) if missing."""
    if settings.secret:
        return settings.secret
    path = secret_file(data_dir)
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_text(encoding="ascii").strip()
        if existing:
            return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret + "\n")
    try:
        os.link(temporary, path)  # fails if another process created it meanwhile: theirs wins
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return path.read_text(encoding="ascii").strip()
