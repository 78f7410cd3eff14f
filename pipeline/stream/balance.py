"""`metering balance`: per-app prepaid balances from `billing-plans` and `billing-sessions` (R12).

A processor on the stream runtime (``pipeline.runtime``): per batch, the balance alerts, the
`balance-state` snapshots, the changelog of every changed app and the consumed offsets are
committed in one Kafka transaction, so a crash, a restart or a rebalance never charges a session twice
nor loses or repeats an alert. On assignment a partition's app states are restored from the
changelog (read committed, to the end) before any of its input is applied: replays of inputs
already counted are then duplicates of what the state remembers. Money logic is all in
``pipeline.balance``; this module moves bytes and keeps metrics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final

from pipeline.balance.ledger import BalanceConfig
from pipeline.contract.events import BalanceSnapshot
from pipeline.infra import metrics
from pipeline.infra.kafka import ensure_topics, require_co_partitioned, wait_for_broker
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings
from pipeline.runtime import Effects, PartitionStore, Record, Topology
from pipeline.runtime.command import processor_config, run_until_stopped
from pipeline.stream.balance_partition import AppRecord, BalancePartition, Input, Outputs, encode

log = logging.getLogger(__name__)

STATUSES: Final = ("active", "low", "depleted")
#: How often the processor looks for future-dated plans that came into force.
TICK_SECONDS: Final = 1.0
#: A changelog shard holds an app's sessions of one day and start hour (about 20 bytes each):
#: room for some 400,000 sessions an hour for one app.
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024


def changelog_topic(settings: Settings) -> str:
    """The processor's internal compacted changelog (named after the app id, like the workers')."""
    return f"{settings.app_id}-balance-changelog"


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-balance"


def setup_topics(settings: Settings) -> None:
    """Create what is missing; refuse input and changelog topics that are not co-partitioned."""
    topics = settings.topics
    ensure_topics(settings, [topics.plans, topics.billing_sessions, topics.balance_alerts, topics.dlq, topics.late])
    ensure_topics(settings, [topics.balance_state], config={"cleanup.policy": "compact"})
    ensure_topics(
        settings,
        [changelog_topic(settings)],
        config={"cleanup.policy": "compact", "max.message.bytes": str(MAX_RECORD_BYTES)},
    )
    names = (topics.plans, topics.billing_sessions, changelog_topic(settings))
    require_co_partitioned(settings, names, who="the balance", key="app_id")


@dataclass(frozen=True, slots=True)
class _Gauges:
    app_id: str
    account_id: str
    currency: str
    balance: float
    status: str
    unpriced: int
    #: after the app's first funds or session: before, it is being set up, has no status and pages nobody
    opened: bool


@dataclass
class _Exported:
    """The label values of an app's gauges, to remove them when they change or the app leaves."""

    account_id: str
    currency: str


class BalanceGauges:
    """The per-app gauges of this process's partitions: set from committed snapshots, removed when an app leaves."""

    def __init__(self) -> None:
        self._exported: dict[str, _Exported] = {}

    def export(self, snapshots: list[BalanceSnapshot], opened: Callable[[str], bool]) -> None:
        for snap in snapshots:
            self.set(
                _Gauges(
                    snap.app_id,
                    snap.account_id,
                    snap.currency,
                    float(snap.balance),
                    snap.status,
                    snap.unpriced_sessions,
                    opened(snap.app_id),
                )
            )

    def export_state(self, record: AppRecord) -> None:
        state = record.balance
        self.set(
            _Gauges(
                state.app_id,
                state.account_id,
                state.currency,
                float(state.balance),
                state.status,
                state.unpriced,
                state.opened,
            )
        )

    def set(self, g: _Gauges) -> None:
        app_id, account_id, currency, status = g.app_id, g.account_id, g.currency, g.status
        previous = self._exported.get(app_id)
        if previous is not None and (previous.account_id, previous.currency) != (account_id, currency):
            self.unexport(app_id)
        self._exported[app_id] = _Exported(account_id, currency)
        metrics.APP_BALANCE.labels(account_id, app_id, currency).set(g.balance)
        for name in STATUSES:
            if g.opened:
                metrics.APP_BALANCE_STATUS.labels(account_id, app_id, name).set(1 if name == status else 0)
            else:
                _remove(metrics.APP_BALANCE_STATUS.remove, account_id, app_id, name)
        metrics.APP_SESSIONS_UNPRICED.labels(account_id, app_id).set(g.unpriced)

    def unexport(self, app_id: str) -> None:
        exported = self._exported.pop(app_id, None)
        if exported is None:
            return
        _remove(metrics.APP_BALANCE.remove, exported.account_id, app_id, exported.currency)
        for name in STATUSES:
            _remove(metrics.APP_BALANCE_STATUS.remove, exported.account_id, app_id, name)
        _remove(metrics.APP_SESSIONS_UNPRICED.remove, exported.account_id, app_id)


