"""A byte-progress bar for long reads on a terminal (compute, produce); silent otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

OnProgress = Callable[[int], None]
MIN_BYTES: Final = 8 * 1024 * 1024


class FileProgress:
    """``with FileProgress(console, size, "label") as on_progress:``; ``on_progress`` is None off a terminal."""

    def __init__(self, console: Console, total: int, label: str) -> None:
        self._progress: Progress | None = None
        if console.is_terminal and total > MIN_BYTES:
            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
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
