"""The event contract (``schemas/v1``) as typed structs; ``pipeline.contract.decode`` turns bytes into them.

Input events are decoded straight into these structs by msgspec, so type checks, string
limits and the tagged ``type`` field are enforced in C.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, Struct

SCHEMA_VERSION: Final = "v1"
MAX_PAYLOAD_BYTES: Final = 64 * 1024
#: Original bytes a dead letter carries: its base64 must stay far below a broker's 1 MB message limit.
DEAD_LETTER_PAYLOAD_BYTES: Final = 256 * 1024
MAX_FUTURE_MS: Final = 24 * 3600 * 1000
EARLIEST_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
MIN_IDLE_TIMEOUT_MINUTES: Final = 5
MAX_IDLE_TIMEOUT_MINUTES: Final = 14 * 24 * 60

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Id = Annotated[str, Meta(min_length=1, max_length=128)]
Channel = Annotated[str, Meta(min_length=1, max_length=64)]
Timestamp = Annotated[datetime, Meta(tz=True)]
# `(?!\n)$`: a plain `$` would also match before a final newline, in Python and in JSON Schema.
DecimalString = Annotated[str, Meta(pattern=r"^-?[0-9]{1,15}(\.[0-9]{1,6})?(?!\n)$")]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}(?!\n)$")]
IdleTimeoutMinutes = Annotated[int, Meta(ge=MIN_IDLE_TIMEOUT_MINUTES, le=MAX_IDLE_TIMEOUT_MINUTES)]
#: Free text a person wrote (a reason, a description): up to 1000 characters.
Text = Annotated[str, Meta(min_length=1, max_length=1000)]
TermMonths = Annotated[int, Meta(ge=1, le=120)]
ExtensionDays = Annotated[int, Meta(ge=1, le=366)]
BillingType = Literal["prepaid", "enterprise"]


# gc=False: an event holds only strings, numbers and a timestamp, so it can never be part of a
# reference cycle; untracked, millions of them cost the cyclic collector nothing.
class _Event(Struct, tag_field="type", frozen=True, gc=False):
    event_id: Id
    occurred_at: Timestamp
    account_id: Id
    app_id: Id


class ConversationTurn(_Event, tag="conversation_turn", frozen=True):
    conversation_id: Id
    user_id: Id
    channel: Channel
    speaker: Literal["user", "bot", "agent"]
    end_of_conversation: bool = False
    is_test: bool = False
    message_id: Id | None = None


class AgentTransfer(_Event, tag="agent_transfer", frozen=True):
    conversation_id: Id
    action: Literal["started", "ended"]
    agent_id: Id | None = None
    user_id: Id | None = None


class AlertDelivered(_Event, tag="alert_delivered", frozen=True):
    user_id: Id
    alert_id: Id
    channel: Channel | None = None
    is_test: bool = False


class PlanChanged(_Event, tag="plan_changed", frozen=True):
    plan: Id
    price_per_usage_session: DecimalString
    price_per_alert_session: DecimalString
    price_per_voice_session: DecimalString
    currency: Currency = "USD"
    low_balance_threshold: DecimalString = "50.00"
    idle_timeout_minutes: IdleTimeoutMinutes | None = None
    #: from when the plan is in force (default: occurred_at); a downgrade names the next billing period
    effective_at: Timestamp | None = None
    #: a plan with a term ends term_months after it took effect (plus granted extensions)
    term_months: TermMonths | None = None


class FundsAdded(_Event, tag="funds_added", frozen=True):
    amount: DecimalString
    currency: Currency = "USD"


class FundsRefunded(_Event, tag="funds_refunded", frozen=True):
    """Money paid back to the customer: taken out of the balance (a refunded order's credit note)."""

    amount: DecimalString
    currency: Currency = "USD"


class ExtensionRequested(_Event, tag="extension_requested", frozen=True):
    """An account admin asks for more days on the plan's term; an operator grants or declines it."""

    request_id: Id
    days: ExtensionDays
    reason: Text
    requested_by: Id | None = None


class ExtensionGranted(_Event, tag="extension_granted", frozen=True):
    """An operator grants a request: the term of the plan it was made under ends ``days`` later."""

    request_id: Id
    days: ExtensionDays


class ExtensionDeclined(_Event, tag="extension_declined", frozen=True):
    request_id: Id
    reason: Text | None = None


class OwnerChanged(_Event, tag="owner_changed", frozen=True):
    """The user responsible for the app (shown in the console, told about its balance)."""

    user_id: Id
    changed_by: Id | None = None


class AgentsSubscribed(_Event, tag="agents_subscribed", frozen=True):
    agents: Annotated[int, Meta(ge=0, le=10_000_000)]


class AccountChanged(Struct, tag_field="type", tag="account_changed", frozen=True, gc=False):
    """The account's billing type: the only event without ``app_id`` (topic billing-accounts, key account_id).

    Deduplicated by ``(account_id, event_id)``; the latest by ``(occurred_at, event_id)`` is in force.
    Accounts are ``prepaid`` until one says otherwise.
    """

    event_id: Id
    occurred_at: Timestamp
    account_id: Id
    billing_type: BillingType


ConversationEvent = ConversationTurn | AgentTransfer
PlanEvent = (
    PlanChanged
    | FundsAdded
    | AgentsSubscribed
    | FundsRefunded
    | ExtensionRequested
    | ExtensionGranted
    | ExtensionDeclined
    | OwnerChanged
)
Event = (
    ConversationTurn
    | AgentTransfer
    | AlertDelivered
    | PlanChanged
    | FundsAdded
    | AgentsSubscribed
    | FundsRefunded
    | ExtensionRequested
    | ExtensionGranted
    | ExtensionDeclined
    | OwnerChanged
)
#: Every input event, the account's own included (it has no app, so it is not an ``Event``).
InputEvent = Event | AccountChanged

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    "conversation_turn": ConversationTurn,
    "agent_transfer": AgentTransfer,
    "alert_delivered": AlertDelivered,
    "plan_changed": PlanChanged,
    "funds_added": FundsAdded,
    "agents_subscribed": AgentsSubscribed,
    "funds_refunded": FundsRefunded,
    "extension_requested": ExtensionRequested,
    "extension_granted": ExtensionGranted,
    "extension_declined": ExtensionDeclined,
    "owner_changed": OwnerChanged,
}
#: Every input type, by its ``type`` value: the account's own (topic billing-accounts) included.
INPUT_TYPES: Final[dict[str, type[InputEvent]]] = {**EVENT_TYPES, "account_changed": AccountChanged}

