"""Progress of long work: a live bar on a terminal, and one plain line at a steady interval
elsewhere (output redirected to a file, CI logs), so a long job is never silent between its
first and last line."""

from __future__ import annotations

import sys
import time

INTERVAL = 30.0  # seconds between two progress lines when the output is not a terminal


class Progress:
    """``update(advance, status)`` counts work done out of ``total``; ``status`` is a short
    text shown beside the count (e.g. ``"45 networks/s  loss 0.4321"``).

    On a terminal: a rich bar, removed when done. Elsewhere: ``label: done/total unit,
    status`` on stdout at most every ``interval`` seconds (none for work shorter than that).
    """

    def __init__(self, label: str, total: int, unit: str = "", enabled: bool = True,
                 interval: float = INTERVAL, terminal: bool | None = None, clock=time.monotonic):
        self.label, self.total, self.unit, self.interval, self.clock = label, total, unit, interval, clock
        self.enabled = enabled
        self.done, self.status = 0, ""
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.bar = None
        self.last_line = clock()
        if enabled and self.terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.bar = Bar(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                           TimeRemainingColumn(), transient=True)
            self.task = self.bar.add_task(label, total=total, status="")

    def __enter__(self) -> "Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, advance: int, status: str = "") -> None:
        self.done += advance
        self.status = status
        if self.bar is not None:
            self.bar.update(self.task, advance=advance, status=status)
        elif self.enabled and self.clock() - self.last_line >= self.interval:
            self.last_line = self.clock()
            unit = f" {self.unit}" if self.unit else ""
            print(f"{self.label}: {self.done:,}/{self.total:,}{unit}" + (f", {status}" if status else ""), flush=True)
