"""Who may open a data directory's embedded database: the store process, or short-lived readers, never both.

chDB lets one process open a database directory. The store and the commands that read agree through
``<data_dir>/run/store.lock``, an advisory ``flock`` the kernel releases even on SIGKILL: readers ask a
serving store, wait for a starting one, or hold the lock while they read. The protocol: docs/store-lock.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from cli.service import pid_alive

__all__ = [
    "DataDirBusyError",
    "Holder",
    "ReaderHold",
    "StoreLock",
    "holder",
    "lock_file",
    "process_start_time",
    "try_reader_hold",
]

LOCK_NAME: Final = "store.lock"
INTENT_NAME: Final = "store.starting"
#: How long a starting store waits for readers that hold the data directory before it gives up.
READERS_WAIT_SECONDS: Final = 60.0
_RETRY_SECONDS: Final = 0.1


class DataDirBusyError(RuntimeError):
    """Another store owns the data directory, or readers did not let go of it; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class Holder:
    """The store that owns (or is about to own) a data directory, as it announced itself."""

    pid: int
    command: str
    since: float
    #: the process's start time (clock ticks after boot, ``/proc/<pid>/stat``): with it, a process that got
    #: the pid of a dead holder is not taken for it (files written before it had none)
    started: int | None = None

    def describe(self) -> str:
        return f"{self.command}, pid {self.pid}, since {time.strftime('%H:%M:%S', time.localtime(self.since))}"


def lock_file(data_dir: Path) -> Path:
    return data_dir / "run" / LOCK_NAME


def _intent_file(data_dir: Path) -> Path:
    return data_dir / "run" / INTENT_NAME


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot, field 22 of ``/proc/<pid>/stat``); None if unknown or gone.

    A pid and its start time name one process for good, where a pid alone comes round again (quickly: pid_max
    may be 32768), so a lock file naming a store that died by SIGKILL is not taken for a live holder.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": comm may hold spaces and parentheses
    try:
        return int(fields[19])  # starttime is field 22; state (field 3) is fields[0]
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int, started: int | None = None) -> bool:
    """The holder still runs: the same start time when it recorded one; else alive and, where /proc tells, a
    Python process (not an unrelated one that got a dead store's pid)."""
    if not pid_alive(pid):
        return False
    if started is not None:
        now = process_start_time(pid)
        return now is None or now == started  # None: no /proc to tell (not Linux)
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"python" in command or b"metering" in command


def _read_holder(path: Path) -> Holder | None:
    """The holder a file names, if that process is still alive."""
    try:
        found = Holder(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    return found if _pid_alive(found.pid, found.started) else None


def holder(data_dir: Path) -> Holder | None:
    """The store that owns the data directory, or waits to: from the lock file, else its intent."""
    return _read_holder(lock_file(data_dir)) or _read_holder(_intent_file(data_dir))


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _write_json(path: Path, value: Holder) -> None:
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(value)) + "\n", encoding="utf-8")
    os.replace(temporary, path)


class ReaderHold:
    """A reader's hold: while it lasts, no store nor other reader opens the database; release it after closing."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class StoreLock(ReaderHold):
    """A store's hold on its data directory, from :meth:`acquire` to :meth:`release` (or its exit)."""

    def __init__(self, fd: int, data_dir: Path) -> None:
        super().__init__(fd)
        self.data_dir = data_dir

    @classmethod
    def acquire(
        cls,
        data_dir: Path,
        command: str,
        *,
        readers_wait: float = READERS_WAIT_SECONDS,
        on_wait: Callable[[str], None] | None = None,
    ) -> StoreLock:
        """Take the data directory for this process; DataDirBusyError if another store has it."""
        path = lock_file(data_dir)
        me = Holder(os.getpid(), command, time.time(), process_start_time(os.getpid()))
        fd = _open(path)
        deadline = time.monotonic() + readers_wait
        intent = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                other = _read_holder(path)
                if other is not None:  # a store wrote its name in the lock it holds; readers write nothing
                    raise DataDirBusyError(
                        f"another metering service ({other.describe()}) owns the data directory {data_dir}: stop "
                        "it, or give this one another METERING_DATA_DIR"
                    )
                if not intent:
                    _write_json(_intent_file(data_dir), me)
                    intent = True
                    if on_wait is not None:
                        on_wait(
                            f"waiting for the commands reading the embedded database in {data_dir} (metering usage, "
                            "plans, migrate or reconcile) to finish; new ones wait for this service"
                        )
                if time.monotonic() >= deadline:
                    raise DataDirBusyError(
                        f"commands reading the embedded database in {data_dir} held it for {readers_wait:.0f} s: "
                        "let them finish (or stop them), then start this service again"
                    )
                time.sleep(_RETRY_SECONDS)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        finally:
            if intent:
                with contextlib.suppress(FileNotFoundError):
                    _intent_file(data_dir).unlink()
        return cls(fd, data_dir)

    def release(self) -> None:
        """Clear the announcement and let the data directory go (exiting does the same)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
        super().release()


def try_reader_hold(data_dir: Path) -> ReaderHold | None:
    """A hold if nobody has the data directory and no store waits for it; else None (:func:`holder` names a store)."""
    if _read_holder(_intent_file(data_dir)) is not None:
        return None
    try:
        fd = _open(lock_file(data_dir))
    except OSError:
        return ReaderHold(None)  # a data directory this user cannot write: chDB will say why it cannot open it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if _read_holder(_intent_file(data_dir)) is not None:  # a store announced itself meanwhile: it goes first
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # whatever the file names held the lock no more (a store SIGKILLed)
        os.ftruncate(fd, 0)
    return ReaderHold(fd)
