"""A progress bar for long reads on a terminal (compute, produce, reconcile); silent otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

OnProgress = Callable[[int], None]
MIN_BYTES: Final = 8 * 1024 * 1024
#: Kafka messages: reading fewer is quick enough to go without a bar.
MIN_MESSAGES: Final = 100_000


class FileProgress:
    """``with FileProgress(console, size, "label") as on_progress:``; ``on_progress`` is None off a terminal.

    ``unit="messages"`` counts messages (a topic read) instead of bytes.
    """

    def __init__(
        self, console: Console, total: int, label: str, *, unit: Literal["bytes", "messages"] = "bytes"
    ) -> None:
        self._progress: Progress | None = None
        minimum = MIN_BYTES if unit == "bytes" else MIN_MESSAGES
        if console.is_terminal and total > minimum:
            counts: tuple[ProgressColumn, ...] = (
                (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
            )
            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                *counts,
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> OnProgress | None:
        if self._progress is None:
            return None
        self._progress.start()
        progress, task = self._progress, self._task
        return lambda done: progress.update(task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
