"""`tissueseg predict MODEL INPUT… --out DIR` — class maps, GeoJSON, areas and a report for slides and images."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from tissueseg.cli.common import console, progress_bar, user_errors


def predict(
    model: Annotated[Path, typer.Argument(help="model.pt written by a training run (e.g. `wsss evaluate`).")],
    inputs: Annotated[list[Path], typer.Argument(
        help="Whole-slide images (SVS, NDPI, MRXS, SCN, pyramidal TIFF…), ordinary images (PNG, JPEG, TIFF), "
             "or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; one subfolder per slide.")],
    mpp: Annotated[float | None, typer.Option(
        help="Level-0 microns per pixel of the inputs, overriding their metadata.")] = None,
    target_mpp: Annotated[float | None, typer.Option(
        help="Microns per pixel to predict at (default: the model's training resolution).")] = None,
    tile_size: Annotated[int | None, typer.Option(
        help="Tile side in working pixels (default: the model's training tile size).")] = None,
    overlap: Annotated[int | None, typer.Option(help="Overlap between tiles in pixels (default: tile/4).")] = None,
    batch_size: Annotated[int, typer.Option(help="Tiles per forward pass.")] = 16,
    workers: Annotated[int, typer.Option(help="DataLoader processes reading tiles ahead.")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (torchrun: each rank its own GPU).")]
    = "auto",
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Flip test-time augmentation.")] = False,
    amp: Annotated[bool, typer.Option(
        "--amp/--no-amp",
        help="bf16 autocast + channels_last where it is faster: CUDA, and CPUs with AMX (Intel Sapphire Rapids "
             "and later); fp32 on other CPUs. --no-amp: fp32 everywhere.")] = True,
    tissue: Annotated[bool, typer.Option("--tissue/--no-tissue",
                                         help="Detect tissue and skip glass (off: predict every tile).")] = True,
    mask_glass: Annotated[bool | None, typer.Option(
        "--mask-glass/--keep-glass",
        help="Mark pixels outside the tissue mask as not analysed (default: only for models "
             "without a background class).")] = None,
    reader: Annotated[str, typer.Option(help="auto, openslide, tiff or image.")] = "auto",
    polygon_tolerance: Annotated[float | None, typer.Option(
        help="µm the GeoJSON outlines may deviate from the class map (simplification; 0 = exact pixel edges; "
             "level-0 px for slides without an MPP). Default: 2 µm, at least one pixel of the traced map.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo slides that are already finished.")] = False,
) -> None:
    """Segment slides and images with a trained model; rerun to resume, finished slides are skipped.

    Per input, OUT/<name>/ gets classmap.tif (pyramidal, opens in QuPath/OpenSlide), classes.geojson
    (QuPath annotations in level-0 pixels), areas.csv/areas.json (mm² per class), thumbnail.png,
    overlay.png, report.html and summary.json. Under `torchrun --nproc-per-node N` the inputs are
    shared between the ranks. A slide that fails is listed at the end and the exit code is 1.
    """
    import torch.distributed as dist

    from tissueseg.engine import distributed as dist_utils
    from tissueseg.slides.predict import PredictOptions, distributed_env, predict_slides

    rank, world, _ = distributed_env()
    options = PredictOptions(tile_size=tile_size, overlap=overlap, batch_size=batch_size, workers=workers,
                             device=device, flip=flip, amp=amp, slide_mpp=mpp, target_mpp=target_mpp,
                             tissue_detection=tissue, mask_glass=mask_glass, reader=reader, overwrite=overwrite,
                             polygon_tolerance=polygon_tolerance)
    if world > 1:
        # only to gather the failure lists at the end; gloo works next to any GPU setup
        dist_utils.init_distributed(backend="gloo", timeout=datetime.timedelta(days=7))
    prefix = f"[rank {rank}/{world}] " if world > 1 else ""

    def log(msg: str) -> None:
        console.print(f"{prefix}{msg}", highlight=False, markup=False)

    with user_errors():
        if not model.exists():
            raise FileNotFoundError(f"{model}: model file not found (fix: pass the model.pt a training run wrote)")
        if world > 1:
            result = predict_slides(model, inputs, out, options, log=log)
        else:
            with progress_bar() as bar:
                def factory(slide: Path):
                    task = bar.add_task(slide.name, total=None)
                    return lambda done, total: bar.update(task, completed=done, total=total)

                result = predict_slides(model, inputs, out, options, log=lambda m: bar.console.print(
                    m, highlight=False, markup=False), progress_factory=factory)
    failed = [(str(p), msg) for p, msg in result.failed]
    counts = (len(result.done), len(result.skipped))
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, {"failed": failed, "counts": counts})
        dist_utils.shutdown_distributed()  # barrier, let gloo release its buffers, destroy
        failed = [f for g in gathered for f in g["failed"]]
        counts = tuple(sum(g["counts"][i] for g in gathered) for i in range(2))
        if rank != 0:
            return
    console.print(f"{counts[0]} predicted, {counts[1]} already finished, {len(failed)} failed; outputs in {out}")
    if failed:
        console.print("[red]failed slides:[/red]")
        for _, msg in failed:
            console.print(f"  {msg}", highlight=False, markup=False)
        raise typer.Exit(1)
