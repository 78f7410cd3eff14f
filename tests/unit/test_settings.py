"""Settings: every ``METERING_*`` variable read, validated up front, and written back by ``to_env``.

A wrong setting fails at start-up with one ``SettingsError`` that names every wrong variable and
its rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.clickhouse import parse_url
from consumers.clickhouse.client import check_database_name
from consumers.clickhouse.errors import ClickHouseConfigError
from pipeline.balance.catalog import DEFAULT_CATALOG
from pipeline.infra.kafka import consumer_config
from pipeline.infra.settings import PREFIX, ROOT, ConsoleSettings, Settings, SettingsError, Topics
from pipeline.rules.config import DAY, HOUR, MINUTE, SECOND, RulesConfig

Getter = Callable[[Settings], Any]


def read(**variables: str) -> Settings:
    """Settings from ``METERING_<name>`` variables given by name only."""
    return Settings.from_env({PREFIX + name: value for name, value in variables.items()})


def error_of(**variables: str) -> str:
    with pytest.raises(SettingsError) as info:
        read(**variables)
    return str(info.value)


def error_lines(message: str) -> list[str]:
    """The lines of a SettingsError after its heading, one per wrong setting."""
    heading, *lines = message.splitlines()
    assert heading == "invalid settings:"
    return [line.strip() for line in lines]


# -- defaults -----------------------------------------------------------------------------


def test_no_variables_give_the_documented_defaults() -> None:
    s = Settings.from_env({})
    assert s.data_dir == ROOT / "var"
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.kafka_config == {}
    assert s.clickhouse_database == "metering"
    assert s.topics == Topics(
        turns="conversation-turns",
        transfers="agent-transfers",
        alerts="alerts-delivered",
        plans="billing-plans",
        billing_sessions="billing-sessions",
        dlq="metering-dlq",
        late="metering-late",
        balance_alerts="balance-alerts",
        balance_state="balance-state",
    )
    assert (s.partitions, s.replication_factor, s.workers) == (6, 1, 1)
    assert s.rules == RulesConfig(
        idle_timeout_ms=15 * MINUTE,
        app_idle_timeout_ms={},
        allowed_lateness_ms=60 * SECOND,
        open_transfer_timeout_ms=24 * HOUR,
        dedupe_horizon_ms=7 * DAY,
    )
    assert (s.idle_partition_seconds, s.max_clock_skew_seconds) == (30.0, 0.0)
    assert (s.state_store, s.app_id) == ("memory", "metering")
    assert (s.batch_size, s.batch_seconds, s.sink_batch_size, s.sink_batch_seconds) == (5000, 0.5, 5000, 1.0)
    assert (s.api_host, s.api_port, s.metrics_port) == ("127.0.0.1", 8470, 9470)
    assert (s.log_level, s.log_format, s.timezone) == ("INFO", "auto", "UTC")
    assert (s.unlimited_plans, s.entitlement_port, s.webhook_url, s.webhook_secret) == (frozenset(), 8471, "", "")
    assert s == Settings().with_clickhouse_default()


def test_the_default_clickhouse_url_is_embedded_chdb_under_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path.resolve()
    s = read(DATA_DIR=str(data_dir))
    assert s.clickhouse_url == f"chdb:///{str(data_dir).lstrip('/')}/clickhouse"
    assert s.embedded_clickhouse
    assert parse_url(s.clickhouse_url).path == str(data_dir / "clickhouse")
    assert Settings.from_env({}).clickhouse_url == f"chdb://{(ROOT / 'var' / 'clickhouse').resolve()}"


def test_a_relative_data_dir_gives_an_absolute_clickhouse_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = read(DATA_DIR="state")
    assert s.data_dir == Path("state")
    assert s.clickhouse_url == f"chdb://{tmp_path.resolve()}/state/clickhouse"
    assert parse_url(s.clickhouse_url).path == str(tmp_path.resolve() / "state" / "clickhouse")


def test_an_explicit_clickhouse_url_is_kept() -> None:
    assert read(CLICKHOUSE_URL="http://u:p@ch:8123/billing").clickhouse_url == "http://u:p@ch:8123/billing"
    assert not read(CLICKHOUSE_URL="http://u:p@ch:8123/billing").embedded_clickhouse


def test_blank_variables_mean_the_default() -> None:
    blank = dict.fromkeys(Settings().to_env(), " ")
    assert Settings.from_env(blank) == Settings.from_env({})


def test_without_an_argument_the_process_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("METERING_PARTITIONS", "3")
    assert Settings.from_env().partitions == 3


# -- every variable -----------------------------------------------------------------------

#: (variable without the prefix, value, what to look at, what it must be)
VARIABLES: list[tuple[str, str, Getter, Any]] = [
    ("DATA_DIR", "/srv/metering", lambda s: s.data_dir, Path("/srv/metering")),
    ("KAFKA_BOOTSTRAP", "k1:9092,k2:9093", lambda s: s.kafka_bootstrap, "k1:9092,k2:9093"),
    (
        "KAFKA_CONFIG",
        "security.protocol=SASL_SSL, sasl.mechanism = PLAIN,sasl.password=a=b",
        lambda s: s.kafka_config,
        {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.password": "a=b"},
    ),
    (
        "CLICKHOUSE_URL",
        "https://u:p@ch.example:8443/billing",
        lambda s: s.clickhouse_url,
        "https://u:p@ch.example:8443/billing",
    ),
    ("CLICKHOUSE_DATABASE", "billing_eu", lambda s: s.clickhouse_database, "billing_eu"),
    ("PARTITIONS", "12", lambda s: s.partitions, 12),
    ("REPLICATION_FACTOR", "3", lambda s: s.replication_factor, 3),
    ("IDLE_TIMEOUT_MINUTES", "30", lambda s: s.rules.idle_timeout_ms, 30 * MINUTE),
    (
        "APP_IDLE_TIMEOUTS",
        "support-bot=5, sales=20160",
        lambda s: s.rules.app_idle_timeout_ms,
        {"support-bot": 5 * MINUTE, "sales": 20160 * MINUTE},
    ),
    ("ALLOWED_LATENESS_SECONDS", "2.5", lambda s: s.rules.allowed_lateness_ms, 2500),
    ("OPEN_TRANSFER_TIMEOUT_MINUTES", "90", lambda s: s.rules.open_transfer_timeout_ms, 90 * MINUTE),
    ("DEDUPE_HORIZON_DAYS", "0.5", lambda s: s.rules.dedupe_horizon_ms, 12 * HOUR),
    ("IDLE_PARTITION_SECONDS", "2.5", lambda s: s.idle_partition_seconds, 2.5),
    ("MAX_CLOCK_SKEW_SECONDS", "60", lambda s: s.max_clock_skew_seconds, 60.0),
    ("STATE_STORE", "RocksDB", lambda s: s.state_store, "rocksdb"),
    ("APP_ID", "metering-eu_1", lambda s: s.app_id, "metering-eu_1"),
    ("WORKERS", "4", lambda s: s.workers, 4),
    ("BATCH_SIZE", "100", lambda s: s.batch_size, 100),
    ("BATCH_SECONDS", "0.25", lambda s: s.batch_seconds, 0.25),
    ("TRANSACTION_SECONDS", "0", lambda s: s.transaction_seconds, 0.0),
    ("SINK_BATCH_SIZE", "250", lambda s: s.sink_batch_size, 250),
    ("SINK_BATCH_SECONDS", "2", lambda s: s.sink_batch_seconds, 2.0),
    ("API_HOST", "0.0.0.0", lambda s: s.api_host, "0.0.0.0"),
    ("API_PORT", "0", lambda s: s.api_port, 0),
    ("METRICS_PORT", "65535", lambda s: s.metrics_port, 65535),
    ("LOG_LEVEL", "debug", lambda s: s.log_level, "DEBUG"),
    ("LOG_FORMAT", "JSON", lambda s: s.log_format, "json"),
    ("TIMEZONE", "Asia/Kolkata", lambda s: s.timezone, "Asia/Kolkata"),
    ("UNLIMITED_PLANS", "enterprise, postpaid", lambda s: s.unlimited_plans, frozenset({"enterprise", "postpaid"})),
    ("ENTITLEMENT_PORT", "18471", lambda s: s.entitlement_port, 18471),
    ("WEBHOOK_URL", "https://hooks.example.com/m", lambda s: s.webhook_url, "https://hooks.example.com/m"),
    ("WEBHOOK_SECRET", "s3cret", lambda s: s.webhook_secret, "s3cret"),
    ("LOCAL_KAFKA_PORT", "19092", lambda s: s.local_kafka_port, 19092),
    ("PLAN_CATALOG", str(DEFAULT_CATALOG), lambda s: s.plan_catalog, DEFAULT_CATALOG),
    ("INVOICE_SELLER", "Acme Metering GmbH", lambda s: s.invoice_seller, "Acme Metering GmbH"),
    ("CONSOLE_SECRET", "k" * 32, lambda s: s.console.secret, "k" * 32),
    ("CONSOLE_JWKS", "https://idp.example/jwks.json", lambda s: s.console.jwks, "https://idp.example/jwks.json"),
    ("CONSOLE_ISSUER", "https://idp.example/", lambda s: s.console.issuer, "https://idp.example/"),
    ("CONSOLE_AUDIENCE", "metering", lambda s: s.console.audience, "metering"),
    (
        "CONSOLE_NOW",
        "2026-03-10T12:00:00Z",
        lambda s: s.console.now,
        datetime(2026, 3, 10, 12, tzinfo=UTC),
    ),
    ("CONSOLE_EXPORT_MAX_DAYS", "366", lambda s: s.console.export_max_days, 366),
    *(
        (f"TOPIC_{name.upper()}", f"eu.{name}-v2", lambda s, name=name: getattr(s.topics, name), f"eu.{name}-v2")
        for name in Topics.__dataclass_fields__
    ),
]


@pytest.mark.parametrize(("name", "raw", "get", "value"), VARIABLES, ids=[v[0] for v in VARIABLES])
def test_each_variable_is_read(name: str, raw: str, get: Getter, value: Any) -> None:
    assert get(read(**{name: raw})) == value
    assert get(read(**{name: f"  {raw}\t"})) == value, "surrounding blanks are ignored"
    assert get(Settings.from_env({})) != value, "the case must differ from the default"


def test_the_table_covers_every_variable_to_env_writes() -> None:
    console = ConsoleSettings(
        secret="k" * 32, jwks="https://idp/jwks", issuer="i", audience="a", now=datetime.now(UTC), export_max_days=9
    )
    full = Settings(
        kafka_config={"a": "b"}, rules=RulesConfig(app_idle_timeout_ms={"bot": 5 * MINUTE}), console=console
    )
    assert {PREFIX + name for name, *_ in VARIABLES} == full.to_env().keys()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("IDLE_TIMEOUT_MINUTES", "5"),
        ("IDLE_TIMEOUT_MINUTES", "20160"),
        ("APP_IDLE_TIMEOUTS", "bot=5,other=20160"),
        ("API_PORT", "65535"),
        ("METRICS_PORT", "0"),
        ("KAFKA_BOOTSTRAP", "[::1]:9092"),
        ("CLICKHOUSE_URL", "chdb:///var/lib/metering/clickhouse"),
        ("CLICKHOUSE_URL", "http://ch:8123"),
        ("ALLOWED_LATENESS_SECONDS", "0"),
        ("DEDUPE_HORIZON_DAYS", "0"),
        ("TOPIC_TURNS", "t" * 249),
    ],
)
def test_limits_are_accepted(name: str, raw: str) -> None:
    read(**{name: raw})


# -- invalid values -----------------------------------------------------------------------

#: Every variable that has a rule, wrong at once: (value, the rule the message must state).
ALL_WRONG: dict[str, tuple[str, str]] = {
    "PARTITIONS": ("0", "must be at least 1"),
    "REPLICATION_FACTOR": ("two", "expected a whole number"),
    "CLICKHOUSE_URL": ("chdb://var/clickhouse", "write three slashes"),
    "CLICKHOUSE_DATABASE": ("bill ing", "letters, digits and underscores"),
    "TIMEZONE": ("Mars/Olympus_Mons", "use an IANA name"),
    "PLAN_CATALOG": ("/nonexistent/plans.toml", "cannot be read"),
    "IDLE_TIMEOUT_MINUTES": ("4", "outside 5 min .. 14 days (20160 min)"),
    "APP_IDLE_TIMEOUTS": ("support-bot=10,sales=20161", "outside 5 min .. 14 days (20160 min)"),
    "KAFKA_BOOTSTRAP": ("localhost", "expected host:port[,host:port...]"),
    "KAFKA_CONFIG": ("sasl.mechanism", "expected key=value[,key=value...]"),
    "API_PORT": ("65536", "a port is 0 (any free port) to 65535"),
    "METRICS_PORT": ("http", "expected a whole number"),
    "OPEN_TRANSFER_TIMEOUT_MINUTES": ("1.5", "expected a whole number"),
    "ALLOWED_LATENESS_SECONDS": ("soon", "expected a number"),
    "DEDUPE_HORIZON_DAYS": ("a week", "expected a number"),
    "IDLE_PARTITION_SECONDS": ("0", "must be greater than 0"),
    "MAX_CLOCK_SKEW_SECONDS": ("-5", "must not be negative"),
    "STATE_STORE": ("redis", "expected one of memory, rocksdb"),
    "APP_ID": ("metering app", "letters, digits, '-' and '_' only"),
    "WORKERS": ("0", "must be at least 1"),
    "BATCH_SIZE": ("lots", "expected a whole number"),
    "BATCH_SECONDS": ("0", "must be greater than 0"),
    "TRANSACTION_SECONDS": ("-1", "must not be negative"),
    "SINK_BATCH_SIZE": ("-1", "must be at least 1"),
    "SINK_BATCH_SECONDS": ("never", "expected a number"),
    "LOG_LEVEL": ("LOUD", "expected one of DEBUG, INFO, WARNING, ERROR"),
    "LOG_FORMAT": ("xml", "expected one of auto, json, console"),
    "TOPIC_TURNS": ("conversation turns", "a Kafka topic name is up to 249"),
    "TOPIC_DLQ": ("d" * 250, "a Kafka topic name is up to 249"),
    "UNLIMITED_PLANS": ("enterprise,,gold", "expected name[,name...] with no empty name"),
    "ENTITLEMENT_PORT": ("70000", "a port is 0 (any free port) to 65535"),
    "WEBHOOK_URL": ("hooks.example.com/metering", "expected an http:// or https:// URL with a host"),
}


def test_one_error_names_every_wrong_variable_with_its_rule() -> None:
    lines = error_lines(error_of(**{name: raw for name, (raw, _) in ALL_WRONG.items()}))
    assert len(lines) == len(ALL_WRONG), lines
    for name, (raw, rule) in ALL_WRONG.items():
        [line] = [x for x in lines if x.startswith(f"{PREFIX}{name}=")]
        assert line.startswith(f"{PREFIX}{name}={raw!r}: ")
        assert rule in line, (name, line)


@pytest.mark.parametrize(
    ("name", "raw", "rule"),
    [
        ("PARTITIONS", "0", "must be at least 1"),
        ("PARTITIONS", "-3", "must be at least 1"),
        ("PARTITIONS", "six", "expected a whole number"),
        ("CLICKHOUSE_URL", "ftp://ch.example/billing", "unsupported scheme 'ftp'"),
        ("CLICKHOUSE_URL", "clickhouse://ch:9000/billing", "unsupported scheme 'clickhouse'"),
        ("CLICKHOUSE_URL", "localhost:8123", "Use chdb:///absolute/directory"),
        ("CLICKHOUSE_URL", "/var/lib/clickhouse", "no scheme"),
        ("CLICKHOUSE_URL", "http:///billing", "no host"),
        ("CLICKHOUSE_URL", "chdb://var/clickhouse", "three slashes"),
        ("CLICKHOUSE_URL", "chdb://", "must name an absolute directory"),
        ("TIMEZONE", "Mars/Olympus_Mons", "use an IANA name such as UTC"),
        ("TIMEZONE", "UTC+5", "use an IANA name such as UTC"),
        ("TIMEZONE", "../../etc/passwd", "use an IANA name such as UTC"),
        ("IDLE_TIMEOUT_MINUTES", "4", "idle timeout 4 min is outside 5 min .. 14 days (20160 min)"),
        ("IDLE_TIMEOUT_MINUTES", "20161", "idle timeout 20161 min is outside 5 min .. 14 days (20160 min)"),
        ("IDLE_TIMEOUT_MINUTES", "15m", "expected a whole number"),
        ("KAFKA_BOOTSTRAP", "localhost", "expected host:port[,host:port...], e.g. 127.0.0.1:9092"),
        ("KAFKA_BOOTSTRAP", ":9092", "expected host:port"),
        ("KAFKA_BOOTSTRAP", "kafka:port", "expected host:port"),
        ("KAFKA_BOOTSTRAP", "k1:9092,,k2:9092", "expected host:port"),
        ("KAFKA_BOOTSTRAP", "k1:9092,k2", "expected host:port"),
        ("API_PORT", "65536", "a port is 0 (any free port) to 65535"),
        ("API_PORT", "-1", "a port is 0 (any free port) to 65535"),
        ("METRICS_PORT", "94.70", "expected a whole number"),
        ("APP_IDLE_TIMEOUTS", "support-bot=4", "idle timeout 4 min is outside 5 min .. 14 days"),
        ("APP_IDLE_TIMEOUTS", "a=10,support-bot=20161", "idle timeout 20161 min is outside 5 min .. 14 days"),
        ("APP_IDLE_TIMEOUTS", "support-bot", "expected key=value[,key=value...]"),
        ("APP_IDLE_TIMEOUTS", "=15", "expected key=value[,key=value...]"),
        ("APP_IDLE_TIMEOUTS", "a=10,,b=10", "expected key=value[,key=value...]"),
        ("APP_IDLE_TIMEOUTS", "support-bot=ten", "expected a whole number"),
    ],
)
def test_a_wrong_value_is_rejected_naming_the_variable_and_the_rule(name: str, raw: str, rule: str) -> None:
    [line] = error_lines(error_of(**{name: raw}))
    assert line.startswith(f"{PREFIX}{name}={raw!r}: ")
    assert rule in line


def test_an_open_transfer_timeout_under_5_minutes_is_rejected() -> None:
    [line] = error_lines(error_of(OPEN_TRANSFER_TIMEOUT_MINUTES="4"))
    assert "must be at least 5 minutes" in line


def test_every_wrong_rules_variable_is_named() -> None:
    message = error_of(ALLOWED_LATENESS_SECONDS="-1", OPEN_TRANSFER_TIMEOUT_MINUTES="4", DEDUPE_HORIZON_DAYS="-1")
    for name in ("ALLOWED_LATENESS_SECONDS", "OPEN_TRANSFER_TIMEOUT_MINUTES", "DEDUPE_HORIZON_DAYS"):
        assert PREFIX + name in message


@pytest.mark.parametrize(
    "name",
    [
        "ALLOWED_LATENESS_SECONDS",
        "DEDUPE_HORIZON_DAYS",
        "IDLE_PARTITION_SECONDS",
        "MAX_CLOCK_SKEW_SECONDS",
        "BATCH_SECONDS",
        "TRANSACTION_SECONDS",
        "SINK_BATCH_SECONDS",
    ],
)
@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_not_a_number_and_infinity_are_rejected(name: str, raw: str) -> None:
    [line] = error_lines(error_of(**{name: raw}))
    assert line.startswith(f"{PREFIX}{name}=")


def test_a_lateness_in_decimal_seconds_is_read_to_the_millisecond() -> None:
    assert read(ALLOWED_LATENESS_SECONDS="1.001").rules.allowed_lateness_ms == 1001


@pytest.mark.parametrize("raw", ["tópico", ".", ".."])
def test_a_topic_name_kafka_refuses_is_rejected(raw: str) -> None:
    [line] = error_lines(error_of(TOPIC_TURNS=raw))
    assert line.startswith(f"{PREFIX}TOPIC_TURNS=")


@pytest.mark.parametrize(
    "raw", ["chdb:relative/dir", "chdb:///", "chdb:///srv/ch?mode=ro", "http://ch:8123/billing/extra"]
)
def test_a_clickhouse_url_the_client_refuses_is_refused_at_start_up(raw: str) -> None:
    with pytest.raises(ClickHouseConfigError):
        parse_url(raw)
    [line] = error_lines(error_of(CLICKHOUSE_URL=raw))
    assert line.startswith(f"{PREFIX}CLICKHOUSE_URL=")


@pytest.mark.parametrize("raw", ["billing-eu", "2026"])
def test_a_database_name_the_client_refuses_is_refused_at_start_up(raw: str) -> None:
    with pytest.raises(ClickHouseConfigError):
        check_database_name(raw)
    [line] = error_lines(error_of(CLICKHOUSE_DATABASE=raw))
    assert line.startswith(f"{PREFIX}CLICKHOUSE_DATABASE=")


@pytest.mark.parametrize(
    "name",
    [
        "plain",
        "with space",
        "hash#dir",
        "pct%41dir",
    ],
)
def test_the_default_clickhouse_url_names_the_data_dir_whatever_its_name(tmp_path: Path, name: str) -> None:
    data_dir = tmp_path.resolve() / name
    assert parse_url(read(DATA_DIR=str(data_dir)).clickhouse_url).path == str(data_dir / "clickhouse")


# -- to_env --------------------------------------------------------------------------------

NAME = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,11}", fullmatch=True)
TOPIC = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=40).filter(lambda t: t.strip("."))
POSITIVE = st.floats(min_value=1e-3, max_value=1e7, allow_nan=False, allow_infinity=False)
MINUTES = st.integers(5, 20160).map(lambda m: m * MINUTE)

rules_configs = st.builds(
    RulesConfig,
    idle_timeout_ms=MINUTES,
    app_idle_timeout_ms=st.dictionaries(NAME, MINUTES, max_size=3),
    allowed_lateness_ms=st.one_of(st.integers(0, 3600).map(lambda s: s * SECOND), st.sampled_from([250, 1500])),
    open_transfer_timeout_ms=st.integers(5, 100_000).map(lambda m: m * MINUTE),
    dedupe_horizon_ms=st.one_of(st.integers(0, 60).map(lambda d: d * DAY), st.integers(0, 72).map(lambda h: h * HOUR)),
)
all_settings = st.builds(
    Settings,
    data_dir=st.sampled_from([Path("/srv/metering"), Path("var"), Path("/tmp/with space")]),
    kafka_bootstrap=st.sampled_from(["127.0.0.1:9092", "k1:9092,k2:9093", "[::1]:19092"]),
    kafka_config=st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz.", min_size=1, max_size=20), NAME, max_size=3),
    clickhouse_url=st.sampled_from(["chdb:///srv/metering/ch", "http://u:p@ch:8123/metering", "https://ch:8443"]),
    clickhouse_database=st.from_regex(r"[a-z_][a-z0-9_]{0,11}", fullmatch=True),
    topics=st.builds(Topics, **dict.fromkeys(Topics.__dataclass_fields__, TOPIC)),
    partitions=st.integers(1, 10_000),
    replication_factor=st.integers(1, 5),
    rules=rules_configs,
    idle_partition_seconds=POSITIVE,
    max_clock_skew_seconds=POSITIVE,
    state_store=st.sampled_from(["memory", "rocksdb"]),
    app_id=NAME,
    workers=st.integers(1, 64),
    batch_size=st.integers(1, 10**6),
    batch_seconds=POSITIVE,
    sink_batch_size=st.integers(1, 10**6),
    sink_batch_seconds=POSITIVE,
    api_host=st.sampled_from(["127.0.0.1", "0.0.0.0", "metering.internal"]),
    api_port=st.integers(0, 65535),
    metrics_port=st.integers(0, 65535),
    log_level=st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR"]),
    log_format=st.sampled_from(["auto", "json", "console"]),
    timezone=st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata", "America/St_Johns"]),
)


@settings(max_examples=150, deadline=None)
@given(all_settings)
def test_to_env_then_from_env_gives_the_same_settings(s: Settings) -> None:
    env = s.to_env()
    assert all(name.startswith(PREFIX) for name in env)
    assert Settings.from_env(env) == s


def test_to_env_of_the_defaults_gives_the_defaults() -> None:
    defaults = Settings.from_env({})
    assert Settings.from_env(defaults.to_env()) == defaults


@pytest.mark.parametrize(("lateness", "horizon"), [(1001, 0), (0, 31)])
def test_to_env_keeps_the_lateness_and_the_dedupe_horizon_to_the_millisecond(lateness: int, horizon: int) -> None:
    s = replace(Settings.from_env({}), rules=RulesConfig(allowed_lateness_ms=lateness, dedupe_horizon_ms=horizon))
    assert Settings.from_env(s.to_env()).rules == s.rules


def test_every_reader_of_the_pipeline_reads_committed_only_whatever_is_configured() -> None:
    """Outputs are transactional: an aborted batch's records are in the log, and only read_committed skips them."""
    settings = Settings(kafka_config={"isolation.level": "read_uncommitted"})
    assert consumer_config(settings, "g")["isolation.level"] == "read_committed"
    assert consumer_config(settings, "g", **{"isolation.level": "read_uncommitted"})["isolation.level"] == (
        "read_committed"
    )


def test_a_bootstrap_is_given_only_when_the_variable_is_set() -> None:
    """Unset, `metering run` starts the data directory's own broker rather than use whatever answers on 9092."""
    assert not Settings.from_env({}).kafka_bootstrap_given
    assert not read(KAFKA_BOOTSTRAP=" ").kafka_bootstrap_given
    assert read(KAFKA_BOOTSTRAP="127.0.0.1:9092").kafka_bootstrap_given
    assert Settings.from_env(Settings().to_env()).kafka_bootstrap_given, "children get the address their parent chose"
