"""Command line: `tissueseg demo | data check | data synth | version`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import tissueseg

app = typer.Typer(help="tissueseg: pixel-accurate H&E tissue maps from cheap labels.", no_args_is_help=True,
                  add_completion=False)
data_app = typer.Typer(help="Inspect and create datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()

FORMATS = "auto, luad-histoseg, bcss-wsss, wsss4luad, glas, crag, ebhi-seg, folder"


def progress_bar() -> Progress:
    """The progress bar every long command uses (count, bar, ETA)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


@app.command()
def version() -> None:
    """Print the tissueseg version."""
    console.print(f"tissueseg {tissueseg.__version__}")


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
) -> None:
    """Write a synthetic H&E dataset: patch-level labels for training, pixel masks for val/test."""
    write_synthetic(out, n, n_val, n_test, size, seed, labelled_fraction)
    console.print(f"wrote synthetic dataset to {out}")


def write_synthetic(out: Path, n_train: int, n_val: int, n_test: int, size: int, seed: int,
                    labelled_fraction: float) -> Path:
    """Generate the synthetic set with a progress bar."""
    from tissueseg.data.synthetic import write_synthetic_dataset

    with progress_bar() as bar:
        task = bar.add_task("synthesising patches", total=n_train + n_val + n_test)
        write_synthetic_dataset(out, n_train=n_train, n_val=n_val, n_test=n_test, size=size, seed=seed,
                                labelled_fraction=labelled_fraction,
                                progress=lambda i, total: bar.update(task, completed=i, total=total))
    return out


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("tissueseg-demo"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Run the built-in pipeline on synthetic data: generate, check, and write overlays."""
    from tissueseg.data import open_dataset
    from tissueseg.data.check import render_report, summarize
    from tissueseg.data.io import write_png
    from tissueseg.viz import prediction_panel

    data_root = out / "data"
    if not (data_root / "README.txt").exists():
        write_synthetic(data_root, 120, 24, 24, 128, seed, 0.1)
    dataset = open_dataset(data_root, format="luad-histoseg")
    console.print(render_report(summarize(dataset)))
    info = dataset.info
    for i, sample in enumerate(dataset.split("val")[:4]):
        picture = prediction_panel(sample.image, sample.mask, info.classes, info.palette)
        write_png(out / "overlays" / f"val_{i}.png", picture)
    console.print(f"overlays written to {out / 'overlays'}")

