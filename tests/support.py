"""Test helpers: readable event builders and a naive reference implementation of the rules.

The reference is deliberately written differently from the engine (whole-history batch,
binary search for session boundaries) so that property tests compare two implementations.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from hypothesis import strategies as st

from consumers.clickhouse import Client, migrate
from pipeline.contract.decode import decode_event, to_ms
from pipeline.contract.events import Event, Rejection, format_ms
from pipeline.infra.settings import Settings, Topics
from pipeline.rules.config import MINUTE, SECOND, RulesConfig
from pipeline.rules.meter import Meter
from pipeline.rules.model import BillingSession

if TYPE_CHECKING:
    from consumers.sink import ClickHouseSink

T0 = to_ms(datetime(2026, 11, 1, 10, 0, tzinfo=UTC))
FAR_FUTURE = 2**60
_ids = itertools.count(1)

#: Gaps between a conversation's events for property tests: around the 90 s and 15 min boundaries of the rules.
GAPS = st.one_of(
    st.integers(0, 90 * SECOND),
    st.integers(90 * SECOND, 14 * MINUTE),
    st.sampled_from([15 * MINUTE - 1, 15 * MINUTE, 15 * MINUTE + 1]),
    st.integers(16 * MINUTE, 90 * MINUTE),
)


def at(offset: float | str, base: int = T0) -> int:
    """Milliseconds at ``offset`` minutes (float) or "mm:ss.fff" after ``base``."""
    if isinstance(offset, str):
        minutes, _, seconds = offset.partition(":")
        return base + int(minutes) * MINUTE + round(float(seconds or 0) * 1000)
    return base + round(offset * MINUTE)


@dataclass
class Conversation:
    """Builds the events of one conversation; times are minutes (or "mm:ss.fff") after ``start``."""

    conversation_id: str = "c-1"
    app_id: str = "support-bot"
    account_id: str = "acme"
    channel: str = "web"
    user_id: str = "u-1"
    start: int = T0
    events: list[dict[str, Any]] = field(default_factory=list)

    def _add(self, kind: str, offset: float | str, **fields: Any) -> Conversation:
        self.events.append(
            {
                "type": kind,
                "event_id": fields.pop("event_id", f"{self.conversation_id}-{next(_ids)}"),
                "occurred_at": format_ms(at(offset, self.start)),
                "account_id": self.account_id,
                "app_id": self.app_id,
                "conversation_id": self.conversation_id,
                **fields,
            }
        )
        return self

    def turn(self, speaker: str, offset: float | str, **fields: Any) -> Conversation:
        fields.setdefault("channel", self.channel)
        fields.setdefault("user_id", self.user_id)
        return self._add("conversation_turn", offset, speaker=speaker, **fields)

    def user(self, offset: float | str, **fields: Any) -> Conversation:
        return self.turn("user", offset, **fields)

    def bot(self, offset: float | str, **fields: Any) -> Conversation:
        return self.turn("bot", offset, **fields)

    def agent(self, offset: float | str, **fields: Any) -> Conversation:
        return self.turn("agent", offset, **fields)

    def transfer(self, action: str, offset: float | str, agent_id: str = "agent-1") -> Conversation:
        return self._add("agent_transfer", offset, action=action, agent_id=agent_id)


def alert(offset: float | str, app_id: str = "support-bot", account_id: str = "acme", **fields: Any) -> dict[str, Any]:
    return {
        "type": "alert_delivered",
        "event_id": fields.pop("event_id", f"alert-{next(_ids)}"),
        "occurred_at": format_ms(at(offset)),
        "account_id": account_id,
        "app_id": app_id,
        "user_id": fields.pop("user_id", "u-1"),
        "alert_id": fields.pop("alert_id", "sub-1"),
        **fields,
    }


def turn(**changes: Any) -> dict[str, Any]:
    """The events.md example turn, with ``changes`` applied (a value of ``...`` removes the field)."""
    event: dict[str, Any] = {
        "type": "conversation_turn",
        "event_id": "7f9c-01",
        "occurred_at": "2026-11-01T10:00:00.000Z",
        "account_id": "acme",
        "app_id": "support-bot",
        "conversation_id": "c-881",
        "user_id": "u-17",
        "channel": "web",
        "speaker": "user",
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not ...}


def decode(event: dict[str, Any]) -> tuple[int, Event]:
    decoded = decode_event(json.dumps(event).encode(), FAR_FUTURE)
    assert not isinstance(decoded, Rejection), decoded
    return decoded


def finished_meter(events: Iterable[dict[str, Any]], config: RulesConfig | None = None) -> Meter:
    """A meter that applied ``events`` in the given order, then end of input (outputs not drained yet)."""
    meter = Meter(config or RulesConfig())
    for ev in events:
        t, e = decode(ev)
        meter.apply(t, e)  # type: ignore[arg-type]
    meter.finish()
    return meter


def meter_run(events: Iterable[dict[str, Any]], config: RulesConfig | None = None) -> list[BillingSession]:
    """Billing sessions of ``events`` applied in the given order, then end of input."""
    return finished_meter(events, config).drain()[0]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """GET ``url``: (status, JSON body), for error statuses too (their body names the problem)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def in_time_order(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda ev: decode(ev)[0])


