"""The console's reads at scale: ``/api/v1/usage`` latency and ``/api/v1/sessions.csv`` throughput.

The data: 25 accounts of 200 apps (5,000 apps) over 90 days, a usage session in every 15-minute
bucket of every app, a voice session in one bucket of six and an alert in one of twelve: about
54 million rows of ``usage_15m`` (and as many billing sessions), written through
``billing_sessions`` so that every materialized view fills as the sink fills it, then counted
into ``usage_counts`` as a repair run counts its days; plus seats and started transfers. Built
once into ``--data`` (an embedded chDB directory; several minutes) and reused (a directory built
before migration 012 is counted by the migration).

The server is the real app on uvicorn in this process (as the store serves it), the client an
httpx keep-alive connection; a request's latency is from sending it to having read the whole
answer. The usage figure is 30 days by day, all apps of one 200-app account (the issue's
target: p99 < 100 ms, goal 50 ms), each run after a warm-up, medians over runs. The export
figure is rows per second of a 30-day sessions.csv of one account (about 720,000 rows).

    .venv/bin/python bench/console_bench.py [--data /tmp/metering-console-bench] [--requests 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import environment, quantile, write_result
from console.app import create_app
from console.auth import Authenticator, issue_token
from console.context import ConsoleContext
from console.server import ConsoleServer
from consumers.clickhouse import Client, connect, migrate
from consumers.clickhouse.counts import recount_period
from pipeline.infra.settings import ConsoleSettings

ACCOUNTS = 25
APPS_PER_ACCOUNT = 200
DAYS = 90
FIRST_DAY = "2026-04-01"
NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
DATABASE = "bench"
SECRET = "b" * 40
P99_TARGET_MS = 100.0


def build(client: Client) -> None:
    """Fill the database (skipped when it already holds the data)."""
    migrate(client, DATABASE)
    have = int(client.command(f"SELECT count() FROM {DATABASE}.usage_15m"))
    if have >= 50_000_000:
        print(f"data already there: {have:,} rows in usage_15m")
        return
    buckets = DAYS * 96
    started = time.monotonic()
    for account in range(ACCOUNTS):
        for kind, every in (("usage", 1), ("voice", 6), ("alert", 12)):
            client.command(
                f"""
                INSERT INTO {DATABASE}.billing_sessions
                    (account_id, app_id, billing_session_id, kind, channel, user_id, conversation_id,
                     conversation_session_id, session_index, started_at, ended_at, conversation_started_at,
                     conversation_ended_at, bot_ms, agent_ms, alert_id, schema_version)
                SELECT
                    'acct-{account:02d}',
                    concat('app-{account:02d}-', toString(number % {APPS_PER_ACCOUNT})),
                    toString(generateUUIDv4(number)),
                    '{kind}',
                    if('{kind}' = 'voice', 'voice', 'web'),
                    concat('u-', toString(number % 9973)),
                    if('{kind}' = 'alert', NULL, concat('c-', toString(number))),
                    if('{kind}' = 'alert', NULL, toString(generateUUIDv4(number + 1))),
                    0,
                    toDateTime64('{FIRST_DAY} 00:00:00', 3, 'UTC') + toIntervalMillisecond(
                        intDiv(number, {APPS_PER_ACCOUNT}) * 900000 + (number * 7919) % 840000),
                    toDateTime64('{FIRST_DAY} 00:00:00', 3, 'UTC') + toIntervalMillisecond(
                        intDiv(number, {APPS_PER_ACCOUNT}) * 900000 + (number * 7919) % 840000 + 60000),
                    NULL, NULL,
                    if('{kind}' = 'alert', NULL, 60000),
                    if('{kind}' = 'alert', NULL, 0),
                    if('{kind}' = 'alert', 'sub-1', NULL),
                    '1'
                FROM numbers({APPS_PER_ACCOUNT * buckets})
                WHERE intDiv(number, {APPS_PER_ACCOUNT}) % {every} = 0
                SETTINGS max_insert_block_size = 1048576
                """
            )
        client.command(
            f"""
            INSERT INTO {DATABASE}.agent_subscriptions (account_id, app_id, event_id, occurred_at, agents)
            SELECT 'acct-{account:02d}', concat('app-{account:02d}-', toString(number % {APPS_PER_ACCOUNT})),
                   concat('seats-', toString(number)),
                   toDateTime64('{FIRST_DAY} 00:00:00', 3, 'UTC')
                       + toIntervalDay(intDiv(number, {APPS_PER_ACCOUNT}) * 30),
                   1 + number % 7
            FROM numbers({APPS_PER_ACCOUNT * 3})
            """
        )
        client.command(
            f"""
            INSERT INTO {DATABASE}.agent_transfers_started
                (account_id, app_id, event_id, occurred_at, agent_id, conversation_id)
            SELECT 'acct-{account:02d}', concat('app-{account:02d}-', toString(number % {APPS_PER_ACCOUNT})),
                   concat('t-', toString(number)),
                   toDateTime64('{FIRST_DAY} 00:00:00', 3, 'UTC')
                       + toIntervalSecond(intDiv(number, {APPS_PER_ACCOUNT}) * 21600),
                   concat('agent-', toString(number % 150)), concat('c-', toString(number))
            FROM numbers({APPS_PER_ACCOUNT * DAYS * 4})
            """
        )
        rows = int(client.command(f"SELECT count() FROM {DATABASE}.usage_15m"))
        print(f"account {account + 1}/{ACCOUNTS}: {rows:,} rows in usage_15m, {time.monotonic() - started:.0f} s")
    first = date.fromisoformat(FIRST_DAY)
    recount_period(client, DATABASE, first, first + timedelta(days=DAYS - 1))
    print(f"counted into usage_counts, {time.monotonic() - started:.0f} s")


def measure_usage(url: str, token: str, requests: int, params: dict[str, str]) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=600) as http:
        for _ in range(5):  # warm-up: the server's caches (marks, uncompressed blocks), the HTTP connection
            http.get("/api/v1/usage", params=params).raise_for_status()
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            answer = http.get("/api/v1/usage", params=params)
            answer.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def measure_export(url: str, token: str, params: dict[str, str]) -> tuple[int, float]:
    rows = 0
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {token}"}
    with (
        httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=600) as http,
        http.stream("GET", "/api/v1/sessions.csv", params=params) as answer,
    ):
        answer.raise_for_status()
        for chunk in answer.iter_bytes():
            rows += chunk.count(b"\n")
    return rows - 1, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/metering-console-bench"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--zone", default="UTC")
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args()
    client = connect(f"chdb://{args.data.resolve()}", DATABASE)
    build(client)
    usage_rows = int(client.command(f"SELECT count() FROM {DATABASE}.usage_15m"))
    settings = ConsoleSettings(secret=SECRET, now=NOW, export_max_days=92)
    context = ConsoleContext(
        client=client,
        database=DATABASE,
        settings=settings,
        authenticator=Authenticator(settings, SECRET),
        open_handle=lambda: connect(f"chdb://{args.data.resolve()}", DATABASE),
    )
    server = ConsoleServer(create_app(context), "127.0.0.1", 0)
    host, port = server.start()
    url = f"http://{host}:{port}"
    token = issue_token(SECRET, account_id="acct-07", user="bench", role="admin", shared=False, ttl=timedelta(days=1))
    result: dict[str, Any] = {"environment": environment(), "usage_15m_rows": usage_rows, "zone": args.zone}
    try:
        params = {"range": "30d", "by": "day", "timezone": args.zone}
        runs = []
        for run in range(args.runs):
            latencies = measure_usage(url, token, args.requests, params)
            figures = {
                "p50_ms": round(statistics.median(latencies), 2),
                "p99_ms": round(quantile(latencies, 0.99), 2),
                "max_ms": round(max(latencies), 2),
            }
            runs.append(figures)
            print(f"usage run {run + 1}: {figures}")
        result["usage_30d_by_day_all_apps"] = {
            "runs": runs,
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "target_p99_ms": P99_TARGET_MS,
        }
        if not args.skip_export:
            exports = []
            for _ in range(3):
                rows, seconds = measure_export(url, token, {"from": "2026-05-31", "to": "2026-06-29"})
                exports.append({"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds)})
                print(f"export: {exports[-1]}")
            result["sessions_csv_30d_one_account"] = {
                "runs": exports,
                "rows_per_s": statistics.median(e["rows_per_s"] for e in exports),
            }
    finally:
        server.stop()
        client.close()
    path = write_result(f"console_{args.zone.replace('/', '_')}", result)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
