"""Every Prometheus metric of every process, in one place: names, help, base units, labels.

Labels have bounded cardinality (topic, partition, kind, outcome, reason code); per-app
figures live in ClickHouse, except balances (issue: balances), which alerting needs.
Adapters update these per batch, not per message.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_BATCH_SIZES: Final = (1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000)
_SECONDS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# -- stream worker -------------------------------------------------------------------------

EVENTS_RECEIVED: Final = Counter("metering_events_received_total", "Messages read from an input topic.", ["topic"])
EVENTS_INVALID: Final = Counter(
    "metering_events_invalid_total", "Messages sent to the dead-letter topic, by reason code (R10).", ["topic", "code"]
)
EVENTS_DUPLICATE: Final = Counter(
    "metering_events_duplicate_total", "Events ignored as already applied (R1).", ["topic"]
)
EVENTS_LATE: Final = Counter(
    "metering_events_late_total", "Events sent to the late topic: they would change a final session (R9).", ["topic"]
)
CONVERSATION_SESSIONS: Final = Counter(
    "metering_conversation_sessions_total",
    "Conversation sessions that became final, by result (billable, non_interactive, test).",
    ["result"],
)
BILLING_SESSIONS: Final = Counter(
    "metering_billing_sessions_emitted_total", "Billing sessions emitted by the workers.", ["kind"]
)
TRANSFER_ANOMALIES: Final = Counter(
    "metering_transfer_anomalies_total",
    "Agent transfers ignored or closed by the rules (R4): ended_without_start, started_while_open, left_open.",
    ["anomaly"],
)
OPEN_CONVERSATIONS: Final = Gauge(
    "metering_open_conversations", "Conversations with a session not yet final, per input partition.", ["partition"]
)
PARTITION_CLOCK_DELAY: Final = Gauge(
    "metering_partition_clock_delay_seconds",
    "Wall clock minus the partition's event-time clock (R9): how far behind real time it meters.",
    ["partition"],
)
WORKER_BATCH_EVENTS: Final = Histogram(
    "metering_worker_batch_events", "Messages per worker batch.", buckets=_BATCH_SIZES
)
WORKER_BATCH_SECONDS: Final = Histogram(
    "metering_worker_batch_duration_seconds",
    "Time to process one worker batch and commit its transaction.",
    buckets=_SECONDS,
)

WORKER_ABORTS: Final = Counter(
    "metering_worker_transactions_aborted_total",
    "Worker transactions aborted and processed again from the last commit.",
)

# -- ClickHouse sink -----------------------------------------------------------------------

SINK_ROWS: Final = Counter("metering_sink_rows_total", "Billing sessions written to ClickHouse.")
SINK_BATCH_ROWS: Final = Histogram("metering_sink_batch_rows", "Rows per ClickHouse insert.", buckets=_BATCH_SIZES)
SINK_INSERT_SECONDS: Final = Histogram(
    "metering_sink_insert_duration_seconds", "Latency of one ClickHouse insert.", buckets=_SECONDS
)
SINK_FAILURES: Final = Counter(
    "metering_sink_insert_failures_total", "ClickHouse inserts that failed and will be retried."
)
SINK_INVALID: Final = Counter(
    "metering_sink_invalid_records_total", "billing-sessions messages that are not valid records (skipped, logged)."
)
SINK_LAST_SUCCESS: Final = Gauge(
    "metering_sink_last_success_timestamp_seconds", "When the sink last committed a batch (Unix time)."
)
FINAL_TO_QUERYABLE_SECONDS: Final = Histogram(
    "metering_session_visible_delay_seconds",
    "From a billing session's emission by a worker to its row being committed in ClickHouse.",
    buckets=_SECONDS,
)

# -- balances (R12) ------------------------------------------------------------------------

APP_BALANCE: Final = Gauge(
    "metering_app_balance",
    "An app's prepaid balance in the currency of its latest plan (funds minus cost; may be negative).",
    ["account_id", "app_id", "currency"],
)
APP_BALANCE_STATUS: Final = Gauge(
    "metering_app_balance_status",
    "1 for the app's current balance status (active, low, depleted), 0 for the others; "
    "none until the app's first funds or session (an app being set up pages nobody).",
    ["account_id", "app_id", "status"],
)
APP_SESSIONS_UNPRICED: Final = Gauge(
    "metering_app_sessions_unpriced",
    "Billing sessions held without a price: they started before any plan of the app.",
    ["account_id", "app_id"],
)
COST: Final = Counter(
    "metering_cost_total",
    "Cost booked for final billing sessions, in the currency of the plan that priced them.",
    ["kind", "currency"],
)
COST_REVERSED: Final = Counter(
    "metering_cost_reversed_total",
    "Cost taken back when a plan that arrived late re-priced sessions lower; net cost is "
    "metering_cost_total minus this.",
    ["kind", "currency"],
)
SESSIONS_CHARGED: Final = Counter(
    "metering_sessions_charged_total", "Final billing sessions charged to a balance, once each.", ["kind"]
)
BALANCE_DUPLICATES: Final = Counter(
    "metering_balance_duplicates_total",
    "Inputs the balance ignored as already applied (session, funds, plan, seats).",
    ["input"],
)
BALANCE_SESSIONS_LATE: Final = Counter(
    "metering_balance_sessions_late_total",
    "Billing sessions not charged because their day is settled (sent to the late topic for reconciliation).",
)
BALANCE_PLANS_BACKDATED: Final = Counter(
    "metering_balance_plans_backdated_total",
    "Plans dated at or before sessions already settled: those keep their price; reconciliation re-rates them.",
)
BALANCE_ALERTS: Final = Counter(
    "metering_balance_alerts_total", "Balance alerts produced, one per crossing (R12).", ["state"]
)
BALANCE_BATCH_SECONDS: Final = Histogram(
    "metering_balance_batch_duration_seconds",
    "Time to process and commit one balance transaction.",
    buckets=_SECONDS,
)
BALANCE_ABORTS: Final = Counter(
    "metering_balance_transactions_aborted_total",
    "Balance transactions aborted and processed again from the last commit.",
)
WEBHOOK_DELIVERIES: Final = Counter(
    "metering_webhook_deliveries_total",
    "Balance-alert webhook calls, by result (delivered, failed: retried with backoff).",
    ["result"],
)
ALERTS_NOTIFIED: Final = Counter(
    "metering_balance_alerts_notified_total", "Balance alerts logged (and delivered, when a webhook is set)."
)
ORDER_INPUTS: Final = Counter(
    "metering_order_inputs_total",
    "Orders, payments and billing-type changes the order processor applied, by outcome (applied, duplicate, "
    "unmatched: a payment for an order it does not know, refused: an enterprise account's order, too_large: "
    "a message whose records would pass the record limit, dead-lettered).",
    ["outcome"],
)
ORDER_PAYMENTS: Final = Counter(
    "metering_order_payments_total", "Order payments by result (paid, failed, refunded).", ["status"]
)
ORDER_DOCUMENTS: Final = Counter(
    "metering_order_documents_total", "Invoices and credit notes issued, once each.", ["kind"]
)
ORDER_BATCH_SECONDS: Final = Histogram(
    "metering_order_batch_duration_seconds", "Time to process and commit one order transaction.", buckets=_SECONDS
)
ORDER_ABORTS: Final = Counter(
    "metering_order_transactions_aborted_total",
    "Order transactions aborted and processed again from the last commit.",
)
ENTITLEMENT_APPS: Final = Gauge("metering_entitlement_apps", "Apps in the entitlement read model (from balance-state).")
ENTITLEMENT_ANSWERS: Final = Counter(
    "metering_entitlement_answers_total",
    "Entitlement requests answered, by answer: entitled, not_entitled, unknown (app never seen: 404), "
    "loading (503 until the read model is read).",
    ["answer"],
)

# -- shared --------------------------------------------------------------------------------

CONSUMER_LAG: Final = Gauge(
    "metering_consumer_lag_messages",
    "Messages in a partition not yet processed by a consumer group (high watermark minus position).",
    ["group", "topic", "partition"],
)


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Expose /metrics; port 0 picks a free one. Returns the port actually bound."""
    server, _ = start_http_server(port, addr=host)
    return int(server.server_port)
