"""Every process's settings, declared once: each field names its ``METERING_*`` variable and its rule.

A field's type carries its variable (``Var``) and its rule (``parsed(rule.…)``, from
:mod:`pipeline.infra.setting_rules`), so reading (``from_env``), validating and writing back
for child processes (``to_env``) all come from that one declaration (see
:mod:`pipeline.infra.sections`). Only the CLI calls ``Settings.from_env``; everything else
receives the object (or the part it needs). A wrong setting fails at start-up with one
:class:`SettingsError` naming every wrong variable and its rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import quote

from pipeline.contract.events import DEFAULT_TOPIC_OF_TYPE
from pipeline.infra import setting_rules as rule
from pipeline.infra.sections import Var, parsed, read_section, section_env
from pipeline.infra.setting_rules import MIN_SECRET_LENGTH
from pipeline.rules.config import DAY, MINUTE, SECOND, RulesConfig, RulesConfigError

__all__ = [
    "CONSOLE_PREFIX",
    "MIN_SECRET_LENGTH",
    "PREFIX",
    "ROOT",
    "ConsoleSettings",
    "RulesSection",
    "Settings",
    "SettingsError",
    "Topics",
    "read_console_settings",
]

ROOT: Final = Path(__file__).resolve().parents[2]
PREFIX: Final = "METERING_"
TOPIC_PREFIX: Final = "METERING_TOPIC_"
CONSOLE_PREFIX: Final = "METERING_CONSOLE_"
#: An export covers at most three months (92 days) unless the deployment raises it.
DEFAULT_EXPORT_MAX_DAYS: Final = 92


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names the variable and what to do."""


# -- the types fields are declared with -----------------------------------------------------------

PositiveInt = Annotated[int, parsed(rule.positive_int)]
Port = Annotated[int, parsed(rule.port)]
PositiveSeconds = Annotated[float, parsed(rule.positive_float)]
NonNegativeSeconds = Annotated[float, parsed(rule.non_negative_float)]
Topic = Annotated[str, parsed(rule.topic)]
AppMinutes = Annotated[Mapping[str, int], parsed(rule.app_minutes)]
Text = Annotated[str, Var(omit_empty=True)]

# -- the sections ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    """``METERING_TOPIC_<NAME>``: the topics, renamed per deployment if need be."""

    turns: Annotated[Topic, Var()] = "conversation-turns"
    transfers: Annotated[Topic, Var()] = "agent-transfers"
    alerts: Annotated[Topic, Var()] = "alerts-delivered"
    plans: Annotated[Topic, Var()] = "billing-plans"
    billing_sessions: Annotated[Topic, Var()] = "billing-sessions"
    dlq: Annotated[Topic, Var()] = "metering-dlq"
    late: Annotated[Topic, Var()] = "metering-late"
    balance_alerts: Annotated[Topic, Var()] = "balance-alerts"
    balance_state: Annotated[Topic, Var()] = "balance-state"
    #: the console's plan model and orders (compacted, keyed by account_id)
    accounts: Annotated[Topic, Var()] = "billing-accounts"
    orders: Annotated[Topic, Var()] = "billing-orders"

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


_RULES: Final = RulesConfig()


