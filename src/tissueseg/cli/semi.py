"""`tissueseg semi train | evaluate` — semi-supervised segmentation from a few pixel-labelled images (UniSemAlign)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tissueseg.cli.common import console, user_errors

semi_app = typer.Typer(help="Semi-supervised segmentation from a few labelled images (UniSemAlign).",
                       no_args_is_help=True)

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML): data, labelled_fraction or labelled_count, "
                                                "backbone, train, unisemalign, text, evaluation, out_dir.")]


def _open(config: Path):
    from tissueseg.config import SemiConfig, load_config
    from tissueseg.engine.run import RunContext

    return RunContext.open(load_config(config, SemiConfig), console=console)


@semi_app.command("train")
def train(
    config: ConfigArg,
    references: Annotated[bool, typer.Option(
        help="Also train the references: supervised only, consistency only and fully supervised.")] = False,
) -> None:
    """Train the configured method (default UniSemAlign); rerun to resume after an interruption.

    The best epoch by validation mDice is kept; `tissueseg semi evaluate` scores it on the test split.
    """
    from tissueseg.methods.registry import get_method
    from tissueseg.methods.unisemalign import ROWS

    with user_errors():
        run = _open(config)
        method = run.config.method
        rows = [r for r in ROWS if r == method or references]
        results = get_method("unisemalign").stages["train"](run, rows)
    for row in rows:
        console.print(f"{row}: trained in {results.get(row, {}).get('train_seconds', '?')} s")
    console.print(f"checkpoints in {run.out_dir / 'checkpoints'}; next: tissueseg semi evaluate {config}")


@semi_app.command("evaluate")
def evaluate(config: ConfigArg) -> None:
    """Score every trained row on the test split (sliding window), write metrics.json, overlays and model.pt."""
    from tissueseg.methods.registry import get_method, results_table
    from tissueseg.methods.unisemalign import labelled_records

    with user_errors():
        run = _open(config)
        labelled, unlabelled = labelled_records(run)
        results = get_method("unisemalign").stages["evaluate"](run)
    console.print(results_table(results, "semi",
                                labelled=f"{len(labelled)} of {len(labelled) + len(unlabelled)} labelled"))
    console.print(f"metrics in {run.out_dir / 'metrics.json'}, overlays in {run.out_dir / 'overlays'}, "
                  f"model in {run.out_dir / 'model.pt'}")
