"""One settings object for every process, read from the environment once and validated.

Only the CLI calls ``Settings.from_env``; everything else receives the object (or the part it
needs), so no module reads the environment behind the user's back.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import quote

from console.settings import ConsoleSettings, read_console_settings
from pipeline.events import DEFAULT_TOPIC_OF_TYPE
from pipeline.rules.attribution import UnknownZoneError, zone
from pipeline.rules.config import DAY, MINUTE, SECOND, RulesConfig, RulesConfigError, check_idle_timeout

ROOT: Final = Path(__file__).resolve().parents[1]
PREFIX: Final = "METERING_"

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names the variable and what to do."""


@dataclass(frozen=True)
class Topics:
    turns: str = "conversation-turns"
    transfers: str = "agent-transfers"
    alerts: str = "alerts-delivered"
    plans: str = "billing-plans"
    billing_sessions: str = "billing-sessions"
    dlq: str = "metering-dlq"
    late: str = "metering-late"
    balance_alerts: str = "balance-alerts"
    balance_state: str = "balance-state"
    #: the console's plan model and orders (compacted, keyed by account_id)
    accounts: str = "billing-accounts"
    orders: str = "billing-orders"

    def of_type(self, event_type: str) -> str:
        """The topic of an input type, as configured (KeyError for a type the contract does not have)."""
        default = DEFAULT_TOPIC_OF_TYPE[event_type]
        return {
            "conversation-turns": self.turns,
            "agent-transfers": self.transfers,
            "alerts-delivered": self.alerts,
            "billing-plans": self.plans,
            "billing-accounts": self.accounts,
        }[default]

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.turns, self.transfers, self.alerts, self.plans)

    @property
    def all(self) -> tuple[str, ...]:
        return (
            *self.inputs,
            self.billing_sessions,
            self.dlq,
            self.late,
            self.balance_alerts,
            self.balance_state,
            self.accounts,
            self.orders,
        )


