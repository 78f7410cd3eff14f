"""Live demo traffic for `metering run --demo`: the pipeline visibly at work, on a laptop.

The conversations are ``devtools.traffic``'s, paced against the wall clock (event time is now),
so usage, open conversations and billing sessions move on the dashboards as they would in
production. Each app gets a plan and funds first (some apps little, so a balance alert shows
up within minutes), and about one message in ``garbage_every`` is garbage, so the
dead-letter topic has something to show too.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import msgspec
from confluent_kafka import KafkaError, Message, Producer

from devtools import traffic
from pipeline.balance.catalog import PlanCatalog, load_catalog
from pipeline.contract.events import format_ms, ms_to_datetime
from pipeline.infra.kafka import producer_config
from pipeline.infra.logs import fields
from pipeline.infra.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_RATE: Final = 50.0
DEFAULT_GARBAGE_EVERY: Final = 2000
#: Plan events are dated this much before the traffic starts, so they are in force for its first sessions.
PLAN_LEAD_MS: Final = 10_000

#: Plans with a term start this long before the traffic, so the console shows one expiring soon.
TERM_PLAN_AGE_MS: Final = 350 * 24 * 3600 * 1000
#: Opening balances, cycled over the apps; 60.00 is just over the default low threshold of 50.00.
FUNDS: Final = ("1000.00", "250.00", "60.00", "5000.00")

#: Payloads the workers must dead-letter, one per rejection code decode_event can give.
GARBAGE: Final = (
    b"{this is not json",
    b'["an", "array", "not", "an", "object"]',
    b'{"type": "typing_indicator", "event_id": "demo-garbage", "occurred_at": "%s", '
    b'"account_id": "acct-00", "app_id": "app-00-0"}',
    b'{"type": "conversation_turn", "event_id": "demo-garbage", "occurred_at": "%s", '
    b'"account_id": "acct-00", "app_id": "app-00-0", "conversation_id": "c-garbage", "speaker": "user"}',
)


class ProducerLike(Protocol):
    """The part of ``confluent_kafka.Producer`` the demo uses; unit tests pass a fake."""

    def produce(self, topic: str, value: bytes, key: str | None = None) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


ProducerFactory = Callable[[dict[str, Any]], ProducerLike]


@dataclass(frozen=True)
class DemoCounts:
    """Messages handed to the producer so far, by kind and topic; ``failed`` were not delivered."""

    events: int = 0
    plan_events: int = 0
    garbage: int = 0
    failed: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return self.events + self.plan_events + self.garbage


class DemoTraffic:
    """Realistic live traffic at about ``rate`` events/s, from a background thread until ``stop()``.

    ``seed`` fixes the traffic for tests; by default every run draws its own, because a demo
    restarted with the same seed would send the same event ids again and see them all
    deduplicated. The producer is made in ``start()``, not here. Computing the warm-up of
    ``traffic.live`` takes a moment (about 0.4 s at 50 events/s), so what fell due meanwhile
    goes out at once, slightly late, as after any pause.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        rate: float = DEFAULT_RATE,
        seed: int | None = None,
        garbage_every: int = DEFAULT_GARBAGE_EVERY,
        producer_factory: ProducerFactory | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"demo rate must be greater than 0 events/s, not {rate}")
        if garbage_every < 0:
            raise ValueError(f"garbage_every must be 0 (no garbage) or more, not {garbage_every}")
        self.settings = settings
        self.rate = rate
        self.seed = secrets.randbits(32) if seed is None else seed
        self.garbage_every = garbage_every
        self._factory: ProducerFactory = producer_factory or Producer
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: ProducerLike | None = None
        self._events = 0
        self._plans = 0
        self._garbage = 0
        self._failed = 0
        self._by_topic: Counter[str] = Counter()
        self.error: BaseException | None = None

    def __enter__(self) -> DemoTraffic:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def counts(self) -> DemoCounts:
        return DemoCounts(
            events=self._events,
            plan_events=self._plans,
            garbage=self._garbage,
            failed=self._failed,
            by_topic=dict(self._by_topic),
        )

    def start(self) -> None:
        """Make the producer and start sending: the plans and funds first, then the conversations."""
        if self._thread is not None:
            raise RuntimeError("this demo traffic was already started; make a new DemoTraffic to start again")
        config = producer_config(
            self.settings,
            **{
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
                "logger": logging.getLogger("librdkafka"),
                "client.id": "metering-demo",
            },
        )
        self._producer = self._factory(config)
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)
        self._thread.start()
        log.info(
            "demo traffic started",
            extra=fields(rate=self.rate, apps=len(traffic.apps()), seed=self.seed, garbage_every=self.garbage_every),
        )

    def stop(self, timeout: float = 10.0) -> DemoCounts:
        """Stop sending, wait up to ``timeout`` s for what is queued to be delivered; the final counts."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._producer is not None:
            left = self._producer.flush(timeout)
            if left:
                log.warning("demo traffic stopped with messages undelivered", extra=fields(undelivered=left))
        counts = self.counts
        log.info(
            "demo traffic stopped",
            extra=fields(
                events=counts.events, plan_events=counts.plan_events, garbage=counts.garbage, failed=counts.failed
            ),
        )
        return counts

    def _run(self) -> None:
        try:
            start_ms = int(self._clock() * 1000)
            self._send_plans(start_ms)
            self._send_traffic(start_ms)
        except Exception as exc:  # the thread must not die silently: `metering run` checks .error
            self.error = exc
            log.exception("demo traffic stopped by an error", extra=fields(error=str(exc)))

    def _send_plans(self, start_ms: int) -> None:
        catalog = load_catalog(self.settings.plan_catalog)
        for event in plan_events(start_ms - PLAN_LEAD_MS, self.seed, catalog):
            if not self._send(self.settings.topics.plans, traffic.encode(event), event["app_id"]):
                return
            self._plans += 1

    def _send_traffic(self, start_ms: int) -> None:
        topics = self.settings.topics
        assert self._producer is not None
        poll = self._producer.poll
        garbage_rng = random.Random(self.seed ^ 0x5EED)
        stream = traffic.live(start_ms, self.rate, self.seed, conversation_prefix=f"conv-{self.seed:08x}-")
        for due_ms, event in stream:
            poll(0)
            delay = due_ms / 1000 - self._clock()
            if self._stopping.wait(delay) if delay > 0 else self._stopping.is_set():
                return
            kind = event["type"]
            key = event["conversation_id"] if kind in ("conversation_turn", "agent_transfer") else event["app_id"]
            if not self._send(topics.of_type(kind), traffic.encode(event), key):
                return
            self._events += 1
            if self.garbage_every and garbage_rng.random() * self.garbage_every < 1:
                if not self._send(topics.turns, garbage(garbage_rng, due_ms), None):
                    return
                self._garbage += 1

    def _send(self, topic: str, value: bytes, key: str | None) -> bool:
        """Hand one message to the producer; False if told to stop while its queue was full."""
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(topic, value, key)
                break
            except BufferError:  # a broker that is away: wait for the queue instead of growing it
                if self._stopping.wait(0.1):
                    return False
                self._producer.poll(0)
        self._by_topic[topic] += 1
        return True

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        self._failed += 1
        if self._failed == 1 or not self._failed % 1000:
            log.warning(
                "demo traffic not delivered", extra=fields(topic=msg.topic(), error=err.str(), failed=self._failed)
            )


def plan_events(at_ms: int, seed: int, catalog: PlanCatalog | None = None) -> Iterator[dict[str, Any]]:
    """A ``plan_changed`` (from the catalogue, plans taken in turn) and a ``funds_added`` for every app of
    the traffic (billing-plans, keyed by app). A plan with a term started 350 days ago: it expires soon."""
    catalog = catalog or load_catalog()
    names = catalog.names
    for i, (account, app) in enumerate(traffic.apps()):
        chosen = catalog.plans[names[i % len(names)]]
        started = at_ms - TERM_PLAN_AGE_MS if chosen.term_months else at_ms
        plan = chosen.event(
            event_id=f"demo-{seed:08x}-plan-{app}",
            occurred_at=ms_to_datetime(started),
            account_id=account,
            app_id=app,
            effective_at=ms_to_datetime(started),
        )
        yield msgspec.to_builtins(plan)
        yield {
            "type": "funds_added",
            "event_id": f"demo-{seed:08x}-funds-{app}",
            "occurred_at": format_ms(at_ms),
            "account_id": account,
            "app_id": app,
            "amount": FUNDS[i % len(FUNDS)],
            "currency": "USD",
        }


def garbage(rng: random.Random, at_ms: int) -> bytes:
    """One payload the workers must dead-letter (bad JSON, not an object, unknown type, missing fields)."""
    payload = rng.choice(GARBAGE)
    return payload % format_ms(at_ms).encode() if b"%s" in payload else payload
