"""`metering worker`: one stream-processing process; start several in one group to scale out."""

from __future__ import annotations

import asyncio
import logging

import faust
import uvloop

from pipeline import metrics
from pipeline.kafka import ensure_topics, wait_for_broker
from pipeline.logs import fields
from pipeline.settings import Settings
from pipeline.stream.app import MeteringApp, changelog_topics

log = logging.getLogger(__name__)


def run_worker(settings: Settings, metrics_port: int | None = None) -> None:
    """Run until SIGINT/SIGTERM; faust finishes the batch in hand and commits before exiting."""
    wait_for_broker(settings)
    topics = settings.topics
    ensure_topics(settings, [topics.ticks], config={"retention.ms": str(3_600_000)})
    ensure_topics(settings, [topics.turns, topics.transfers, topics.alerts, topics.plans])
    ensure_topics(settings, [topics.billing_sessions, topics.dlq, topics.late])
    ensure_topics(settings, changelog_topics(settings), config={"cleanup.policy": "compact"})
    port = metrics.serve(settings.metrics_port if metrics_port is None else metrics_port, settings.api_host)
    log.info("worker metrics", extra=fields(url=f"http://{settings.api_host}:{port}/metrics"))
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    metering = MeteringApp(settings)
    worker = faust.Worker(metering.app, loglevel="warn", redirect_stdouts=False, override_logging=False)
    try:
        worker.execute_from_commandline()
    finally:
        metering.close()
