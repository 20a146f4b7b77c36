"""What every command shares: the console, progress bars, and turning known errors into clean exits."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(width=max(Console().width, 120))


class App(typer.Typer):
    """The root command. Under torchrun a command that started a process group ends it here, before the
    interpreter finalises: a final barrier after success, then the teardown (see engine.distributed)."""

    def __call__(self, *args, **kwargs):
        finished = False
        try:
            result = super().__call__(*args, **kwargs)
            finished = True
            return result
        except SystemExit as exc:  # click ends every command with sys.exit(code)
            finished = exc.code in (None, 0)
            raise
        finally:
            engine = sys.modules.get("tissueseg.engine.distributed")  # imported by any command that used DDP
            if engine is not None:
                engine.shutdown_distributed(barrier=finished)


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
