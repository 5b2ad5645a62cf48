"""Pull progress for a human: a rich bar on a TTY, nothing otherwise (stdout stays machine-readable)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class PullProgress:
    def __init__(self, label: str, enabled: bool) -> None:
        self._console = Console(file=sys.stderr)
        self._enabled = enabled and self._console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._label = label

    def __enter__(self) -> Callable[[dict], None]:
        if self._enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"),
                console=self._console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._label, total=None, note="")
        return self.emit

    def emit(self, ev: dict) -> None:
        if not self._progress:
            return
        if ev.get("event") == "progress":
            note = f"{ev['files_done']}/{ev['files_total']} files"
            self._progress.update(self._task, total=ev["total"], completed=ev["done"], note=note)
        elif ev.get("event") == "waiting":
            self._progress.update(self._task, note=ev.get("detail", ""))
        elif ev.get("event") == "linger":
            note = f"done; serving {ev['peers']} node(s) that still need pieces before exit"
            self._progress.update(self._task, note=note)
        elif ev.get("event") == "agent":
            self._progress.update(self._task, note=f"via agent {ev['url']}")

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self._progress.stop()
