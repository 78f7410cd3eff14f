"""Dashboard "Metering": the stream workers and the sink (Prometheus), usage per app (ClickHouse).

The usage panels run the product's named queries (``consumers/grafana/bind.py``): "Usage per
app" is ``usage_by_period.sql``, so for the local days the time range touches it shows what
``metering usage --from <first day> --to <last day> --by <by> --timezone <tz>`` prints, voids of
``metering reconcile --repair`` subtracted.
"""

from __future__ import annotations

from typing import Any, Final

from consumers.grafana import variables
from consumers.grafana.bind import account_filter, app_filter, bind
from consumers.grafana.panels import Panel, clickhouse, dashboard, promql, row, table, timeseries

__all__ = ["UID", "usage_dashboard"]

UID: Final = "metering"
_RATE: Final = "[$__rate_interval]"
#: The tables that list the accounts and apps of the variables.
_ID_TABLES: Final = ("usage_15m",)


def _stream() -> list[Panel]:
    return [
        timeseries("Events in by topic", "Messages read from each input topic, per second.",
                   [promql(f"sum by (topic) (rate(metering_events_received_total{_RATE}))", "{{topic}}")],
                   unit="suffix: msg/s"),
        timeseries("Invalid, late and duplicate events",
                   "Dead-lettered messages by reason code (R10), events sent to the late topic (R9) and "
                   "duplicates ignored (R1), per second.",
                   [promql(f"sum by (code) (rate(metering_events_invalid_total{_RATE}))", "invalid: {{code}}"),
                    promql(f"sum(rate(metering_events_late_total{_RATE}))", "late"),
                    promql(f"sum(rate(metering_events_duplicate_total{_RATE}))", "duplicate")],
                   unit="suffix: msg/s"),
        timeseries("Billing sessions emitted by kind", "Billing sessions the workers emitted, per minute.",
                   [promql(f"sum by (kind) (rate(metering_billing_sessions_emitted_total{_RATE})) * 60", "{{kind}}")],
                   unit="suffix: /min", stacked=True, w=8),
        timeseries("Open conversations", "Conversations with a session not yet final, all partitions.",
                   [promql("sum(metering_open_conversations)", "open conversations")], w=8),
        timeseries("Consumer lag",
                   "Messages not yet processed, by consumer group and topic (high watermark minus position).",
                   [promql("sum by (group, topic) (metering_consumer_lag_messages)", "{{group}} {{topic}}")], w=8),
        timeseries("Partition clock delay",
                   "Wall clock minus the slowest partition's event-time clock: how far behind real time metering is.",
                   [promql("max(metering_partition_clock_delay_seconds)", "slowest partition")], unit="s"),
        timeseries("Worker batch duration p99", "Time to process one worker batch, outputs flushed.",
                   [promql("histogram_quantile(0.99, sum by (le) "
                           f"(rate(metering_worker_batch_duration_seconds_bucket{_RATE})))", "p99")],
                   unit="s"),
    ]  # fmt: skip


def _sink() -> list[Panel]:
    insert = f"sum by (le) (rate(metering_sink_insert_duration_seconds_bucket{_RATE}))"
    return [
        timeseries("Sink insert latency",
                   "Latency of one ClickHouse insert; and from a session's emission to its row being queryable.",
                   [promql(f"histogram_quantile(0.99, {insert})", "insert p99"),
                    promql(f"histogram_quantile(0.5, {insert})", "insert p50"),
                    promql("histogram_quantile(0.99, sum by (le) "
                           f"(rate(metering_session_visible_delay_seconds_bucket{_RATE})))",
                           "emitted to queryable p99")],
                   unit="s"),
        timeseries("Sink rows and failures",
                   "Billing sessions written to ClickHouse per second; failed inserts (retried) and invalid records.",
                   [promql(f"sum(rate(metering_sink_rows_total{_RATE}))", "rows"),
                    promql(f"sum(rate(metering_sink_insert_failures_total{_RATE}))", "insert failures"),
                    promql(f"sum(rate(metering_sink_invalid_records_total{_RATE}))", "invalid records")],
                   unit="suffix: /s"),
    ]  # fmt: skip


def _rename(column: str, to: str) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": column}, "properties": [{"id": "displayName", "value": to}]}


def _usage_table(title: str, description: str) -> Panel:
    return table(title, description, [clickhouse(bind("usage_by_period").text(), table=True)], footer=True,
                 overrides=[_rename("day", "${by}")])  # fmt: skip


