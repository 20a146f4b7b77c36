"""`tissueseg wsss train-cls | pseudo-masks | train-seg | evaluate | run` — weakly supervised MLPS."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tissueseg.cli.common import console, user_errors

wsss_app = typer.Typer(help="Weakly supervised segmentation from patch-level labels (MLPS).", no_args_is_help=True)

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML): data, backbone, classifier, segmenter, out_dir.")]


def _open(config: Path):
    from tissueseg.config import load_config
    from tissueseg.engine.run import RunContext

    return RunContext.open(load_config(config), console=console)


@wsss_app.command("train-cls")
def train_cls(config: ConfigArg) -> None:
    """Stage 1: train the patch classifier with Progressive Dropout Attention."""
    from tissueseg.methods.mlps import train_classifier

    with user_errors():
        run = _open(config)
        train_classifier(run, pda=run.config.classifier.pda)


@wsss_app.command("pseudo-masks")
def pseudo_masks(config: ConfigArg) -> None:
    """Write multi-layer Grad-CAM pseudo masks for the training patches and score them where masks exist."""
    from tissueseg.methods.mlps import pseudo_masks_stage

    with user_errors():
        report = pseudo_masks_stage(_open(config))
    for i, layer in enumerate(report["layers"]):
        if layer is not None:
            console.print(f"layer {i + 1}: pseudo-mask mIoU {100 * layer['miou']:.1f}")


@wsss_app.command("train-seg")
def train_seg(config: ConfigArg) -> None:
    """Stage 2: train DeepLabV3+ with multi-layer pseudo-supervision."""
    from tissueseg.methods.mlps import train_segmenter_stage

    with user_errors():
        train_segmenter_stage(_open(config))


@wsss_app.command("evaluate")
def evaluate(config: ConfigArg) -> None:
    """Score the gated stage-2 model on the test split; writes metrics, overlays and model.pt."""
    from tissueseg.engine.run import write_json
    from tissueseg.methods.mlps import evaluate_stage, results_table

    with user_errors():
        run = _open(config)
        scores = evaluate_stage(run)
    write_json(run.out_dir / "test_metrics.json", scores)
    console.print(results_table({"mlps": {"test": scores}}, run.info.label_classes))


@wsss_app.command("run")
def run_all(
    config: ConfigArg,
    references: Annotated[bool, typer.Option(help="Also train the CAM baseline and the fully supervised model.")]
    = False,
) -> None:
    """Chain all stages from one config; rerun to resume after an interruption."""
    from tissueseg.methods.mlps import results_table, run_mlps

    with user_errors():
        run = _open(config)
        results = run_mlps(run, references=references)
    console.print(results_table(results, run.info.label_classes))
    console.print(f"outputs in {run.out_dir}")