#: Default input topic of each event type (`events.md`); configurable in the settings.
DEFAULT_TOPIC_OF_TYPE: Final[dict[str, str]] = {
    "conversation_turn": "conversation-turns",
    "agent_transfer": "agent-transfers",
    "alert_delivered": "alerts-delivered",
    "plan_changed": "billing-plans",
    "funds_added": "billing-plans",
    "agents_subscribed": "billing-plans",
    "funds_refunded": "billing-plans",
    "extension_requested": "billing-plans",
    "extension_granted": "billing-plans",
    "extension_declined": "billing-plans",
    "owner_changed": "billing-plans",
    "account_changed": "billing-accounts",
}


class Rejection(Struct, frozen=True):
    """Why a payload is not a valid event: bad input is data, routed to the dead-letter topic."""

    code: Literal[
        "too_large",
        "not_json",
        "not_an_object",
        "unknown_type",
        "schema",
        "out_of_range",
        "wrong_topic",
        "misrouted",
        "unmatched",  # a payment for an order the order processor does not know
        "inapplicable",  # a payment the order's state does not allow (a refund of an unpaid order)
    ]
    detail: str

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


def format_ms(ms: int) -> str:
    """RFC 3339 in UTC with milliseconds, the form every output record uses."""
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_decimal(value: str) -> Decimal:
    """Decimal from a contract string; raises ValueError with the value if it is not one."""
    try:
        return Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal string: {value!r}") from exc


# -- output records ------------------------------------------------------------------------


class BillingSessionRecord(Struct, frozen=True, kw_only=True):
    """A `billing-sessions` message (schemas/v1/billing_session.json)."""

    billing_session_id: str
    kind: Literal["usage", "voice", "alert"]
    account_id: str
    app_id: str
    conversation_session_id: str | None
    conversation_id: str | None
    user_id: str
    channel: str | None
    session_index: int
    started_at: datetime
    ended_at: datetime
    conversation_started_at: datetime | None = None
    conversation_ended_at: datetime | None = None
    bot_ms: int | None = None
    agent_ms: int | None = None
    alert_id: str | None = None
    schema_version: str = SCHEMA_VERSION


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


class DeadLetter(Struct, frozen=True, kw_only=True):
    """A `metering-dlq` message (R10): the original bytes, where they came from, and why."""

    reason: str
    code: str
    payload_base64: str
    source_topic: str
    source_partition: int
    source_offset: int
    received_at: datetime
    payload_bytes: int = 0
    payload_sha256: str = ""
    payload_truncated: bool = False
    schema_version: str = SCHEMA_VERSION


class LateRecord(Struct, frozen=True, kw_only=True):
    """A `metering-late` message (R9): a valid event that arrived after its session was final."""

    reason: str
    event: msgspec.Raw
    app_id: str
    event_id: str
    occurred_at: datetime
    partition_clock: datetime
    source_topic: str
    source_partition: int
    source_offset: int
    schema_version: str = SCHEMA_VERSION


class BalanceAlert(Struct, frozen=True, kw_only=True):
    """A `balance-alerts` message (R12): one per crossing of the low threshold or zero."""

    alert_event_id: str
    account_id: str
    app_id: str
    state: Literal["low", "depleted", "recovered"]
    balance: DecimalString
    threshold: DecimalString
    currency: Currency
    occurred_at: datetime
    schema_version: str = SCHEMA_VERSION


class BalanceSnapshot(Struct, frozen=True, kw_only=True):
    """A `balance-state` message (key ``app_id``, compacted): an app's balance after a change.

    The read model of balances: the entitlement endpoint, `metering plans`, the ClickHouse
    balance history and the ``metering_app_balance`` metric all read it. ``version`` counts
    the changes applied to the app, so a newer snapshot always has a larger one.
    """

    account_id: str
    app_id: str
    plan: str | None
    currency: Currency
    funds: DecimalString
    usage_cost: DecimalString
    alert_cost: DecimalString
    voice_cost: DecimalString
    usage_sessions: int
    alert_sessions: int
    voice_sessions: int
    unpriced_sessions: int
    balance: DecimalString
    threshold: DecimalString
    status: Literal["active", "low", "depleted"]
    entitled: bool
    agents: int
    version: int
    updated_at: datetime
    #: the plan model (docs/balances.md): term end of the plan in force, a change still to come,
    #: the app's owner and its pending extension request; absent in snapshots of older versions
    expires_at: datetime | None = None
    expired: bool = False
    scheduled_plan: str | None = None
    scheduled_at: datetime | None = None
    owner: str | None = None
    extension_request_id: str | None = None
    extension_days: int | None = None
    extension_reason: str | None = None
    extension_requested_at: datetime | None = None
    schema_version: str = SCHEMA_VERSION
