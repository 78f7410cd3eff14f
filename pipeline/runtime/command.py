"""What `metering worker`, `balance` and `orders` do around the runtime: one way to start and stop a processor."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.infra import metrics
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings
from pipeline.runtime.engine import FencedError, RuntimeConfig, StreamRuntime
from pipeline.runtime.processor import Topology

log = logging.getLogger(__name__)


def processor_config(
    settings: Settings,
    *,
    role: str,
    group: str,
    transactional_id: str,
    static_member: bool,
    state_dir: Path,
    tick_seconds: float,
    store: str = "memory",
    max_record_bytes: int = 1 << 20,
    transaction_timeout_ms: int = 60_000,
) -> RuntimeConfig:
    """A processor's runtime configuration, its batch and transaction sizes from the settings."""
    return RuntimeConfig(
        group=group,
        transactional_id=transactional_id,
        static_member=static_member,
        store=store,
        state_dir=state_dir,
        batch_size=settings.batch_size,
        batch_seconds=settings.batch_seconds,
        transaction_seconds=settings.transaction_seconds,
        tick_seconds=tick_seconds,
        role=role,
        max_record_bytes=max_record_bytes,
        transaction_timeout_ms=transaction_timeout_ms,
    )


def run_until_stopped(
    settings: Settings,
    config: RuntimeConfig,
    topologies: Sequence[Topology],
    *,
    name: str,
    metrics_port: int | None,
    on_batch: Callable[[int, float], None],
    on_abort: Callable[[], None],
    fenced_exit: int,
) -> int:
    """Serve the metrics, run until SIGINT/SIGTERM (the batch in hand is committed, then the process leaves the
    group); a fenced instance (another took its transactional id) stops without committing: ``fenced_exit``."""
    port = metrics.serve(settings.metrics_port if metrics_port is None else metrics_port, settings.api_host)
    log.info(f"{name} metrics", extra=fields(url=f"http://{settings.api_host}:{port}/metrics"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runtime = StreamRuntime(settings, config, topologies, on_batch=on_batch, on_abort=on_abort)
    try:
        runtime.run(stop)
    except FencedError as exc:
        log.error(f"{name} fenced: stopping without committing", extra=fields(error=str(exc)))
        return fenced_exit
    return 0
