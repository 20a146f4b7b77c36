"""`tissueseg wsss train-cls | pseudo-masks | train-seg | evaluate | run` — weakly supervised MLPS and PLIMSeg.

The config's ``method`` (``mlps`` or ``plimseg``) picks the recipe; the stages are the same commands.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from tissueseg.cli.common import console, user_errors

wsss_app = typer.Typer(help="Weakly supervised segmentation from patch-level labels (MLPS, PLIMSeg).",
                       no_args_is_help=True)

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML): method, data, backbone, classifier, segmenter, "
                                                "plimseg, out_dir.")]


def _open(config: Path):
    from tissueseg.config import load_config
    from tissueseg.engine.run import RunContext

    return RunContext.open(load_config(config), console=console)


def _method(run) -> ModuleType:
    """The recipe module of the run's method."""
    if run.config.method == "plimseg":
        from tissueseg.methods import plimseg

        return plimseg
    from tissueseg.methods import mlps

    return mlps


@wsss_app.command("train-cls")
def train_cls(config: ConfigArg) -> None:
    """Stage 1: the patch classifier (MLPS: with PDA; PLIMSeg: the matcher, then the matching losses)."""
    with user_errors():
        run = _open(config)
        _method(run).train_stage(run)


@wsss_app.command("pseudo-masks")
def pseudo_masks(config: ConfigArg) -> None:
    """Write pseudo masks for the training patches and score them where masks exist."""
    with user_errors():
        run = _open(config)
        report = _method(run).pseudo_masks_stage(run)
    for i, layer in enumerate(report["layers"]):
        if layer is not None:
            console.print(f"layer {i + 1}: pseudo-mask mIoU {100 * layer['miou']:.1f}")


@wsss_app.command("train-seg")
def train_seg(config: ConfigArg) -> None:
    """Stage 2: train DeepLabV3+ on the pseudo masks (Σ λ_l CE over their layers), gated at test time."""
    with user_errors():
        run = _open(config)
        _method(run).train_segmenter_stage(run)


@wsss_app.command("evaluate")
def evaluate(config: ConfigArg) -> None:
    """Score the gated stage-2 model on the test split; writes metrics, overlays and model.pt."""
    from tissueseg.engine.run import write_json
    from tissueseg.methods.mlps import results_table

    with user_errors():
        run = _open(config)
        scores = _method(run).evaluate_stage(run)
    write_json(run.out_dir / "test_metrics.json", scores)
    key = "mlps" if run.config.method == "mlps" else f"plimseg_{run.config.plimseg.stage2}"
    named = {"matcher": scores["matcher"]} if scores.get("matcher") else {}
    console.print(results_table({key: {"test": scores}, **named}, run.info.label_classes))


@wsss_app.command("run")
def run_all(
    config: ConfigArg,
    references: Annotated[bool, typer.Option(help="Also train the CAM baseline and the fully supervised model "
                                                  "(PLIMSeg: and the other pseudo-mask variant).")] = False,
) -> None:
    """Chain all stages from one config; rerun to resume after an interruption."""
    from tissueseg.methods.mlps import results_table

    with user_errors():
        run = _open(config)
        method = _method(run)
        results = method.run_mlps(run, references) if run.config.method == "mlps" else method.run_plimseg(
            run, references)
    console.print(results_table(results, run.info.label_classes))
    console.print(f"outputs in {run.out_dir}")
