"""Pipeline commands as real child processes (``python -m cli <command>``), as in production.

Each process of a pool logs to ``<command>-<i>.log`` in the pool's directory; a process that
serves metrics announces the URL in its log, which is where the tests find it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.infra.settings import Settings
from tests.support import wait_until


class ChildProcesses:
    """Every process of one pipeline command started by a test; ``close`` kills those still running."""

    def __init__(self, settings: Settings, log_dir: Path, command: str, announcement: str) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.command = command
        #: The ``msg`` of the log line that carries the process's metrics URL.
        self.announcement = announcement
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.to_env(), "METERING_LOG_FORMAT": "json", **extra_env}
        log = self.log_path(len(self.processes)).open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", self.command, *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"{self.command}-{index}.log"

    def announced_url(self, process: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
        """The metrics URL ``process`` announced in its log."""
        path = self.log_path(self.processes.index(process))
        found: list[str] = []

        def announced() -> bool:
            assert process.poll() is None, f"the {self.command} exited with {process.returncode}:\n{self.logs()}"
            for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
                if f'"{self.announcement}"' in line:
                    found.append(json.loads(line)["url"])
                    return True
            return False

        wait_until(announced, timeout, f"the {self.command} to serve its metrics", every=0.2)
        return found[0]

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
        """SIGTERM, as an operator or an orchestrator would; the process must exit by itself."""
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=timeout)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.kill()
        process.wait()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    def logs(self) -> str:
        logs = sorted(self.log_dir.glob(f"{self.command}-*.log"))
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in logs)
