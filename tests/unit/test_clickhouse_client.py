"""METERING_CLICKHOUSE_URL parsing and the connection errors people will actually see.

chDB opens one directory per process, so every ClickHouse test module connects to the same
session-wide path (``<basetemp>/chdb``).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from consumers.clickhouse import ClickHouseConfigError, ClickHouseUnavailableError, Client, connect, parse_url
from consumers.clickhouse.client import Target, redact


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("chdb:///var/lib/metering/ch", Target(scheme="chdb", path="/var/lib/metering/ch")),
        ("chdb:///data/with%20space/", Target(scheme="chdb", path="/data/with space")),
        ("http://localhost", Target(scheme="http", host="localhost", port=8123)),
        (
            "https://meter:p%40ss@ch.example.com:9440/billing",
            Target(
                scheme="https", host="ch.example.com", port=9440, username="meter", password="p@ss", database="billing"
            ),
        ),
        ("HTTP://u@127.0.0.1:8124/", Target(scheme="http", host="127.0.0.1", port=8124, username="u")),
    ],
)
def test_parse_url(url: str, target: Target) -> None:
    assert parse_url(url) == target


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("chdb://relative/path", "has no host"),
        ("chdb:relative", "absolute directory"),
        ("chdb:///", "absolute directory"),
        ("tcp://localhost:9000", "unsupported scheme 'tcp'"),
        ("localhost:8123", "unsupported scheme"),
        ("", "no scheme"),
        ("http://", "no host"),
        ("http://host:notaport", "not a valid URL"),
        ("http://host/a/b", "one database only"),
        ("http://host/db?secure=1", "query strings"),
    ],
)
def test_bad_urls_name_the_setting_and_the_fix(url: str, problem: str) -> None:
    with pytest.raises(ClickHouseConfigError, match=problem) as info:
        parse_url(url)
    assert "METERING_CLICKHOUSE_URL" in str(info.value)
    assert "chdb:///absolute/directory" in str(info.value)


def test_bad_database_names_are_refused() -> None:
    with pytest.raises(ClickHouseConfigError, match="plain identifier"):
        parse_url("http://host/bad-name")
    with pytest.raises(ClickHouseConfigError, match="plain identifier"):
        connect("chdb:///tmp/x", "1metering")


def test_passwords_never_appear_in_messages() -> None:
    assert redact("https://meter:s3cret@host:8443/db") == "https://meter:***@host:8443/db"
    with pytest.raises(ClickHouseConfigError) as info:
        parse_url("https://meter:s3cret@host:8443/a/b")
    assert "s3cret" not in str(info.value)


def test_url_database_must_agree_with_the_setting() -> None:
    with pytest.raises(ClickHouseConfigError, match="names database 'billing' but the metering database setting is"):
        connect("http://u:pw@127.0.0.1:1/billing", "metering")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_retried_then_named(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(ClickHouseUnavailableError) as info:
        connect(f"http://meter:s3cret@127.0.0.1:{port}", "metering", attempts=2, backoff_s=0)
    message = str(info.value)
    assert f"127.0.0.1:{port} after 2 attempts" in message
    assert "METERING_CLICKHOUSE_URL" in message
    assert "s3cret" not in message


def test_a_second_embedded_path_in_one_process_is_a_config_error(chdb_client: Client, tmp_path: Path) -> None:
    with pytest.raises(ClickHouseConfigError, match="one per process"):
        connect(f"chdb://{tmp_path / 'other'}", "metering")


def test_the_same_embedded_path_can_be_shared_within_a_process(
    chdb_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = connect(f"chdb://{tmp_path_factory.getbasetemp() / 'chdb'}", "metering")
    try:
        assert other.command("SELECT 1") == 1
    finally:
        other.close()


def test_an_embedded_database_open_in_another_process_is_named(
    chdb_client: Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = f"chdb://{tmp_path_factory.getbasetemp() / 'chdb'}"
    script = textwrap.dedent(
        f"""
        from consumers.clickhouse import ClickHouseUnavailableError, connect
        try:
            connect({url!r}, "metering")
        except ClickHouseUnavailableError as exc:
            print(exc)
        """
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=root, check=False
    )
    assert "is open in another process" in done.stdout, done.stdout + done.stderr
    assert "metering usage" in done.stdout
