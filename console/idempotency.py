"""``Idempotency-Key`` for the console's mutating routes (console.md, "Who may see what").

A key is scoped to the account and the route, and remembered durably (ClickHouse table
``idempotency_keys``, migration 011; kept for good since migration 020, across restarts: the
product promises at least 24 h). The first successful answer under a key is stored with the
SHA-256 of the request's body; a retry with the same body gets that answer again (header
``Idempotent-Replayed: true``) and changes nothing, a retry with another body is 409, however
much later. Only successes are stored: a refused request changes nothing, so trying it again is
safe anyway.

Two guards make "changes nothing" hold even when two copies of a request race: in one process a
lock per key lets the second wait for the first's answer; across processes (several console
replicas) the ids of everything an action publishes are derived from the key and the body's
digest (:class:`RequestIds`), so the processors apply a doubled event once.

Why keys are kept for good, and why the digest is in the ids: the processors remember the ids
they applied for good (an order, a plan change), so a key whose row were gone would have derived
an old id for a new request, which the processor drops as a copy while the console answers
"accepted". Kept, that cannot happen; and should the answer not be remembered (ClickHouse failed
after the event was published), the same key with another body still derives new ids: a new
request, never one silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from console.errors import bad_parameter, conflict
from console.tenancy import AccountScope
from pipeline.rules.billing import derived_id

__all__ = ["HEADER", "Answer", "Idempotency", "RequestIds", "check_key", "replayed_headers"]

HEADER: Final = "Idempotency-Key"
MAX_KEY_LENGTH: Final = 255
_STRIPES: Final = 64


@dataclass(frozen=True, slots=True)
class Answer:
    """A route's success: status and JSON body."""

    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RequestIds:
    """Ids for what one request publishes: derived from its key and body when it has a key, random otherwise."""

    seed: str

    def derive(self, what: str) -> str:
        return derived_id(f"console|{self.seed}|{what}")


class Idempotency:
    """The remembered answers of one database, and the per-key locks of this process."""

    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._database = database
        self._locks = [threading.Lock() for _ in range(_STRIPES)]

    def run(
        self, scope: AccountScope, route: str, key: str | None, body: Any, action: Callable[[RequestIds], Answer]
    ) -> tuple[Answer, bool]:
        """The answer to a request: ``action``'s, or the one remembered for ``key``; and whether it is a replay."""
        if key is None:
            return action(RequestIds(uuid.uuid4().hex)), False
        key = check_key(key)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        with self._locks[hash((scope.account_id, route, key)) % _STRIPES]:
            found = scope.query("console_idempotency", route=route, key=key)
            if found:
                stored_digest, status, response = found[0]
                if stored_digest != digest:
                    raise conflict(
                        f"the {HEADER} {key!r} was used for a different request on this route: send a new key for a "
                        "new request, or the same body to get the first answer again"
                    )
                return Answer(int(status), json.loads(response)), True
            answer = action(RequestIds(f"{scope.account_id}|{route}|{key}|{digest}"))
            self._remember(scope.account_id, route, key, digest, answer)
            return answer, False

    def _remember(self, account: str, route: str, key: str, digest: str, answer: Answer) -> None:
        row = [account, route, key, digest, answer.status, json.dumps(answer.body), datetime.now(UTC)]
        self._client.insert(
            "idempotency_keys",
            [row],
            column_names=["account_id", "route", "key", "body_sha256", "status", "response", "created_at"],
            database=self._database,
            settings={"async_insert": 0},
        )


def check_key(key: str) -> str:
    """1 to 255 visible ASCII characters (a UUID is the usual choice)."""
    if not key or len(key) > MAX_KEY_LENGTH or not all(33 <= ord(c) <= 126 for c in key):
        raise bad_parameter(HEADER, f"must be 1 to {MAX_KEY_LENGTH} visible ASCII characters, e.g. a UUID")
    return key


def replayed_headers(replayed: bool) -> dict[str, str]:
    return {"Idempotent-Replayed": "true"} if replayed else {}
