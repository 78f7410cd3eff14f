"""deploy/: the Docker Compose stack, its Prometheus and Grafana configuration.

Two kinds of test. The file checks run everywhere: the compose file, the Prometheus configs and
the dashboard parse, and agree with the settings' ports and the metrics the code defines. The
``docker`` tests start the stack with testcontainers and run a produce -> usage round trip; they
are skipped, with the reason, where no Docker engine answers (or testcontainers is missing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from devtools import traffic
from devtools.local_kafka import free_port
from devtools.produce import produce
from pipeline.compute import compute
from pipeline.contract.decode import to_ms
from pipeline.infra.kafka import ensure_topics, missing_topics, partition_of
from pipeline.infra.settings import Settings
from pipeline.rules.attribution import zone
from pipeline.rules.config import RulesConfig

yaml = pytest.importorskip("yaml", reason="deploy/ checks skipped: PyYAML is not installed (pip install -e '.[test]')")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS / "metering.json"
DEFAULTS = Settings()


def _yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


# -- file checks (no Docker needed) ---------------------------------------------------------


def test_compose_file_defines_the_stack() -> None:
    compose = _yaml(COMPOSE_FILE)
    services = compose["services"]
    assert set(services) >= {"kafka", "clickhouse", "worker", "sink", "prometheus", "grafana"}
    images = {name: service.get("image", "") for name, service in services.items()}
    assert "apache/kafka:4." in images["kafka"]
    assert "clickhouse/clickhouse-server:" in images["clickhouse"]
    assert "prom/prometheus:" in images["prometheus"]
    assert "grafana/grafana:" in images["grafana"]
    kafka_env = services["kafka"]["environment"]
    assert "broker,controller" in kafka_env["KAFKA_PROCESS_ROLES"], "KRaft, one node"
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "auto-created topics would not be co-partitioned"
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"] == ["worker"]
    assert services["sink"]["command"] == ["sink"]
    for name in ("worker", "sink"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        env = service["environment"]
        assert env["METERING_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env["METERING_CLICKHOUSE_URL"].startswith("http://")
        assert env["METERING_API_HOST"] == "0.0.0.0"
        assert int(env["METERING_METRICS_PORT"]) in (DEFAULTS.metrics_port, DEFAULTS.metrics_port + 1)
        Settings.from_env({k: re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", v) for k, v in env.items()})
    assert "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]


def test_compose_files_it_mounts_exist() -> None:
    compose = _yaml(COMPOSE_FILE)
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{COMPOSE_FILE.name} mounts {source}, which does not exist"
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    for directory in re.findall(r"^COPY (\w+) ", dockerfile, flags=re.MULTILINE):
        assert (DEPLOY.parent / directory).exists(), f"the Dockerfile copies {directory}, which does not exist"


def _targets(config: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        targets = [t for static in job.get("static_configs", []) for t in static["targets"]]
        targets += [f"{name}:{dns['port']}" for dns in job.get("dns_sd_configs", []) for name in dns["names"]]
        out[job["job_name"]] = targets
    return out


def test_prometheus_scrapes_the_ports_the_pipeline_serves() -> None:
    docker = _targets(_yaml(DEPLOY / "prometheus" / "prometheus.yml"))
    services = _yaml(COMPOSE_FILE)["services"]
    assert docker["metering-sink"] == [f"sink:{services['sink']['environment']['METERING_METRICS_PORT']}"]
    assert docker["metering-worker"] == [f"worker:{services['worker']['environment']['METERING_METRICS_PORT']}"]

    local = _targets(_yaml(DEPLOY / "prometheus" / "prometheus-local.yml"))
    assert local["metering-sink"] == [f"127.0.0.1:{DEFAULTS.metrics_port}"]
    assert local["metering-worker"][0] == f"127.0.0.1:{DEFAULTS.metrics_port + 1}", "worker i: metrics_port + 1 + i"
    # the entitlement endpoint serves /metrics on its own port
    entitlement = services["entitlement"]["environment"]["METERING_ENTITLEMENT_PORT"]
    assert docker["metering-entitlement"] == [f"entitlement:{entitlement}"]
    assert local["metering-entitlement"] == [f"127.0.0.1:{DEFAULTS.entitlement_port}"]


def test_grafana_provisions_both_dashboards_on_its_data_sources() -> None:
    """What the dashboards show is tested in tests/unit/test_dashboards.py; here, that Grafana loads them."""
    sources = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "metering.yml")["datasources"]
    uids = {source["uid"]: source["type"] for source in sources}
    assert uids == {"prometheus": "prometheus", "clickhouse": "grafana-clickhouse-datasource"}
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "metering.yml")["providers"][0]
    grafana = _yaml(COMPOSE_FILE)["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"

    files = sorted(path.name for path in DASHBOARDS.glob("*.json"))
    assert files == ["metering-balances.json", "metering.json"], "the provider loads every file of the folder"
    for name in files:
        dashboard = json.loads((DASHBOARDS / name).read_text())
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        for variable in (variables["clickhouse"], variables["prometheus"]):
            # a data source variable: the provisioned one by default, another of its type after an import
            assert variable["type"] == "datasource"
            assert uids[variable["current"]["value"]] == variable["query"], name
        for panel in _panels(dashboard):
            uid = panel["datasource"]["uid"]
            assert uid in ("${clickhouse}", "${prometheus}"), panel["title"]
            assert variables[uid[2:-1]]["query"] == panel["datasource"]["type"], panel["title"]
            assert panel["targets"], panel["title"]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for row in dashboard["panels"] for p in (row.get("panels", []) if row["type"] == "row" else [row])]


def test_the_usage_dashboard_keeps_its_panels() -> None:
    titles = " | ".join(p["title"].lower() for p in _panels(json.loads(DASHBOARD.read_text())))
    for wanted in (
        "events in by topic",
        "invalid",
        "late",
        "duplicate",
        "billing sessions",
        "open conversations",
        "insert latency",
        "consumer lag",
        "usage per app",
    ):
        assert wanted in titles


# -- Docker (skipped without an engine) -----------------------------------------------------


@cache
def _docker_problem() -> str | None:
    """Why the Docker tests cannot run here, or None when they can."""
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` command on PATH"
    try:
        info = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30, check=False
        )
        compose = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` did not answer ({exc})"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine answers `docker info`: {lines[-1] if lines else 'exit ' + str(info.returncode)}"
    if compose.returncode != 0:
        return "the Docker Compose plugin is missing (`docker compose version` failed)"
    return None


@pytest.fixture(scope="module")
def docker_engine() -> None:
    problem = _docker_problem()
    if problem:
        pytest.skip(f"Docker tests skipped: {problem}")
    pytest.importorskip("testcontainers.compose", reason="Docker tests skipped: testcontainers is not installed")


class Stack:
    """The compose project of one test module: its own name and free host ports."""

    def __init__(self, services: list[str] | None, build: bool) -> None:
        from testcontainers.compose import DockerCompose  # noqa: PLC0415 - only where Docker runs

        self.ports = {
            "KAFKA_HOST_PORT": free_port(),
            "CLICKHOUSE_HTTP_PORT": free_port(),
            "PROMETHEUS_PORT": free_port(),
            "GRAFANA_PORT": free_port(),
            "METERING_API_HOST_PORT": free_port(),
        }
        self.env = {
            "COMPOSE_PROJECT_NAME": f"metering-test-{uuid.uuid4().hex[:8]}",
            **{k: str(v) for k, v in self.ports.items()},
        }
        self.compose = DockerCompose(
            str(DEPLOY), compose_file_name=COMPOSE_FILE.name, build=build, wait=True, services=services
        )

    def __enter__(self) -> Stack:
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)  # `docker compose` reads them for the ${...} in the file
        try:
            self.compose.start()
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.compose.stop(down=True)
        finally:
            for key, value in self._saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def settings(self) -> Settings:
        return Settings(
            kafka_bootstrap=f"127.0.0.1:{self.ports['KAFKA_HOST_PORT']}",
            clickhouse_url=f"http://metering:metering@127.0.0.1:{self.ports['CLICKHOUSE_HTTP_PORT']}/metering",
        )


@pytest.fixture(scope="module")
def infra(docker_engine: None) -> Iterator[Stack]:
    """Only Kafka and ClickHouse from the compose file: no image to build."""
    with Stack(["kafka", "clickhouse"], build=False) as stack:
        yield stack


def _write_traffic(path: Path, count: int, seed: int) -> list[bytes]:
    start = to_ms(datetime.now(UTC)) - 3 * 3600_000
    lines = [traffic.encode(e) for e in traffic.events(start, count, seed=seed)]
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return lines


@pytest.mark.docker
def test_compose_kafka_takes_keyed_events_from_the_host(infra: Stack, tmp_path: Path) -> None:
    settings = infra.settings()
    ensure_topics(settings, settings.topics.inputs)
    path = tmp_path / "events.jsonl"
    lines = _write_traffic(path, 500, seed=21)

    result = produce(settings, path)

    assert (result.sent, result.failed, result.skipped) == (len(lines), 0, 0)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}"})
    consumer.assign(
        [TopicPartition(t, p, OFFSET_BEGINNING) for t in settings.topics.inputs for p in range(settings.partitions)]
    )
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while seen < len(lines) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                key = msg.key()
                assert key is not None
                assert msg.partition() == partition_of(key, settings.partitions)
                seen += 1
    finally:
        consumer.close()
    assert seen == len(lines)


@pytest.mark.docker
def test_compose_clickhouse_takes_the_migrations(infra: Stack) -> None:
    from consumers.clickhouse import connect, migrate, usage  # noqa: PLC0415 - keeps collection light

    settings = infra.settings()
    client = connect(settings.clickhouse_url, "metering")
    try:
        migrate(client, "metering")
        assert migrate(client, "metering") == [], "applied once"
        assert usage(client, "metering", start=None, end=None, apps=[], account=None, period="day", tz="UTC") == []
    finally:
        client.close()


def _http_json(url: str, auth: tuple[str, str] | None = None) -> Any:
    request = urllib.request.Request(url)
    if auth:
        import base64  # noqa: PLC0415

        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.docker
def test_whole_stack_produce_to_usage_round_trip(docker_engine: None, tmp_path: Path) -> None:
    """Events produced from the host come out of ClickHouse as exactly what `metering compute` says."""
    from consumers.clickhouse import ClickHouseError, connect, usage  # noqa: PLC0415

    path = tmp_path / "events.jsonl"
    _write_traffic(path, 3000, seed=5)
    expected = compute(path, zone("UTC"), RulesConfig(), now_ms=to_ms(datetime.now(UTC)), on_invalid=lambda *_: None)
    assert expected.rows

    with Stack(None, build=True) as stack:
        settings = stack.settings()
        deadline = time.monotonic() + 180
        while missing_topics(settings, settings.topics.inputs) and time.monotonic() < deadline:
            time.sleep(2)  # the workers create the topics when they start
        result = produce(settings, path)
        assert result.exit_code == 0, result.errors

        client = connect(settings.clickhouse_url, "metering")
        rows: list[Any] = []
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    rows = usage(
                        client, "metering", start=None, end=None, apps=[], account=None, period="day", tz="UTC"
                    )
                except ClickHouseError:  # the sink may not have applied the migrations yet
                    rows = []
                if rows == expected.rows:
                    break
                time.sleep(5)
        finally:
            client.close()
        assert rows == expected.rows, "ClickHouse usage differs from `metering compute` on the same file"

        targets = _http_json(f"http://127.0.0.1:{stack.ports['PROMETHEUS_PORT']}/api/v1/targets")
        health = {t["labels"]["job"]: t["health"] for t in targets["data"]["activeTargets"]}
        assert health.get("metering-sink") == "up", health
        assert health.get("metering-worker") == "up", health
        grafana = f"http://127.0.0.1:{stack.ports['GRAFANA_PORT']}"
        dashboard = _http_json(f"{grafana}/api/dashboards/uid/metering", auth=("admin", "admin"))
        assert dashboard["dashboard"]["title"] == "Metering"
        balances = _http_json(f"{grafana}/api/dashboards/uid/metering-balances", auth=("admin", "admin"))
        assert balances["dashboard"]["title"] == "Metering balances"
