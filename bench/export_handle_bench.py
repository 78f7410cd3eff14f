"""Why an export takes a database handle of its own: sink inserts during a slow export, shared vs own handle.

Embedded chDB through clickhouse-connect: each client owns one chDB connection and a lock that
serializes its calls, and a stream holds that lock until it is read to the end. An export that
streamed on the sink's client would hold the sink's inserts for as long as the slowest download.
This measures it: one thread inserts a small block every 50 ms (as the sink does) while another
streams a 1,000,000-row export read slowly (a 2 ms pause per 64 KiB), first on the same client,
then on a client of its own (another connection to the same engine, what ``own_handle`` opens).
Prints the inserts' latencies in both cases. (Against a server each client has its own HTTP
connection pool, so an export on its own client never takes the sink's connections either.)

    .venv/bin/python bench/export_handle_bench.py [--data /tmp/metering-export-handle-bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sql
from bench.harness import environment, quantile, write_result
from consumers.clickhouse import Client, connect, migrate

ROWS = 1_000_000


def fill(client: Client) -> None:
    migrate(client, "metering")
    if int(client.command("SELECT count() FROM metering.billing_sessions")) >= ROWS:
        return
    client.command(
        f"""
        INSERT INTO metering.billing_sessions
            (account_id, app_id, billing_session_id, kind, channel, user_id, conversation_id,
             conversation_session_id, session_index, started_at, ended_at, bot_ms, agent_ms, alert_id, schema_version)
        SELECT 'acct-big', concat('app-', toString(number % 50)), toString(generateUUIDv4(number)), 'usage', 'web',
               'u', concat('c-', toString(number)), toString(generateUUIDv4(number + 1)), 0,
               toDateTime64('2026-05-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 2000),
               toDateTime64('2026-05-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 2000 + 60000),
               60000, 0, NULL, '1'
        FROM numbers({ROWS})
        """
    )


def run(sink: Client, export: Client) -> dict[str, float]:
    params = {
        "database": "metering",
        "account": "acct-big",
        "apps": [],
        "start": datetime(2026, 5, 1, tzinfo=UTC),
        "end": datetime(2026, 6, 1, tzinfo=UTC),
    }
    stop = threading.Event()
    latencies: list[float] = []

    def inserts() -> None:
        n = 0
        while not stop.is_set():
            started = time.perf_counter()
            sink.command(
                "INSERT INTO metering.billing_sessions (account_id, app_id, billing_session_id, kind, user_id, "
                "session_index, started_at, ended_at, schema_version) VALUES "
                f"('acct-live', 'a', 'live-{time.time_ns()}-{n}', 'usage', 'u', 0, now64(3), now64(3), '1')"
            )
            latencies.append((time.perf_counter() - started) * 1000)
            n += 1
            time.sleep(0.05)

    thread = threading.Thread(target=inserts, daemon=True)
    thread.start()
    time.sleep(0.5)
    started = time.perf_counter()
    raw = export.raw_stream(sql.query("console_sessions_export"), parameters=params, fmt="CSV")
    rows = 0
    while chunk := raw.read(65536):
        rows += chunk.count(b"\n")
        time.sleep(0.002)
    raw.close()
    seconds = time.perf_counter() - started
    stop.set()
    thread.join()
    return {
        "export_rows": rows,
        "export_seconds": round(seconds, 1),
        "inserts": len(latencies),
        "insert_p50_ms": round(statistics.median(latencies), 1),
        "insert_p99_ms": round(quantile(latencies, 0.99), 1),
        "insert_max_ms": round(max(latencies), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/metering-export-handle-bench"))
    args = parser.parse_args()
    url = f"chdb://{args.data.resolve()}"
    sink = connect(url, "metering")
    fill(sink)
    shared = run(sink, sink)
    print(f"export on the sink's own client: {shared}")
    own = connect(url, "metering")
    separate = run(sink, own)
    own.close()
    print(f"export on a handle of its own:   {separate}")
    path = write_result("export_handle", {"environment": environment(), "shared": shared, "own_handle": separate})
    print(f"written {path}")
    sink.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
