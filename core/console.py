"""One rich console for progress bars and tables (stderr keeps stdout clean for JSON)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
if not console.is_terminal:  # logs (CI, pipes): no 80-column wrapping
    console = Console(stderr=True, width=160)


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
        console=console, transient=False,
    )
