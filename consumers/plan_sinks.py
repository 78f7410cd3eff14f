"""Sinks of billing-plans, agent-transfers, balance-state, billing-accounts and billing-orders into
ClickHouse (migrations 005, 010, 011).

Each is a :class:`~consumers.sink.ClickHouseSink` with the same flush contract (one insert per
partition and offset range with that range's token, offsets committed after the insert, retries
with the same tokens, pause during outages); only what a message holds differs, and where it goes
(:class:`~consumers.clickhouse.plans.PlanStore`). One consumer group per topic
(``<app_id>-sink-<feed>``), because the sink tracks offsets per partition of one topic.

Input topics carry anything producers sent: what is not a valid event is the business of the
processes that apply it (the stream workers, the balance and order processors send it to the
dead-letter topic with the reason), so here it is skipped quietly
and its offset committed; so is what these tables do not need (transfers that end, or name no
agent). A ``balance-state`` message is the balance processor's own output: one that does not
decode is counted and logged as invalid, like a bad billing session. A tombstone (no value) says
nothing about a balance and is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec

from consumers.clickhouse.plans import PlanStore, record_key
from consumers.clickhouse.store import SessionWriter
from consumers.sink import ClickHouseSink, ConsumerFactory
from pipeline.contract.decode import decode_input
from pipeline.contract.events import AccountChanged, AgentTransfer, BalanceSnapshot, PlanEvent, Rejection
from pipeline.infra.retry import Backoff
from pipeline.infra.settings import Settings
from pipeline.orders.events import InvoiceIssued, OrderState, decode_order_message

__all__ = ["FEEDS", "Feed", "PlanSink", "plan_sinks"]

_SNAPSHOT: Final = msgspec.json.Decoder(BalanceSnapshot)


def _plan_event(value: bytes | None) -> Any:
    event = _event(value)
    return event if isinstance(event, PlanEvent) else None


def _started_transfer(value: bytes | None) -> Any:
    event = _event(value)
    if isinstance(event, AgentTransfer) and event.action == "started" and event.agent_id is not None:
        return event
    return None


def _event(value: bytes | None) -> Any:
    if value is None:
        return None
    decoded = decode_input(value, int(time.time() * 1000))
    return None if isinstance(decoded, Rejection) else decoded[1]


def _account_event(value: bytes | None) -> Any:
    event = _event(value)
    return event if isinstance(event, AccountChanged) else None


def _order_record(value: bytes | None) -> Any:
    """The order processor's outputs; the orders and payments it reads are its business (it dead-letters them)."""
    if value is None:
        return None
    decoded = decode_order_message(value, 2**62)
    return decoded if isinstance(decoded, OrderState | InvoiceIssued) else None


def _snapshot(value: bytes | None) -> Any:
    if value is None:
        return None
    try:
        return _SNAPSHOT.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return f"not a balance snapshot: {exc}"


@dataclass(frozen=True, slots=True)
class Feed:
    """One topic into the plan tables: its name (in the group id), topic setting and decoder."""

    name: str
    topic: str  # attribute of ``Settings.topics``
    decode: Callable[[bytes | None], Any]  # -> record, str (why it is invalid) or None (nothing to store)


FEEDS: Final = (
    Feed("plans", "plans", _plan_event),
    Feed("transfers", "transfers", _started_transfer),
    Feed("balances", "balance_state", _snapshot),
    Feed("accounts", "accounts", _account_event),
    Feed("orders", "orders", _order_record),
)


class PlanSink(ClickHouseSink):
    """A :class:`ClickHouseSink` of one :class:`Feed` into a :class:`PlanStore`."""

    timestamps_are_final = False  # an input event's timestamp is when it was produced, not finalized
    after_insert_point = "plan_sink.after_insert"
    invalid_message = (
        "skipped an invalid balance-state message: it is the balance processor's own output and cannot be "
        "re-emitted, so it is counted (metering_sink_invalid_records_total) and its offset committed; "
        "if this repeats, check the balance processor's version against the sink's"
    )

    def __init__(
        self,
        settings: Settings,
        feed: Feed,
        writer: PlanStore,
        consumer_factory: ConsumerFactory | None = None,
        *,
        backoff: Backoff | None = None,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        # PlanStore has the SessionWriter contract (idempotent per token) for its own records.
        super().__init__(
            settings,
            cast(SessionWriter, writer),
            consumer_factory,
            backoff=backoff,
            consumer_overrides=consumer_overrides,
        )
        self.topic = getattr(settings.topics, feed.topic)
        self.group = f"{settings.app_id}-sink-{feed.name}"
        self.feed = feed

    def _decode(self, value: bytes | None) -> Any:
        return self.feed.decode(value)

    def _record_key(self, record: Any) -> str:
        return record_key(record)


def plan_sinks(settings: Settings, writer: PlanStore) -> list[PlanSink]:
    """One sink per feed, sharing the writer (the store process's one client)."""
    return [PlanSink(settings, feed, writer) for feed in FEEDS]
