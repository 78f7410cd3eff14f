"""Every process's settings, declared once: each field names its ``METERING_*`` variable and its rule.

A field's type carries its variable (:class:`Var`) and a pydantic validator that parses the
variable's text, so reading (``from_env``), validating and writing back for child processes
(``to_env``) all come from that one declaration. Only the CLI calls ``Settings.from_env``;
everything else receives the object (or the part it needs). A wrong setting fails at start-up
with one :class:`SettingsError` naming every wrong variable and its rule.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar, get_type_hints
from urllib.parse import quote, urlsplit

from pydantic import BeforeValidator, TypeAdapter, ValidationError

from pipeline.events import DEFAULT_TOPIC_OF_TYPE
from pipeline.infra.clickhouse_url import ClickHouseConfigError, check_database_name, parse_url
from pipeline.rules.attribution import zone
from pipeline.rules.config import DAY, MINUTE, SECOND, RulesConfig, RulesConfigError, check_idle_timeout

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
#: HS256 keys shorter than the hash (32 bytes) are guessable offline from one token.
MIN_SECRET_LENGTH: Final = 32
#: An export covers at most three months (92 days) unless the deployment raises it.
DEFAULT_EXPORT_MAX_DAYS: Final = 92

S = TypeVar("S")
V = TypeVar("V")


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names the variable and what to do."""


class WholeMessage(ValueError):
    """A rule's message that is the whole line (it names the variable itself, never a secret's value)."""


@dataclass(frozen=True)
class Var:
    """Field metadata: the variable after its section's prefix (default: the field's name), written back by ``text``."""

    name: str = ""
    text: Callable[[Any], str] = str
    omit_empty: bool = False


def parsed(parse: Callable[[str], object]) -> BeforeValidator:
    """Parse a variable's text with ``parse``, whose ``ValueError`` states the rule."""

    def validate(value: object) -> object:
        return parse(value) if isinstance(value, str) else value

    return BeforeValidator(validate)


# -- the rules a variable's text must follow ------------------------------------------------------


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected a whole number") from None


def _float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _checked(parse: Callable[[str], V], ok: Callable[[V], bool], rule: str) -> Callable[[str], V]:
    """``parse``, then ``rule`` unless ``ok`` holds for the value."""

    def check(raw: str) -> V:
        value = parse(raw)
        if not ok(value):
            raise ValueError(rule)
        return value

    return check


_positive_int = _checked(_int, lambda n: n >= 1, "must be at least 1")
_port = _checked(_int, lambda n: 0 <= n <= 65535, "a port is 0 (any free port) to 65535")
_positive_float = _checked(_float, lambda x: x > 0, "must be greater than 0")
_non_negative_float = _checked(_float, lambda x: x >= 0, "must not be negative")
_at_least_5_minutes = _checked(_int, lambda m: m >= 5, "must be at least 5 minutes")
_seller = _checked(str, lambda name: len(name) <= 200, "at most 200 characters: the seller's name as invoices show it")


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
    try:
        return check_database_name(raw)
    except ClickHouseConfigError as exc:
        raise ValueError(str(exc)) from None


