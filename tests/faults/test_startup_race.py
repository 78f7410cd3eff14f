"""`metering usage` polled from the first moment of `metering run` never breaks its start (issue 13).

Readers poll from before the run takes its data directory, through its start, until after it
serves; another one holds the embedded database open for a few seconds as the run starts. The
stack comes up every time (a fresh data directory, then a restart), every poll answers, and a
poll that came while the store was starting says it waited for it; the store waits for the
reader that holds the database instead of failing on chDB's lock.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from pipeline.infra.settings import Settings
from tests.faults.harness import MeteringRun

pytestmark = [pytest.mark.faults, pytest.mark.integration]

HEADER = "account_id,app_id,day,conversations,usage_sessions,voice_sessions,alert_sessions,billing_sessions"
WAITING = "waiting for the metering service starting on"

#: A reader that opens the embedded database itself (no store serves yet) and keeps it for a while.
HOLD_DATABASE = """
import sys, time
from cli.usage_command import open_client, reach_store
from pipeline.infra.settings import Settings
settings = Settings.from_env().with_clickhouse_default()
hold = reach_store(settings)
client = open_client(settings)
print("holding", flush=True)
time.sleep(float(sys.argv[1]))
client.close()
hold.release()
"""


@dataclass(frozen=True)
class Poll:
    started: float
    ended: float
    code: int
    stdout: str
    stderr: str


class Pollers:
    """``count`` threads running `metering usage --format csv` one after another until stopped."""

    def __init__(self, env: dict[str, str], count: int) -> None:
        self.env = env
        self.polls: list[Poll] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, daemon=True) for _ in range(count)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "cli", "usage", "--format", "csv"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            self.polls.append(Poll(started, time.monotonic(), done.returncode, done.stdout, done.stderr))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=600)


def test_readers_polling_from_the_first_moment_never_break_the_start(stack_settings: Settings, tmp_path: Path) -> None:
    settings = replace(stack_settings, data_dir=tmp_path / "run", workers=1)
    run = MeteringRun(settings, tmp_path)
    env = run.env()
    try:
        for attempt in (1, 2):  # a fresh data directory, then a restart on it
            holder = None
            if attempt == 1:
                holder = subprocess.Popen(
                    [sys.executable, "-c", HOLD_DATABASE, "5"], env=env, stdout=subprocess.PIPE, text=True
                )
                assert holder.stdout is not None
                assert holder.stdout.readline().strip() == "holding"
            pollers = Pollers(env, 3)
            pollers.start()
            time.sleep(0.5)  # the first polls are under way before the run exists
            run.launch()
            run.wait_serving(timeout=300)
            served = time.monotonic()
            deadline = served + 300
            while sum(p.started > served for p in pollers.polls) < 3 and time.monotonic() < deadline:
                time.sleep(0.5)
            pollers.stop()
            if holder is not None:
                assert holder.wait(timeout=60) == 0
            polls = pollers.polls
            assert sum(p.started > served for p in polls) >= 3, "polls went on after the start"
            for poll in polls:
                assert poll.code == 0, f"a poll failed: {poll.stderr}"
                assert poll.stdout.splitlines()[0].startswith(HEADER)
                said = poll.stderr.splitlines()
                assert said == [] or (len(said) == 1 and said[0].startswith(WAITING)), poll.stderr
            waited = [p for p in polls if WAITING in p.stderr]
            assert waited, "a poll came while the store was starting and said it waited"
            print(f"attempt {attempt}: {len(polls)} polls, {len(waited)} waited for the starting service")
            if attempt == 1:
                log = (tmp_path / "run-1.log").read_text(errors="replace")
                assert "waiting for the commands reading the embedded database" in log, "the store waited"
            run.stop()
    finally:
        run.close()