@dataclass(frozen=True)
class RulesSection:
    """The billing rules' variables (the worker and ``metering compute``), in the units people write."""

    idle_timeout_minutes: Annotated[int, Var(), parsed(rule.idle_minutes)] = _RULES.idle_timeout_ms // MINUTE
    app_idle_timeouts: Annotated[AppMinutes, Var(text=rule.pairs_text, omit_empty=True)] = field(default_factory=dict)
    allowed_lateness_seconds: Annotated[NonNegativeSeconds, Var(text=repr)] = _RULES.allowed_lateness_ms / SECOND
    open_transfer_timeout_minutes: Annotated[int, Var(), parsed(rule.at_least_5_minutes)] = (
        _RULES.open_transfer_timeout_ms // MINUTE
    )
    dedupe_horizon_days: Annotated[NonNegativeSeconds, Var(text=repr)] = _RULES.dedupe_horizon_ms / DAY

    def config(self) -> RulesConfig:
        """The rules these variables give (RulesConfigError if they contradict each other)."""
        return RulesConfig(
            idle_timeout_ms=self.idle_timeout_minutes * MINUTE,
            app_idle_timeout_ms={app: minutes * MINUTE for app, minutes in self.app_idle_timeouts.items()},
            allowed_lateness_ms=round(self.allowed_lateness_seconds * SECOND),
            open_transfer_timeout_ms=self.open_transfer_timeout_minutes * MINUTE,
            dedupe_horizon_ms=round(self.dedupe_horizon_days * DAY),
        )

    @classmethod
    def of(cls, rules: RulesConfig) -> RulesSection:
        return cls(
            idle_timeout_minutes=rules.idle_timeout_ms // MINUTE,
            app_idle_timeouts={app: ms // MINUTE for app, ms in rules.app_idle_timeout_ms.items()},
            allowed_lateness_seconds=rules.allowed_lateness_ms / SECOND,
            open_transfer_timeout_minutes=rules.open_transfer_timeout_ms // MINUTE,
            dedupe_horizon_days=rules.dedupe_horizon_ms / DAY,
        )


@dataclass(frozen=True)
class ConsoleSettings:
    """``METERING_CONSOLE_*``: how the console verifies tokens, what "now" is, how far an export reaches.

    ``secret`` (HS256) and ``jwks`` (RS256) exclude each other; neither: a secret of the data directory.
    """

    secret: Annotated[Text, parsed(rule.secret)] = field(default="", repr=False)
    #: a JWKS file, or an https URL serving one (http only on a loopback address)
    jwks: Annotated[Text, parsed(rule.jwks)] = ""
    issuer: Text = ""  # checked when set
    audience: Text = ""  # checked when set
    #: fixes "now" for the usage ranges (tests, demos)
    now: Annotated[datetime | None, Var(text=rule.time_text, omit_empty=True), parsed(rule.time)] = None
    export_max_days: Annotated[int, Var(), parsed(rule.days)] = DEFAULT_EXPORT_MAX_DAYS

    @property
    def algorithm(self) -> str:
        return "RS256" if self.jwks else "HS256"

    def to_env(self) -> dict[str, str]:
        return section_env(self, CONSOLE_PREFIX)


@dataclass(frozen=True)
class Settings:
    """Every process's settings; the sections ``topics``, ``rules`` and ``console`` have their own variables."""

    # -- every process: where the data, the broker and the store are
    data_dir: Annotated[Path, Var(), parsed(Path)] = ROOT / "var"
    kafka_bootstrap: Annotated[str, Var(), parsed(rule.bootstrap)] = "127.0.0.1:9092"
    kafka_config: Annotated[Mapping[str, str], Var(text=rule.pairs_text, omit_empty=True), parsed(rule.pairs)] = field(
        default_factory=dict
    )
    clickhouse_url: Annotated[str, Var(), parsed(rule.clickhouse_url)] = ""
    clickhouse_database: Annotated[str, Var(), parsed(rule.database)] = "metering"
    topics: Topics = field(default_factory=Topics)
    partitions: Annotated[PositiveInt, Var()] = 6
    replication_factor: Annotated[PositiveInt, Var()] = 1
    timezone: Annotated[str, Var(), parsed(rule.zone_name)] = "UTC"
    log_level: Annotated[str, Var(), parsed(rule.choice("DEBUG", "INFO", "WARNING", "ERROR"))] = "INFO"
    log_format: Annotated[str, Var(), parsed(rule.choice("auto", "json", "console"))] = "auto"
    # -- the stream workers
    rules: RulesConfig = field(default_factory=RulesConfig)
    idle_partition_seconds: Annotated[PositiveSeconds, Var()] = 30.0
    max_clock_skew_seconds: Annotated[NonNegativeSeconds, Var()] = 0.0
    state_store: Annotated[str, Var(), parsed(rule.choice("memory", "rocksdb"))] = "memory"
    app_id: Annotated[str, Var(), parsed(rule.identifier)] = "metering"
    workers: Annotated[PositiveInt, Var()] = 1
    batch_size: Annotated[PositiveInt, Var()] = 5000
    batch_seconds: Annotated[PositiveSeconds, Var()] = 0.5
    #: With a backlog, batches join the open Kafka transaction until it is this old (0: one per batch).
    transaction_seconds: Annotated[NonNegativeSeconds, Var()] = 1.0
    # -- the sink
    sink_batch_size: Annotated[PositiveInt, Var()] = 5000
    sink_batch_seconds: Annotated[PositiveSeconds, Var()] = 1.0
    # -- the store's API and the metrics endpoints
    api_host: Annotated[str, Var()] = "127.0.0.1"
    api_port: Annotated[Port, Var()] = 8470
    metrics_port: Annotated[Port, Var()] = 9470
    # -- balances (R12): plans without prepaid limit, the entitlement endpoint, the alert webhook
    unlimited_plans: Annotated[frozenset[str], Var(text=rule.names_text), parsed(rule.names)] = frozenset()
    entitlement_port: Annotated[Port, Var()] = 8471
    webhook_url: Annotated[str, Var(), parsed(rule.http_url)] = ""
    webhook_secret: Annotated[str, Var()] = ""
    # -- `metering run`'s own broker
    #: Whether ``kafka_bootstrap`` is to be used as given (METERING_KAFKA_BOOTSTRAP set, or set in code).
    #: Unset in the environment, `metering run` starts the data directory's own broker (on
    #: ``local_kafka_port`` if free) and the other commands find it there.
    kafka_bootstrap_given: bool = field(default=True, compare=False)
    local_kafka_port: Annotated[Port, Var()] = 9092
    # -- the console and the order processor
    #: the plan catalogue the console offers (None: the one shipped in pipeline/balance/catalog.toml)
    plan_catalog: Annotated[Path | None, Var(text=rule.optional_text), parsed(rule.catalog)] = None
    #: the seller named on invoices (the order processor writes it into each invoice as issued)
    invoice_seller: Annotated[str, Var(), parsed(rule.seller)] = "Metering"
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
        return {
            **section_env(self, PREFIX),
            **section_env(RulesSection.of(self.rules), PREFIX),
            **section_env(self.topics, TOPIC_PREFIX),
            **self.console.to_env(),
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``METERING_*`` variables (blank means the default); raise SettingsError naming every wrong one."""
        env = os.environ if env is None else env
        settings, errors = read_section(cls, PREFIX, env)
        topics, topic_errors = read_section(Topics, TOPIC_PREFIX, env)
        section, rule_errors = read_section(RulesSection, PREFIX, env)
        console, console_errors = read_console_settings(env)
        rules = _RULES
        if not rule_errors:
            try:
                rules = section.config()
            except RulesConfigError as exc:
                rule_errors.append(f"billing rules: {exc}")
        errors += topic_errors + rule_errors + console_errors
        if errors:
            raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
        given = bool(env.get(PREFIX + "KAFKA_BOOTSTRAP", "").strip())
        settings = replace(settings, topics=topics, rules=rules, console=console, kafka_bootstrap_given=given)
        return settings.with_clickhouse_default()


def read_console_settings(env: Mapping[str, str]) -> tuple[ConsoleSettings, list[str]]:
    """The console's ``METERING_CONSOLE_*`` variables, and one message per wrong one."""
    errors: list[str] = []
    if env.get(CONSOLE_PREFIX + "SECRET", "").strip() and env.get(CONSOLE_PREFIX + "JWKS", "").strip():
        errors.append(
            f"{CONSOLE_PREFIX}SECRET and {CONSOLE_PREFIX}JWKS are both set: a deployment verifies tokens one way, "
            "HS256 with the secret or RS256 with the identity provider's keys; unset one of them"
        )
    console, section_errors = read_section(ConsoleSettings, CONSOLE_PREFIX, env)
    errors += section_errors
    return (ConsoleSettings() if errors else console), errors