def counts(sessions: Sequence[BillingSession]) -> dict[str, int]:
    out = {"usage": 0, "voice": 0, "alert": 0}
    for s in sessions:
        out[s.kind] += 1
    return out


# -- reference implementation ---------------------------------------------------------------


@dataclass
class RefSegment:
    events: list[tuple[int, str, dict[str, Any]]]
    intervals: list[tuple[int, int]]

    @property
    def start(self) -> int:
        return self.events[0][0]

    @property
    def end(self) -> int:
        return self.events[-1][0]


def reference_segments(
    events: Iterable[dict[str, Any]], config: RulesConfig
) -> dict[tuple[str, str], list[RefSegment]]:
    """R1, R2, R4 by the book: dedupe, sort, cut, intervals; keyed by (app, conversation)."""
    seen: set[tuple[str, str]] = set()
    by_conv: dict[tuple[str, str], list[tuple[int, str, dict[str, Any]]]] = {}
    for ev in events:
        if ev["type"] not in ("conversation_turn", "agent_transfer"):
            continue
        if (ev["app_id"], ev["event_id"]) in seen:
            continue
        seen.add((ev["app_id"], ev["event_id"]))
        t, _ = decode(ev)
        by_conv.setdefault((ev["app_id"], ev["conversation_id"]), []).append((t, ev["event_id"], ev))
    out: dict[tuple[str, str], list[RefSegment]] = {}
    for key, evs in by_conv.items():
        evs.sort(key=lambda x: (x[0], x[1]))
        segments: list[list[tuple[int, str, dict[str, Any]]]] = []
        for item in evs:
            if segments:
                cur = segments[-1]
                last = cur[-1]
                open_ = _open_at_end(cur)
                timeout = config.app_idle_timeout_ms.get(key[0], config.idle_timeout_ms)
                limit = max(timeout, config.open_transfer_timeout_ms) if open_ else timeout
                eoc = last[2]["type"] == "conversation_turn" and last[2].get("end_of_conversation", False)
                if not eoc and item[0] - last[0] <= limit:
                    cur.append(item)
                    continue
            segments.append([item])
        out[key] = [RefSegment(s, _intervals(s)) for s in segments]
    return out


def _open_at_end(seg: list[tuple[int, str, dict[str, Any]]]) -> bool:
    open_ = False
    for _, _, ev in seg:
        if ev["type"] == "agent_transfer":
            open_ = ev["action"] == "started"
    return open_


