"""`tissueseg data check | synth`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tissueseg.cli.common import FORMATS, console, progress_bar, user_errors

data_app = typer.Typer(help="Inspect and create datasets.", no_args_is_help=True)


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="Dataset root folder.")],
    format: Annotated[str, typer.Option("--format", "-f", help=f"Dataset format: {FORMATS}.")] = "auto",
) -> None:
    """Count images per split, class frequencies and every problem; exit 1 if a problem would break training."""
    from tissueseg.data import DatasetError, open_dataset
    from tissueseg.data.check import render_report, summarize

    try:
        dataset = open_dataset(path, format=format, strict=False)
    except DatasetError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    summary = summarize(dataset)
    console.print(render_report(summary))
    if summary["fatal"]:
        raise typer.Exit(1)


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Output folder (LUAD-HistoSeg layout).")],
    n: Annotated[int, typer.Option("--n", help="Number of training patches.")] = 200,
    n_val: Annotated[int, typer.Option(help="Number of validation patches.")] = 40,
    n_test: Annotated[int, typer.Option(help="Number of test patches.")] = 40,
    size: Annotated[int, typer.Option(help="Patch size in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    labelled_fraction: Annotated[float, typer.Option(help="Fraction of training cases with pixel labels.")] = 0.1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing synthetic dataset in OUT.")] = False,
) -> None:
    """Write a synthetic H&E dataset: patch-level labels for training, pixel masks for val/test."""
    with user_errors():
        write_synthetic(out, n, n_val, n_test, size, seed, labelled_fraction, overwrite)
    console.print(f"wrote synthetic dataset to {out}")


def write_synthetic(out: Path, n_train: int, n_val: int, n_test: int, size: int, seed: int,
                    labelled_fraction: float, overwrite: bool = False) -> Path:
    """Generate the synthetic set with a progress bar."""
    from tissueseg.data.synthetic import write_synthetic_dataset

    with progress_bar() as bar:
        task = bar.add_task("synthesising patches", total=n_train + n_val + n_test)
        write_synthetic_dataset(out, n_train=n_train, n_val=n_val, n_test=n_test, size=size, seed=seed,
                                labelled_fraction=labelled_fraction, overwrite=overwrite,
                                progress=lambda i, total: bar.update(task, completed=i, total=total))
    return out


