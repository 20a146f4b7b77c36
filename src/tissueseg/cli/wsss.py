"""`tissueseg wsss train-cls | pseudo-masks | train-seg | evaluate | run` — weakly supervised MLPS and PLIMSeg.

The config's ``method`` (``mlps`` or ``plimseg``) picks the recipe from the method registry; the stages
are the same commands.
"""

from __future__ import annotations

from pathlib import Path
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


def _stage(run, stage: str):
    """The run's method's function for CLI ``stage``."""
    from tissueseg.methods.registry import get_method

    return get_method(run.config.method).stages[stage]


@wsss_app.command("train-cls")
def train_cls(config: ConfigArg) -> None:
    """Stage 1: the patch classifier (MLPS: with PDA; PLIMSeg: the matcher, then the matching losses)."""
    with user_errors():
        run = _open(config)
        _stage(run, "train-cls")(run)


@wsss_app.command("pseudo-masks")
def pseudo_masks(config: ConfigArg) -> None:
    """Write pseudo masks for the training patches and score them where masks exist."""
    with user_errors():
        run = _open(config)
        report = _stage(run, "pseudo-masks")(run)
    for i, layer in enumerate(report["layers"]):
        if layer is not None:
            console.print(f"layer {i + 1}: pseudo-mask mIoU {100 * layer['miou']:.1f}")


@wsss_app.command("train-seg")
def train_seg(config: ConfigArg) -> None:
    """Stage 2: train DeepLabV3+ on the pseudo masks (Σ λ_l CE over their layers), gated at test time."""
    with user_errors():
        run = _open(config)
        _stage(run, "train-seg")(run)


@wsss_app.command("evaluate")
def evaluate(config: ConfigArg) -> None:
    """Score the gated stage-2 model on the test split; writes metrics, overlays and model.pt."""
    from tissueseg.methods.registry import get_method, results_table

    with user_errors():
        run = _open(config)
        method = get_method(run.config.method)
        scores = method.stages["evaluate"](run)
    run.save_json(run.out_dir / "test_metrics.json", scores)
    named = {"matcher": scores["matcher"]} if scores.get("matcher") else {}
    console.print(results_table({method.evaluate_key(run): {"test": scores}, **named}, "wsss", run.info.label_classes))


@wsss_app.command("run")
def run_all(
    config: ConfigArg,
    references: Annotated[bool, typer.Option(help="Also train the CAM baseline and the fully supervised model "
                                                  "(PLIMSeg: and the other pseudo-mask variant).")] = False,
) -> None:
    """Chain all stages from one config; rerun to resume after an interruption."""
    from tissueseg.methods.registry import get_method, results_table

    with user_errors():
        run = _open(config)
        results = get_method(run.config.method).run(run, references)
    console.print(results_table(results, "wsss", run.info.label_classes))
    console.print(f"outputs in {run.out_dir}")
