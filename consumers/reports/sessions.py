"""Billing sessions one row each: the columns of the console's ``GET /api/v1/sessions.csv`` (console.md §4).

`metering compute --sessions` prints these rows from a file of events, so the console's export
can be checked against an offline run row for row. Times are RFC 3339 in UTC with milliseconds
(``2026-11-01T10:00:00.000Z``), the precision billing works in; what does not apply to a kind of
session (a conversation's span and times for an alert, ``alert_id`` for a conversation) is empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pipeline.contract.events import ms_to_datetime
from pipeline.infra.report import Cell
from pipeline.rules.model import BillingSession

SESSION_COLUMNS: Final = (
    "app_id",
    "channel",
    "user_id",
    "billing_session_type",
    "conversation_session_id",
    "conversation_started_at",
    "conversation_ended_at",
    "billing_session_id",
    "billing_session_started_at",
    "billing_session_ended_at",
    "bot_ms",
    "agent_ms",
    "alert_id",
)

SessionRow = tuple[Cell, ...]


def utc_text(ms: int) -> str:
    """An instant (epoch milliseconds) as RFC 3339 UTC with milliseconds: ``2026-11-01T10:00:00.000Z``."""
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _maybe_utc_text(ms: int | None) -> str | None:
    return None if ms is None else utc_text(ms)


def session_row(s: BillingSession) -> SessionRow:
    """One billing session in ``SESSION_COLUMNS`` order."""
    return (
        s.app_id,
        s.channel,
        s.user_id,
        s.kind,
        s.conversation_session_id,
        _maybe_utc_text(s.conversation_started_ms),
        _maybe_utc_text(s.conversation_ended_ms),
        s.billing_session_id,
        utc_text(s.started_ms),
        utc_text(s.ended_ms),
        s.bot_ms,
        s.agent_ms,
        s.alert_id,
    )


def export_order(s: BillingSession) -> tuple[int, str]:
    """The order of an export: by start, then by id (ids are unique, so the order is total)."""
    return s.started_ms, s.billing_session_id


def session_rows(sessions: Iterable[BillingSession]) -> list[SessionRow]:
    """Rows of ``sessions`` in export order."""
    return [session_row(s) for s in sorted(sessions, key=export_order)]