def _intervals(seg: list[tuple[int, str, dict[str, Any]]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    since: int | None = None
    for t, _, ev in seg:
        if ev["type"] != "agent_transfer":
            continue
        if ev["action"] == "started" and since is None:
            since = t
        elif ev["action"] == "ended" and since is not None:
            out.append((since, t))
            since = None
    if since is not None:
        out.append((since, seg[-1][0]))
    return out


def bot_time_between(a: int, b: int, intervals: Sequence[tuple[int, int]]) -> int:
    agent = sum(max(0, min(b, y) - max(a, x)) for x, y in intervals)
    return (b - a) - agent


def reference_usage_starts(seg: RefSegment) -> list[int]:
    """Session k starts at the first instant whose bot time since the start is k x 15 min."""
    q = 15 * MINUTE
    bot = bot_time_between(seg.start, seg.end, seg.intervals)
    n = max(1, -(-bot // q))
    starts = [seg.start]
    for k in range(1, n):
        lo, hi = seg.start, seg.end
        while lo < hi:
            mid = (lo + hi) // 2
            if bot_time_between(seg.start, mid, seg.intervals) >= k * q:
                hi = mid
            else:
                lo = mid + 1
        starts.append(lo)
    return starts


def reference_counts(events: Sequence[dict[str, Any]], config: RulesConfig) -> dict[str, int]:
    """Usage, voice and alert session counts of ``events`` by the book."""
    out = {"usage": 0, "voice": 0, "alert": 0}
    for segs in reference_segments(events, config).values():
        for seg in segs:
            turns = [ev for _, _, ev in seg.events if ev["type"] == "conversation_turn"]
            if not any(ev["speaker"] == "user" for ev in turns) or any(ev.get("is_test") for ev in turns):
                continue
            span = seg.end - seg.start
            if turns[0]["channel"] in ("voice", "ivr"):
                out["voice"] += max(1, -(-span // (15 * MINUTE)))
            else:
                out["usage"] += len(reference_usage_starts(seg))
    seen: set[tuple[str, str]] = set()
    for ev in events:
        if ev["type"] == "alert_delivered" and (ev["app_id"], ev["event_id"]) not in seen:
            seen.add((ev["app_id"], ev["event_id"]))
            if not ev.get("is_test"):
                out["alert"] += 1
    return out


def pipeline_settings(
    kafka_bootstrap: str, chdb_path: Path, data_dir: Path, prefix: str = "it", **changes: Any
) -> Settings:
    """Settings with uuid-named topics, group and database (``<prefix>_<uuid>``), quick batches, free ports."""
    suffix = uuid.uuid4().hex[:10]
    topics = Topics(**{name: f"{value}-{suffix}" for name, value in vars(Topics()).items()})
    fields: dict[str, Any] = {
        "data_dir": data_dir,
        "kafka_bootstrap": kafka_bootstrap,
        "clickhouse_url": f"chdb://{chdb_path}",
        "clickhouse_database": f"{prefix}_{suffix}",
        "topics": topics,
        "partitions": 6,
        "app_id": f"metering-{suffix}",
        "api_port": 0,
        "metrics_port": 0,
        "idle_partition_seconds": 2.0,
        "batch_seconds": 0.2,
        "sink_batch_seconds": 0.2,
    }
    return Settings(**{**fields, **changes})


class SinkThread:
    """A sink's ``run`` in a daemon thread for the length of a ``with`` block; ``error`` keeps what it raised.

    The unit (fake consumer) and integration (real broker) sink tests differ only in how long they wait.
    """

    def __init__(self, sink: ClickHouseSink, *, assigned_within: float, joined_within: float) -> None:
        self.sink = sink
        self.assigned_within = assigned_within
        self.joined_within = joined_within
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.sink.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Self:
        self.thread.start()
        assert self.sink.wait_assigned(self.assigned_within), "the sink got no partitions"
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(self.joined_within)
        assert not self.thread.is_alive()


@contextmanager
def migrated_database(client: Client) -> Iterator[str]:
    """A uuid-named database with every migration applied, dropped on the way out (tests share one chDB)."""
    name = f"t_{uuid.uuid4().hex}"
    migrate(client, name)
    try:
        yield name
    finally:
        client.command("DROP DATABASE IF EXISTS {db:Identifier}", parameters={"db": name})