@dataclass(frozen=True)
class Settings:
    data_dir: Path = ROOT / "var"
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_config: Mapping[str, str] = field(default_factory=dict)
    clickhouse_url: str = ""
    clickhouse_database: str = "metering"
    topics: Topics = field(default_factory=Topics)
    partitions: int = 6
    replication_factor: int = 1
    rules: RulesConfig = field(default_factory=RulesConfig)
    idle_partition_seconds: float = 30.0
    max_clock_skew_seconds: float = 0.0
    state_store: str = "memory"
    app_id: str = "metering"
    workers: int = 1
    batch_size: int = 5000
    batch_seconds: float = 0.5
    #: With a backlog, batches join the open Kafka transaction until it is this old (0: one per batch).
    transaction_seconds: float = 1.0
    sink_batch_size: int = 5000
    sink_batch_seconds: float = 1.0
    api_host: str = "127.0.0.1"
    api_port: int = 8470
    metrics_port: int = 9470
    log_level: str = "INFO"
    log_format: str = "auto"
    timezone: str = "UTC"
    #: balances (R12): plans without prepaid limit, the entitlement endpoint, the alert webhook
    unlimited_plans: frozenset[str] = frozenset()
    entitlement_port: int = 8471
    webhook_url: str = ""
    webhook_secret: str = ""
    #: Whether ``kafka_bootstrap`` is to be used as given (METERING_KAFKA_BOOTSTRAP set, or set in code).
    #: Unset in the environment, `metering run` starts the data directory's own broker (on
    #: ``local_kafka_port`` if free) and the other commands find it there.
    kafka_bootstrap_given: bool = field(default=True, compare=False)
    local_kafka_port: int = 9092
    #: the plan catalogue the console offers (None: the one shipped in pipeline/balance/catalog.toml)
    plan_catalog: Path | None = None
    #: the seller named on invoices (the order processor writes it into each invoice as issued)
    invoice_seller: str = "Metering"
    #: the Billing console (console/): token verification, "now", export limit
    console: ConsoleSettings = field(default_factory=ConsoleSettings)

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")

    def with_clickhouse_default(self) -> Settings:
        if self.clickhouse_url:
            return self
        return replace(self, clickhouse_url=f"chdb://{quote(str((self.data_dir / 'clickhouse').resolve()))}")

    def to_env(self) -> dict[str, str]:
        """The ``METERING_*`` variables that give these settings: how child processes inherit them."""
        r = self.rules
        env = {
            "DATA_DIR": str(self.data_dir),
            "KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CLICKHOUSE_URL": self.clickhouse_url,
            "CLICKHOUSE_DATABASE": self.clickhouse_database,
            "PARTITIONS": str(self.partitions),
            "REPLICATION_FACTOR": str(self.replication_factor),
            "IDLE_TIMEOUT_MINUTES": str(r.idle_timeout_ms // MINUTE),
            "ALLOWED_LATENESS_SECONDS": repr(r.allowed_lateness_ms / SECOND),
            "OPEN_TRANSFER_TIMEOUT_MINUTES": str(r.open_transfer_timeout_ms // MINUTE),
            "DEDUPE_HORIZON_DAYS": repr(r.dedupe_horizon_ms / DAY),
            "IDLE_PARTITION_SECONDS": str(self.idle_partition_seconds),
            "MAX_CLOCK_SKEW_SECONDS": str(self.max_clock_skew_seconds),
            "STATE_STORE": self.state_store,
            "APP_ID": self.app_id,
            "WORKERS": str(self.workers),
            "BATCH_SIZE": str(self.batch_size),
            "BATCH_SECONDS": str(self.batch_seconds),
            "TRANSACTION_SECONDS": str(self.transaction_seconds),
            "SINK_BATCH_SIZE": str(self.sink_batch_size),
            "SINK_BATCH_SECONDS": str(self.sink_batch_seconds),
            "API_HOST": self.api_host,
            "API_PORT": str(self.api_port),
            "METRICS_PORT": str(self.metrics_port),
            "LOG_LEVEL": self.log_level,
            "LOG_FORMAT": self.log_format,
            "TIMEZONE": self.timezone,
            "UNLIMITED_PLANS": ",".join(sorted(self.unlimited_plans)),
            "ENTITLEMENT_PORT": str(self.entitlement_port),
            "WEBHOOK_URL": self.webhook_url,
            "WEBHOOK_SECRET": self.webhook_secret,
            "LOCAL_KAFKA_PORT": str(self.local_kafka_port),
            "PLAN_CATALOG": "" if self.plan_catalog is None else str(self.plan_catalog),
            "INVOICE_SELLER": self.invoice_seller,
        }
        if r.app_idle_timeout_ms:
            env["APP_IDLE_TIMEOUTS"] = ",".join(f"{a}={ms // MINUTE}" for a, ms in r.app_idle_timeout_ms.items())
        if self.kafka_config:
            env["KAFKA_CONFIG"] = ",".join(f"{k}={v}" for k, v in self.kafka_config.items())
        for name in Topics.__dataclass_fields__:
            env[f"TOPIC_{name.upper()}"] = getattr(self.topics, name)
        return {**{PREFIX + k: v for k, v in env.items()}, **self.console.to_env()}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``METERING_*`` variables; raise SettingsError naming every wrong one."""
        env = os.environ if env is None else env
        reader = _Reader(env)
        base = cls()
        defaults = base.rules
        try:
            rules = RulesConfig(
                idle_timeout_ms=reader.get("IDLE_TIMEOUT_MINUTES", _idle_minutes, 15) * MINUTE,
                app_idle_timeout_ms=reader.get("APP_IDLE_TIMEOUTS", _app_minutes, {}),
                allowed_lateness_ms=reader.get("ALLOWED_LATENESS_SECONDS", _ms(SECOND), defaults.allowed_lateness_ms),
                open_transfer_timeout_ms=reader.get(
                    "OPEN_TRANSFER_TIMEOUT_MINUTES", _at_least_minutes(5), defaults.open_transfer_timeout_ms
                ),
                dedupe_horizon_ms=reader.get("DEDUPE_HORIZON_DAYS", _ms(DAY), defaults.dedupe_horizon_ms),
            )
        except RulesConfigError as exc:
            reader.errors.append(f"billing rules: {exc}")
            rules = defaults
        topics = Topics(
            **{
                name: reader.get(f"TOPIC_{name.upper()}", _topic, getattr(Topics(), name))
                for name in Topics.__dataclass_fields__
            }
        )
        settings = cls(
            data_dir=reader.get("DATA_DIR", Path, base.data_dir),
            kafka_bootstrap=reader.get("KAFKA_BOOTSTRAP", _bootstrap, base.kafka_bootstrap),
            kafka_config=reader.get("KAFKA_CONFIG", _pairs, {}),
            clickhouse_url=reader.get("CLICKHOUSE_URL", _clickhouse_url, ""),
            clickhouse_database=reader.get("CLICKHOUSE_DATABASE", _database, base.clickhouse_database),
            topics=topics,
            partitions=reader.get("PARTITIONS", _positive_int, base.partitions),
            replication_factor=reader.get("REPLICATION_FACTOR", _positive_int, base.replication_factor),
            rules=rules,
            idle_partition_seconds=reader.get("IDLE_PARTITION_SECONDS", _positive_float, base.idle_partition_seconds),
            max_clock_skew_seconds=reader.get(
                "MAX_CLOCK_SKEW_SECONDS", _non_negative_float, base.max_clock_skew_seconds
            ),
            state_store=reader.get("STATE_STORE", _choice("memory", "rocksdb"), base.state_store),
            app_id=reader.get("APP_ID", _identifier, base.app_id),
            workers=reader.get("WORKERS", _positive_int, base.workers),
            batch_size=reader.get("BATCH_SIZE", _positive_int, base.batch_size),
            batch_seconds=reader.get("BATCH_SECONDS", _positive_float, base.batch_seconds),
            transaction_seconds=reader.get("TRANSACTION_SECONDS", _non_negative_float, base.transaction_seconds),
            sink_batch_size=reader.get("SINK_BATCH_SIZE", _positive_int, base.sink_batch_size),
            sink_batch_seconds=reader.get("SINK_BATCH_SECONDS", _positive_float, base.sink_batch_seconds),
            api_host=reader.get("API_HOST", str, base.api_host),
            api_port=reader.get("API_PORT", _port, base.api_port),
            metrics_port=reader.get("METRICS_PORT", _port, base.metrics_port),
            log_level=reader.get("LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR"), base.log_level),
            log_format=reader.get("LOG_FORMAT", _choice("auto", "json", "console"), base.log_format),
            timezone=reader.get("TIMEZONE", _zone, base.timezone),
            unlimited_plans=reader.get("UNLIMITED_PLANS", _names, base.unlimited_plans),
            entitlement_port=reader.get("ENTITLEMENT_PORT", _port, base.entitlement_port),
            webhook_url=reader.get("WEBHOOK_URL", _http_url, base.webhook_url),
            webhook_secret=reader.get("WEBHOOK_SECRET", str, base.webhook_secret),
            kafka_bootstrap_given=bool(env.get(PREFIX + "KAFKA_BOOTSTRAP", "").strip()),
            local_kafka_port=reader.get("LOCAL_KAFKA_PORT", _port, base.local_kafka_port),
            plan_catalog=reader.get("PLAN_CATALOG", _catalog, base.plan_catalog),
            invoice_seller=reader.get("INVOICE_SELLER", _seller, base.invoice_seller),
            console=_console(env, reader),
        )
        if reader.errors:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(reader.errors))
        return settings.with_clickhouse_default()


def _console(env: Mapping[str, str], reader: _Reader) -> ConsoleSettings:
    console, errors = read_console_settings(env)
    reader.errors.extend(errors)
    return console


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.env.get(PREFIX + name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, RulesConfigError, UnknownZoneError) as exc:
            self.errors.append(f"{PREFIX}{name}={raw!r}: {exc}")
            return default


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _non_negative_float(raw: str) -> float:
    value = _float(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _ms(unit_ms: int) -> Callable[[str], int]:
    """A non-negative duration in ``unit_ms`` units, to the millisecond."""

    def parse(raw: str) -> int:
        return round(_non_negative_float(raw) * unit_ms)

    return parse


def _at_least_minutes(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        minutes = _int(raw)
        if minutes < minimum:
            raise ValueError(f"must be at least {minimum} minutes")
        return minutes * MINUTE

    return parse


def _positive_float(raw: str) -> float:
    value = _float(raw)
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _port(raw: str) -> int:
    value = _int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("a port is 0 (any free port) to 65535")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        for option in options:
            if raw.lower() == option.lower():
                return option
        raise ValueError(f"expected one of {', '.join(options)}")

    return parse


def _identifier(raw: str) -> str:
    if not raw.isascii() or not raw.replace("_", "").replace("-", "").isalnum():
        raise ValueError("use ASCII letters, digits, '-' and '_' only")
    return raw


def _database(raw: str) -> str:
    # the client's own rule; imported on use because the ClickHouse client is slow to import
    from consumers.clickhouse.client import check_database_name  # noqa: PLC0415
    from consumers.clickhouse.errors import ClickHouseConfigError  # noqa: PLC0415

    try:
        return check_database_name(raw)
    except ClickHouseConfigError as exc:
        raise ValueError(str(exc)) from None


def _topic(raw: str) -> str:
    if raw in (".", "..") or len(raw) > 249 or not all(c.isascii() and (c.isalnum() or c in "._-") for c in raw):
        raise ValueError("a Kafka topic name is up to 249 ASCII letters, digits, '.', '_' and '-' (not . or ..)")
    return raw


def _bootstrap(raw: str) -> str:
    for server in raw.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("expected host:port[,host:port...], e.g. 127.0.0.1:9092")
    return raw


def _pairs(raw: str) -> dict[str, str]:
    """``key=value`` pairs separated by commas: librdkafka settings passed through (e.g. SASL)."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("expected key=value[,key=value...]")
        out[key.strip()] = value.strip()
    return out


def _idle_minutes(raw: str) -> int:
    minutes = _int(raw)
    check_idle_timeout(minutes * MINUTE, "idle timeout")
    return minutes


def _app_minutes(raw: str) -> dict[str, int]:
    """``app=minutes,app2=minutes``: per-app idle timeouts."""
    return {app: _idle_minutes(minutes) * MINUTE for app, minutes in _pairs(raw).items()}


def _clickhouse_url(raw: str) -> str:
    from consumers.clickhouse.client import parse_url  # noqa: PLC0415 - see _database
    from consumers.clickhouse.errors import ClickHouseConfigError  # noqa: PLC0415

    try:
        parse_url(raw)
    except ClickHouseConfigError as exc:
        raise ValueError(str(exc).removeprefix(f"{PREFIX}CLICKHOUSE_URL={raw!r}: ")) from None
    return raw


def _zone(raw: str) -> str:
    zone(raw)
    return raw


def _names(raw: str) -> frozenset[str]:
    """Comma-separated names (plan names): blanks around each are ignored, none may be empty."""
    names = [name.strip() for name in raw.split(",")]
    if not all(names):
        raise ValueError("expected name[,name...] with no empty name")
    return frozenset(names)


def _catalog(raw: str) -> Path:
    """A plan catalogue file that loads (pipeline.balance.catalog): checked now, not at the first request."""
    from pipeline.balance.catalog import CatalogError, load_catalog  # noqa: PLC0415 - see _database

    path = Path(raw)
    try:
        load_catalog(path)
    except CatalogError as exc:
        raise ValueError(str(exc)) from None
    return path


def _seller(raw: str) -> str:
    if len(raw) > 200:
        raise ValueError("at most 200 characters: the seller's name as invoices show it")
    return raw


def _http_url(raw: str) -> str:
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
        raise ValueError("expected an http:// or https:// URL with a host, e.g. https://hooks.example.com/metering")
    return raw
