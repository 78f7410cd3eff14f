"""Dashboard "Metering balances": balances and status per app, balance alerts, entitlement, webhooks.

The per-app tables read ClickHouse with the product's queries (the balance read model
``balance_latest.sql`` and ``cost_by_app.sql``, what ``metering plans`` shows). Every panel over a
per-app series (labels ``account_id``, ``app_id``: the balances and statuses) honours the account
and app variables too, through their hidden PromQL companions (``consumers/grafana/variables.py``);
the other Prometheus panels are the balance processor, the entitlement endpoint and the notifier
as on-call watches them (the alert rules in ``deploy/prometheus/alerts.yml`` read the same series).
"""

from __future__ import annotations

from typing import Any, Final

from consumers.grafana import variables
from consumers.grafana.bind import app_filter, bind
from consumers.grafana.panels import Panel, clickhouse, dashboard, promql, row, stat, table, timeseries

__all__ = ["UID", "balances_dashboard"]

UID: Final = "metering-balances"
_RATE: Final = "[$__rate_interval]"
_ID_TABLES: Final = ("balance_snapshots", "plan_changes")
#: The label matchers of the account and app selection, for series labelled by app.
_APPS: Final = variables.PROMQL_SELECTION
_STATUS_COLOURS: Final = {"active": "green", "low": "orange", "depleted": "red"}


def _status_colours(column: str) -> dict[str, Any]:
    mapping = {status: {"color": colour, "index": i} for i, (status, colour) in enumerate(_STATUS_COLOURS.items())}
    return {
        "matcher": {"id": "byName", "options": column},
        "properties": [
            {"id": "mappings", "value": [{"type": "value", "options": mapping}]},
            {"id": "custom.cellOptions", "value": {"type": "color-background"}},
        ],
    }


def _clickhouse() -> list[Panel]:
    latest = bind("balance_latest").text(lambda q: f"SELECT *\nFROM\n{q}\nWHERE {app_filter()}")
    by_status = bind("balance_latest").text(
        lambda q: f"SELECT status, count() AS apps\nFROM\n{q}\nWHERE {app_filter()}\nGROUP BY status\nORDER BY status"
    )
    cost = bind("cost_by_app").text(lambda q: f"SELECT *\nFROM\n{q}\nWHERE {app_filter()}")
    return [
        table("Balance and status per app",
              "The latest balance snapshot of every app (the balance-state read model in ClickHouse, as "
              "`metering plans` shows it). `entitled` is what the entitlement endpoint answers for the app.",
              [clickhouse(latest, table=True)], w=18, h=10, overrides=[_status_colours("status")]),
        stat("Apps by status", "Apps of the selection per balance status (active, low, depleted).",
             [clickhouse(by_status, table=True)], w=6, h=10, rows=True),
        table("Cost per app",
              "R12 cost of the billing sessions that started on the local days (in ${tz}) the time range "
              "touches, each priced by the plan in force at its start; voided sessions are not billed, "
              "sessions before any plan are counted as unpriced (sql/queries/cost_by_app.sql).",
              [clickhouse(cost, table=True)], w=24, h=8),
    ]  # fmt: skip


def _alerts() -> list[Panel]:
    return [
        timeseries("Balance alerts by state",
                   "Balance alerts produced on balance-alerts, one per crossing (R12): low, depleted, recovered.",
                   [promql(f"sum by (state) (increase(metering_balance_alerts_total{_RATE}))", "{{state}}")],
                   bars=True, stacked=True, w=8),
        timeseries("Apps low or depleted",
                   "Apps of the selection whose balance status is low or depleted now (MeteringAppBalanceLow "
                   "and MeteringAppBalanceDepleted fire on the same series, for every app).",
                   [promql(f'count by (status) (metering_app_balance_status{{status=~"low|depleted", {_APPS}}} == 1)',
                           "{{status}}")], w=8),
        timeseries("Lowest balances",
                   "The ten lowest balances of the selected apps, in the currency of each app's plan.",
                   [promql(f"bottomk(10, metering_app_balance{{{_APPS}}})",
                           "{{account_id}} / {{app_id}} ({{currency}})")], w=8),
        timeseries("Cost booked per minute",
                   "Cost the balance processor booked for final billing sessions, and cost taken back by "
                   "plans that re-priced sessions lower, by kind and currency.",
                   [promql(f"sum by (kind, currency) (rate(metering_cost_total{_RATE})) * 60", "{{kind}} {{currency}}"),
                    promql(f"sum by (kind, currency) (rate(metering_cost_reversed_total{_RATE})) * 60",
                           "reversed {{kind}} {{currency}}")], w=12),
        timeseries("Sessions charged and held back",
                   "Final billing sessions charged to a balance per minute; sessions not charged because "
                   "their day is settled (sent to reconciliation); transactions aborted and redone.",
                   [promql(f"sum by (kind) (rate(metering_sessions_charged_total{_RATE})) * 60", "charged {{kind}}"),
                    promql(f"sum(rate(metering_balance_sessions_late_total{_RATE})) * 60", "late"),
                    promql(f"sum(rate(metering_balance_transactions_aborted_total{_RATE})) * 60", "aborted")],
                   unit="suffix: /min", w=12),
    ]  # fmt: skip


def _entitlement() -> list[Panel]:
    return [
        timeseries("Entitlement answers",
                   "Answers of GET /v1/entitlement/{app_id} per second: entitled, not_entitled (low funds "
                   "are still entitled; depleted are not), unknown (an app never seen: 404), loading (503 "
                   "until the read model is read).",
                   [promql(f"sum by (answer) (rate(metering_entitlement_answers_total{_RATE}))", "{{answer}}")],
                   unit="reqps", stacked=True, w=16),
        stat("Apps in the entitlement read model", "Apps the endpoint knows (from balance-state).",
             [promql("max(metering_entitlement_apps)", "apps")], w=8),
    ]  # fmt: skip


def _webhooks() -> list[Panel]:
    return [
        timeseries("Webhook deliveries and failures",
                   "Balance-alert webhook calls per minute by result (failed calls are retried with backoff "
                   "until delivered), and alerts notified (logged, and delivered when a webhook is set).",
                   [promql(f"sum by (result) (rate(metering_webhook_deliveries_total{_RATE})) * 60", "{{result}}"),
                    promql(f"sum(rate(metering_balance_alerts_notified_total{_RATE})) * 60", "alerts notified")],
                   unit="suffix: /min", w=12),
        timeseries("Balance processor and notifier lag",
                   "Messages not yet processed by the balance processor and the notifier, by group and topic.",
                   [promql("sum by (group, topic) "
                           '(metering_consumer_lag_messages{job=~"metering-balance|metering-notify"})',
                           "{{group}} {{topic}}")], w=12),
    ]  # fmt: skip


def balances_dashboard() -> dict[str, Any]:
    return dashboard(
        UID,
        "Metering balances",
        "Prepaid balances (R12): balance and status per app, cost, balance alerts, entitlement answers, "
        "webhook deliveries. Per-app tables from ClickHouse (as `metering plans`), the rest from Prometheus.",
        [*variables.common(_ID_TABLES), *variables.promql_regexes()],
        [
            row("Balances per app (ClickHouse)", _clickhouse()),
            row("Balance alerts and cost (Prometheus: metering balance)", _alerts()),
            row("Entitlement (Prometheus: metering entitlement)", _entitlement()),
            row("Webhook deliveries (Prometheus: metering notify)", _webhooks()),
        ],
        time_from="now-7d",
    )