class BalanceProcessor:
    """The balances of one partition (``BalancePartition``) as a runtime processor (``pipeline.runtime``).

    Per batch: every message applied, future-dated plans that came into force marked, then the
    alerts, dead letters, late records and `balance-state` snapshots produced and the changed
    apps' changelog records written to the store; the runtime commits them with the offsets.
    """

    def __init__(
        self, settings: Settings, partition: int, store: PartitionStore, now_ms: int, gauges: BalanceGauges
    ) -> None:
        self.settings = settings
        self.topics = settings.topics
        self.store = store
        self.gauges = gauges
        self.part = BalancePartition(
            partition,
            settings.partitions,
            plans_topic=self.topics.plans,
            sessions_topic=self.topics.billing_sessions,
            config=BalanceConfig(
                dedupe_horizon_ms=settings.rules.dedupe_horizon_ms, unlimited_plans=settings.unlimited_plans
            ),
        )
        self.part.restore(store.items(), now_ms)
        for record in self.part.apps.values():
            gauges.export_state(record)
        log.info("balance partition restored", extra=fields(partition=partition, apps=len(self.part.apps)))

    def process(self, records: Sequence[Record], now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        out = Outputs()
        for r in records:
            self.part.apply(Input(r.topic, r.partition, r.offset, r.value or None), now_ms, out)
        self._finish(now_ms, out, effects)

    def tick(self, now_ms: int, lagging: Collection[str], effects: Effects) -> None:
        if self.part.has_due(now_ms):
            self._finish(now_ms, Outputs(), effects)

    def close(self) -> None:
        for app_id in self.part.apps:
            self.gauges.unexport(app_id)

    def _finish(self, now_ms: int, out: Outputs, effects: Effects) -> None:
        topics = self.topics
        self.part.due(now_ms, out)  # a scheduled plan in force or a term ended: may cross a line (an alert)
        for alert in out.alerts:
            effects.produce(topics.balance_alerts, alert.app_id.encode(), encode(alert))
        for dead in out.dead:
            effects.produce(topics.dlq, None, encode(dead))
        for late in out.late:
            effects.produce(topics.late, late.app_id.encode(), encode(late))
        snapshots, records = self.part.take_changes(now_ms, self.settings.unlimited_plans)
        for snap in snapshots:
            effects.produce(topics.balance_state, snap.app_id.encode(), encode(snap))
        for key, value in records:
            if value is None:
                self.store.delete(key)
            else:
                self.store.put(key, value)

        def committed() -> None:
            _observe(out)
            self.gauges.export(snapshots, self._opened)

        effects.on_commit.append(committed)

    def _opened(self, app_id: str) -> bool:
        record = self.part.apps.get(app_id)
        return record is None or record.balance.opened


def _observe(out: Outputs) -> None:
    for kind, n in out.charged.items():
        metrics.SESSIONS_CHARGED.labels(kind).inc(n)
    for (kind, currency), amount in out.cost.items():
        metrics.COST.labels(kind, currency).inc(float(amount))
    for (kind, currency), amount in out.reversed.items():
        metrics.COST_REVERSED.labels(kind, currency).inc(float(amount))
    for name, n in out.duplicates.items():
        metrics.BALANCE_DUPLICATES.labels(name).inc(n)
    for (topic, code), n in out.invalid.items():
        metrics.EVENTS_INVALID.labels(topic, code).inc(n)
    for alert in out.alerts:
        metrics.BALANCE_ALERTS.labels(alert.state).inc()
    if out.late:
        metrics.BALANCE_SESSIONS_LATE.inc(len(out.late))
    if out.backdated:
        metrics.BALANCE_PLANS_BACKDATED.inc(out.backdated)


def topology(settings: Settings, gauges: BalanceGauges) -> Topology:
    """`billing-sessions` leads the assignment, `billing-plans` (co-partitioned by app id) follows."""

    def open_partition(partition: int, store: PartitionStore, now_ms: int) -> BalanceProcessor:
        return BalanceProcessor(settings, partition, store, now_ms, gauges)

    topics = settings.topics
    return Topology(
        "balance",
        (topics.billing_sessions, topics.plans),
        changelog_topic(settings),
        open_partition,
        watch_lag=False,  # no event-time clock: plans in force are looked for on the wall clock
    )


def _remove(remove: Callable[..., None], *labels: str) -> None:
    with contextlib.suppress(KeyError):
        remove(*labels)


def run_balance(settings: Settings, metrics_port: int | None = None, instance: int = 0) -> int:
    """`metering balance`: run until SIGINT/SIGTERM; the batch in hand is committed or aborted."""
    wait_for_broker(settings)
    setup_topics(settings)
    transactional_id = f"{settings.app_id}-balance-{instance}"
    config = processor_config(
        settings,
        role="balance",
        group=group_id(settings),
        transactional_id=transactional_id,
        static_member=True,  # a restarted instance takes its partitions back at once
        state_dir=settings.data_dir / "balance-state" / transactional_id,
        tick_seconds=TICK_SECONDS,
        max_record_bytes=MAX_RECORD_BYTES,
    )
    return run_until_stopped(
        settings,
        config,
        [topology(settings, BalanceGauges())],
        name="balance",
        metrics_port=metrics_port,
        on_batch=lambda _, seconds: metrics.BALANCE_BATCH_SECONDS.observe(seconds),
        on_abort=metrics.BALANCE_ABORTS.inc,
        fenced_exit=1,
    )
