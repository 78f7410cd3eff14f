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

EVENTS_RECEIVED: Final = Counter(
    "metering_events_received_total", "Messages read from an input topic.", ["topic"]
)
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
    "metering_worker_batch_duration_seconds", "Time to process one worker batch, outputs flushed.", buckets=_SECONDS
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