def _sessions_by_kind(title: str, *, w: int) -> Panel:
    steps = bind("usage_by_step").text(
        lambda q: f"SELECT time, kind, sum(sessions) AS sessions\nFROM\n{q}\nGROUP BY time, kind\nORDER BY time, kind"
    )
    return timeseries(title, "Billing sessions by the time step they started in (15-minute buckets added up, "
                      "UTC-aligned), voids of `metering reconcile --repair` subtracted.",
                      [clickhouse(steps, table=False)], stacked=True, bars=True, w=w)  # fmt: skip


def _usage() -> list[Panel]:
    conversations = bind("usage_by_step").text(
        lambda q: f"SELECT time, sum(conversations) AS conversations\nFROM\n{q}\nGROUP BY time\nORDER BY time"
    )
    top = bind("top_apps", limit="4294967295").text(
        lambda q: (
            f"SELECT *\nFROM\n{q}\nWHERE {app_filter()}\n    AND {account_filter()}\n"
            "ORDER BY billing_sessions DESC, voice_sessions DESC, account_id, app_id\nLIMIT 10"
        )
    )
    channels = bind("sessions_by_channel").text(
        lambda q: (
            "SELECT\n    channel,\n    sumIf(sessions, kind = 'usage') AS usage_sessions,\n"
            "    sumIf(sessions, kind = 'voice') AS voice_sessions,\n"
            "    sumIf(sessions, kind = 'alert') AS alert_sessions\n"
            f"FROM\n{q}\nGROUP BY channel\nORDER BY usage_sessions + voice_sessions + alert_sessions DESC, channel"
        )
    )
    return [
        _usage_table("Usage per app",
                     "Per account, app and ${by} over the local days (in ${tz}) the time range touches: what "
                     "`metering usage --from <first day> --to <last day> --by ${by} --timezone ${tz}` prints, "
                     "with its account and app filters. Voids written by `metering reconcile --repair` are "
                     "subtracted, as in every usage query."),
        _sessions_by_kind("Billing sessions by kind", w=16),
        timeseries("Conversations",
                   "Billable conversation sessions (R8) by the time step they started in, voids subtracted.",
                   [clickhouse(conversations, table=False)], bars=True, w=8),
        table("Top apps by billing sessions",
              "The ten apps with the most billing sessions (usage + alert, R8) over the local days the time "
              "range touches, voice beside (sql/queries/top_apps.sql).",
              [clickhouse(top, table=True)], w=12, h=9),
        table("Sessions by channel",
              "Billing sessions per channel over the local days the time range touches (alerts have no "
              "channel: ''), voids subtracted (sql/queries/sessions_by_channel.sql).",
              [clickhouse(channels, table=True)], w=12, h=9, footer=True),
    ]  # fmt: skip


def _drill_down() -> list[Panel]:
    """One row per selected app (repeated by Grafana): its sessions over time, agents and seats."""
    agents = bind("active_agents_by_period").text()
    seats = bind("seat_changes").text(
        lambda q: f"SELECT fromUnixTimestamp64Milli(t_ms) AS changed_at, agents\nFROM\n{q}\nORDER BY changed_at DESC"
    )
    return [
        _sessions_by_kind("${app:text}: billing sessions by kind", w=24),
        _usage_table("${app:text}: usage per ${by}",
                     "The app's rows of \"Usage per app\": `metering usage --app <app>` for the same days."),
        table("${app:text}: active agents per ${by}",
              "R11 active agents: distinct agents who took a transfer in the period (local days in ${tz}).",
              [clickhouse(agents, table=True)], w=12, h=8),
        table("${app:text}: seat changes",
              "R11 seats: every agents_subscribed event up to the end of the time range (the count in force "
              "from that moment on).",
              [clickhouse(seats, table=True)], w=12, h=8),
    ]  # fmt: skip


def usage_dashboard() -> dict[str, Any]:
    return dashboard(
        UID,
        "Metering",
        "Events in, billing sessions out: the stream workers, the ClickHouse sink and per-app usage. "
        "The usage panels run the product's SQL (sql/queries), the figures of `metering usage`.",
        [*variables.common(_ID_TABLES), variables.by()],
        [
            row("Stream workers", _stream()),
            row("ClickHouse sink", _sink()),
            row("Usage (ClickHouse: usage_15m minus voids_15m)", _usage()),
            row("App ${app:text}", _drill_down(), collapsed=True, repeat="app"),
        ],
    )
