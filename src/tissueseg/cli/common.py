"""What every command shares: the console, progress bars, and turning known errors into clean exits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(width=max(Console().width, 120))

FORMATS = "auto, luad-histoseg, bcss-wsss, wsss4luad, glas, crag, ebhi-seg, folder"


def progress_bar() -> Progress:
    """The progress bar every long command uses (count, bar, ETA)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print bad-input errors (they name the file and the fix) without a traceback; exit 1."""
    from tissueseg.data.io import ImageReadError
    from tissueseg.data.sample import DatasetError
    from tissueseg.engine.trainer import NonFiniteLossError
    from tissueseg.models.weights import WeightsNotFoundError

    try:
        yield
    except (DatasetError, ImageReadError, NonFiniteLossError, WeightsNotFoundError, FileNotFoundError, FileExistsError,
            ImportError,
            ValueError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from exc