def _clickhouse_url(raw: str) -> str:
    try:
        parse_url(raw)
    except ClickHouseConfigError as exc:
        raise ValueError(str(exc).removeprefix(f"{PREFIX}CLICKHOUSE_URL={raw!r}: ")) from None
    return raw


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
    """``key=value`` pairs separated by commas (librdkafka settings passed through, e.g. SASL)."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError("expected key=value[,key=value...]")
        out[key.strip()] = value.strip()
    return out


def _pairs_text(pairs: Mapping[str, object]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs.items())


def _idle_minutes(raw: str) -> int:
    minutes = _int(raw)
    check_idle_timeout(minutes * MINUTE, "idle timeout")
    return minutes


def _app_minutes(raw: str) -> dict[str, int]:
    """``app=minutes,app2=minutes``: per-app idle timeouts."""
    return {app: _idle_minutes(minutes) for app, minutes in _pairs(raw).items()}


def _zone(raw: str) -> str:
    zone(raw)
    return raw


def _names(raw: str) -> frozenset[str]:
    """Comma-separated names (plan names): blanks around each are ignored, none may be empty."""
    names = [name.strip() for name in raw.split(",")]
    if not all(names):
        raise ValueError("expected name[,name...] with no empty name")
    return frozenset(names)


def _names_text(names: frozenset[str]) -> str:
    return ",".join(sorted(names))


def _catalog(raw: str) -> Path:
    """A plan catalogue file that loads: checked now, not at the first request."""
    # imported on use: the catalogue pulls in the money rules, which most commands never need
    from pipeline.balance.catalog import CatalogError, load_catalog  # noqa: PLC0415

    path = Path(raw)
    try:
        load_catalog(path)
    except CatalogError as exc:
        raise ValueError(str(exc)) from None
    return path


def _optional_text(value: object) -> str:
    return "" if value is None else str(value)


def _http_url(raw: str) -> str:
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
        raise ValueError("expected an http:// or https:// URL with a host, e.g. https://hooks.example.com/metering")
    return raw


def _secret(raw: str) -> str:
    if len(raw) < MIN_SECRET_LENGTH:
        raise WholeMessage(
            f"{CONSOLE_PREFIX}SECRET is {len(raw)} characters long: use at least {MIN_SECRET_LENGTH} random "
            "characters (e.g. the output of `openssl rand -hex 32`)"
        )
    return raw


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _jwks(raw: str) -> str:
    """A JWKS file that has keys, or an https URL (fetched when a token needs it)."""
    scheme, sep, rest = raw.partition("://")
    if sep:
        if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
            raise ValueError("expected a JWKS file or an https:// URL with a host")
        if scheme.lower() == "http" and not _loopback(urlsplit(raw).hostname or ""):
            raise ValueError(
                "a remote JWKS must be fetched over https: whoever can change the keys on the way signs any token "
                "(an admin of every account); plain http is accepted only on a loopback address (127.0.0.1, ::1, "
                "localhost)"
            )
        return raw
    path = Path(raw)
    if not path.is_absolute():
        path = Path(os.getcwd(), path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(
            f"cannot read the JWKS file ({exc.strerror or exc}): give a readable file or an https:// URL"
        ) from None
    except ValueError as exc:
        raise ValueError(f"the JWKS file is not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise ValueError('the JWKS file has no "keys" list')
    return raw


def _time(raw: str) -> datetime:
    try:
        now = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        now = None
    if now is None or now.tzinfo is None:
        raise ValueError("expected an RFC 3339 time with its offset, e.g. 2026-03-10T12:00:00Z")
    return now


def _time_text(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def _days(raw: str) -> int:
    try:
        days = int(raw)
    except ValueError:
        days = 0
    if days < 1:
        raise ValueError("expected a whole number of days >= 1")
    return days


# -- the types fields are declared with -----------------------------------------------------------

PositiveInt = Annotated[int, parsed(_positive_int)]
Port = Annotated[int, parsed(_port)]
PositiveSeconds = Annotated[float, parsed(_positive_float)]
NonNegativeSeconds = Annotated[float, parsed(_non_negative_float)]
Topic = Annotated[str, parsed(_topic)]
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

    idle_timeout_minutes: Annotated[int, Var(), parsed(_idle_minutes)] = _RULES.idle_timeout_ms // MINUTE
    app_idle_timeouts: Annotated[Mapping[str, int], Var(text=_pairs_text, omit_empty=True), parsed(_app_minutes)] = (
        field(default_factory=dict)
    )
    allowed_lateness_seconds: Annotated[NonNegativeSeconds, Var(text=repr)] = _RULES.allowed_lateness_ms / SECOND
    open_transfer_timeout_minutes: Annotated[int, Var(), parsed(_at_least_5_minutes)] = (
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

    secret: Annotated[Text, parsed(_secret)] = field(default="", repr=False)
    #: a JWKS file, or an https URL serving one (http only on a loopback address)
    jwks: Annotated[Text, parsed(_jwks)] = ""
    issuer: Text = ""  # checked when set
    audience: Text = ""  # checked when set
    #: fixes "now" for the usage ranges (tests, demos)
    now: Annotated[datetime | None, Var(text=_time_text, omit_empty=True), parsed(_time)] = None
    export_max_days: Annotated[int, Var(), parsed(_days)] = DEFAULT_EXPORT_MAX_DAYS

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
    kafka_bootstrap: Annotated[str, Var(), parsed(_bootstrap)] = "127.0.0.1:9092"
    kafka_config: Annotated[Mapping[str, str], Var(text=_pairs_text, omit_empty=True), parsed(_pairs)] = field(
        default_factory=dict
    )
    clickhouse_url: Annotated[str, Var(), parsed(_clickhouse_url)] = ""
    clickhouse_database: Annotated[str, Var(), parsed(_database)] = "metering"
    topics: Topics = field(default_factory=Topics)
    partitions: Annotated[PositiveInt, Var()] = 6
    replication_factor: Annotated[PositiveInt, Var()] = 1
    timezone: Annotated[str, Var(), parsed(_zone)] = "UTC"
    log_level: Annotated[str, Var(), parsed(_choice("DEBUG", "INFO", "WARNING", "ERROR"))] = "INFO"
    log_format: Annotated[str, Var(), parsed(_choice("auto", "json", "console"))] = "auto"
    # -- the stream workers
    rules: RulesConfig = field(default_factory=RulesConfig)
    idle_partition_seconds: Annotated[PositiveSeconds, Var()] = 30.0
    max_clock_skew_seconds: Annotated[NonNegativeSeconds, Var()] = 0.0
    state_store: Annotated[str, Var(), parsed(_choice("memory", "rocksdb"))] = "memory"
    app_id: Annotated[str, Var(), parsed(_identifier)] = "metering"
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
    unlimited_plans: Annotated[frozenset[str], Var(text=_names_text), parsed(_names)] = frozenset()
    entitlement_port: Annotated[Port, Var()] = 8471
    webhook_url: Annotated[str, Var(), parsed(_http_url)] = ""
    webhook_secret: Annotated[str, Var()] = ""
    # -- `metering run`'s own broker
    #: Whether ``kafka_bootstrap`` is to be used as given (METERING_KAFKA_BOOTSTRAP set, or set in code).
    #: Unset in the environment, `metering run` starts the data directory's own broker (on
    #: ``local_kafka_port`` if free) and the other commands find it there.
    kafka_bootstrap_given: bool = field(default=True, compare=False)
    local_kafka_port: Annotated[Port, Var()] = 9092
    # -- the console and the order processor
    #: the plan catalogue the console offers (None: the one shipped in pipeline/balance/catalog.toml)
    plan_catalog: Annotated[Path | None, Var(text=_optional_text), parsed(_catalog)] = None
    #: the seller named on invoices (the order processor writes it into each invoice as issued)
    invoice_seller: Annotated[str, Var(), parsed(_seller)] = "Metering"
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


# -- reading and writing a section ----------------------------------------------------------------


_VARIABLES: dict[type, dict[str, Var]] = {}
_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _variables(cls: type) -> dict[str, Var]:
    """The section's fields that have a variable, by field name, with the variable's name filled in."""
    if cls in _VARIABLES:
        return _VARIABLES[cls]
    hints = get_type_hints(cls, include_extras=True)
    out: dict[str, Var] = {}
    for f in dataclasses.fields(cls):
        for meta in getattr(hints[f.name], "__metadata__", ()):
            if isinstance(meta, Var):
                out[f.name] = replace(meta, name=meta.name or f.name.upper())
    _VARIABLES[cls] = out
    return out


def _adapter(cls: type) -> TypeAdapter[Any]:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def read_section(cls: type[S], prefix: str, env: Mapping[str, str]) -> tuple[S, list[str]]:
    """The section from its variables (blank or unset: the default), and one message per wrong variable."""
    names = {field: prefix + var.name for field, var in _variables(cls).items()}
    given = {field: env[name].strip() for field, name in names.items() if env.get(name, "").strip()}
    try:
        section: S = _adapter(cls).validate_python(given)
    except ValidationError as exc:
        return cls(), [_message(error, names, env) for error in exc.errors()]
    return section, []


def _message(error: Any, names: Mapping[str, str], env: Mapping[str, str]) -> str:
    cause = error.get("ctx", {}).get("error")
    rule = str(cause) if cause is not None else error["msg"]
    if isinstance(cause, WholeMessage) or not error["loc"]:
        return rule
    name = names[str(error["loc"][0])]
    return f"{name}={env[name]!r}: {rule}"


def section_env(section: object, prefix: str) -> dict[str, str]:
    """The variables that give ``section``: the inverse of :func:`read_section`."""
    env: dict[str, str] = {}
    for name, var in _variables(type(section)).items():
        text = var.text(getattr(section, name))
        if text or not var.omit_empty:
            env[prefix + var.name] = text
    return env
