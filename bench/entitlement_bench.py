"""The entitlement endpoint under load: per-request latency over keep-alive connections, 10k apps.

The server is what `metering entitlement` runs (``EntitlementModel`` + ``EntitlementServer``),
in a process of its own, its read model filled with 10,000 apps' `balance-state` snapshots
(Kafka is left out: it only feeds the model, off the request path). The clients are
processes, each with one HTTP/1.1 keep-alive connection, asking for random apps (1 % of
them unknown, answered 404); a request's latency is from sending it to having read the whole
answer, client overhead included, so the figures are an upper bound. Each run is measured
after a warm-up; p50/p99 are the median over the runs. Writes bench/results/entitlement.json.

    .venv/bin/python bench/entitlement_bench.py [--apps 10000] [--requests 20000] [--connections 4] [--runs 5]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import environment, write_result
from consumers.entitlement import SWITCH_INTERVAL, EntitlementModel, EntitlementServer
from pipeline.contract.events import BalanceSnapshot

P99_TARGET_MS = 5.0


def app_id(i: int) -> str:
    return f"app-{i:05d}"


def snapshot(i: int) -> bytes:
    balance = (i % 200) - 20
    return msgspec.json.encode(
        BalanceSnapshot(
            account_id=f"acct-{i % 500}",
            app_id=app_id(i),
            plan="starter",
            currency="USD",
            funds="100.00",
            usage_cost=f"{100 - balance}.00",
            alert_cost="0.00",
            voice_cost="0.00",
            usage_sessions=100 - balance,
            alert_sessions=0,
            voice_sessions=0,
            unpriced_sessions=0,
            balance=f"{balance}.00",
            threshold="50.00",
            status="depleted" if balance <= 0 else ("low" if balance <= 50 else "active"),
            entitled=balance > 0,
            agents=3,
            version=i + 1,
            updated_at=datetime(2026, 11, 22, 9, 0, tzinfo=UTC),
        )
    )


def serve(apps: int, conn: Connection) -> None:
    """The server process: the model filled with ``apps`` snapshots, then serve until told to stop."""
    model = EntitlementModel()
    for i in range(apps):
        model.apply(app_id(i).encode(), snapshot(i))
    model.ready.set()
    sys.setswitchinterval(SWITCH_INTERVAL)
    server = EntitlementServer(model, "127.0.0.1", 0).start()
    conn.send(server.httpd.server_address[1])
    conn.recv()
    server.stop()


def client(port: int, apps: int, count: int, seed: int, conn: Connection) -> None:
    """One client process with one keep-alive connection; sends back (latencies, errors)."""
    out: list[float] = []
    errors: list[str] = []
    rng = random.Random(seed)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    perf = time.perf_counter
    try:
        for _ in range(count):
            i = rng.randrange(apps) if rng.random() >= 0.01 else apps + rng.randrange(1000)
            path = f"/v1/entitlement/{app_id(i)}"
            started = perf()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            out.append(perf() - started)
            expected = 200 if i < apps else 404
            if response.status != expected or b'"entitled"' not in body:
                errors.append(f"{path}: {response.status} {body[:100]!r}")
    finally:
        connection.close()
        conn.send((out, errors))


def run_once(port: int, apps: int, requests: int, connections: int, seed: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    per = requests // connections
    pipes = [ctx.Pipe() for _ in range(connections)]
    clients = [
        ctx.Process(target=client, args=(port, apps, per, seed * 100 + c, pipes[c][1])) for c in range(connections)
    ]
    started = time.perf_counter()
    for p in clients:
        p.start()
    results = [parent.recv() for parent, _ in pipes]
    elapsed = time.perf_counter() - started
    for p in clients:
        p.join()
    errors = [e for _, errs in results for e in errs]
    samples: list[float] = sorted(x for lat, _ in results for x in lat)
    assert not errors, errors[:3]

    def pct(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1000, 3)

    return {
        "requests": len(samples),
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(samples) / elapsed),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(samples[-1] * 1000, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=20_000, help="Requests per run (all connections).")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = environment()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=serve, args=(args.apps, child), daemon=True)
    server.start()
    try:
        port = parent.recv()
        run_once(port, args.apps, 2000, args.connections, seed=0)  # warm-up
        runs = [run_once(port, args.apps, args.requests, args.connections, seed=r + 1) for r in range(args.runs)]
    finally:
        parent.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()
    p50 = statistics.median(r["p50_ms"] for r in runs)
    p99 = statistics.median(r["p99_ms"] for r in runs)
    payload = {
        "benchmark": "entitlement",
        "environment": env,
        "parameters": {
            "apps": args.apps,
            "requests_per_run": args.requests,
            "connections": args.connections,
            "runs": args.runs,
            "unknown_apps": "1 % of requests (404)",
            "server": "consumers.entitlement (ThreadingHTTPServer, HTTP/1.1 keep-alive) in its own process",
            "client": "http.client, one keep-alive connection per client process (forked per run)",
        },
        "runs": runs,
        "p50_ms": p50,
        "p99_ms": p99,
        "p99_target_ms": P99_TARGET_MS,
        "meets_target": p99 < P99_TARGET_MS,
    }
    path = write_result("entitlement", payload)
    print(f"p50 {p50} ms, p99 {p99} ms (median of {args.runs} runs; target p99 < {P99_TARGET_MS} ms) -> {path}")
    return 0 if p99 < P99_TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
