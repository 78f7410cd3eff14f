"""A process started against a Kafka that does not answer ends with one clear line and exit 69.

Real client, real closed port; only the wait is shortened (60 s in production) so the test is quick.
"""

from __future__ import annotations

import functools
import socket

import pytest
from click.testing import CliRunner

import consumers.notifier
import pipeline.stream.worker
from cli.main import EXIT_UNAVAILABLE, main
from pipeline.infra.kafka import wait_for_broker


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.parametrize(("command", "module"), [("worker", pipeline.stream.worker), ("notify", consumers.notifier)])
def test_an_unreachable_broker_is_named_with_what_to_check(
    command: str, module: object, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setattr(module, "wait_for_broker", functools.partial(wait_for_broker, timeout=1.5))
    bootstrap = f"127.0.0.1:{closed_port()}"
    env = {"METERING_KAFKA_BOOTSTRAP": bootstrap, "METERING_DATA_DIR": str(tmp_path), "METERING_LOG_LEVEL": "ERROR"}
    result = CliRunner().invoke(main, [command, "--metrics-port", "0"], env=env)
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert f"Kafka at {bootstrap} did not answer" in result.stderr
    assert "check METERING_KAFKA_BOOTSTRAP" in result.stderr
    assert "Traceback" not in result.stderr
