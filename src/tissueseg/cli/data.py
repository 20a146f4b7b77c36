"""`tissueseg data check | synth | tiles | tag-crops`."""

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



@data_app.command("tiles")
def data_tiles(
    slides: Annotated[list[Path], typer.Argument(help="Annotated slides (SVS, NDPI, MRXS, pyramidal TIFF…) or "
                                                      "folders of them; case id = slide name.")],
    annotations: Annotated[list[Path], typer.Option(
        "--annotations", "-a", help="QuPath GeoJSON exports (File > Export objects as GeoJSON), or folders of "
                                    "them, named after the slides (<slide stem>.geojson); repeat the option.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (`folder` format).")],
    classes: Annotated[str, typer.Option(
        help="Dataset classes in order, mapping QuPath class names: 'tumour,stroma' or "
             "'Tumor=tumour,Stroma=stroma,Other=ignore' ('ignore' drops a class), or a CSV file "
             "(QuPath class,dataset class).")],
    mpp: Annotated[float | None, typer.Option(
        help="Microns per pixel of the tiles (default: each slide's level-0 resolution).")] = None,
    slide_mpp: Annotated[float | None, typer.Option(
        help="Level-0 microns per pixel of the slides, for slides without it in their metadata.")] = None,
    tile: Annotated[int, typer.Option(help="Tile side in pixels at --mpp.")] = 224,
    stride: Annotated[int | None, typer.Option(help="Step between tiles in pixels (default: --tile).")] = None,
    tag_min_area: Annotated[float, typer.Option(
        help="A class is tagged when its annotations cover this fraction of the tile's tissue.")] = 0.05,
    min_tissue: Annotated[float, typer.Option(help="Skip tiles with less tissue than this fraction.")] = 0.25,
    unlabelled: Annotated[int, typer.Option(
        help="Unannotated tissue tiles per slide to add as unlabelled images (seeded; split 'unlabelled').")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the unlabelled tiles' choice.")] = 0,
    split: Annotated[str, typer.Option(help="Split of these slides' tiles (train, val, test…); run again with "
                                            "other slides and --split val to add a validation set.")] = "train",
    detections: Annotated[bool, typer.Option(
        help="Also read detections and cells (default: annotations only).")] = False,
    reader: Annotated[str, typer.Option(help="Slide reader: auto, openslide, tiff or image.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Redo slides that are already finished.")] = False,
) -> None:
    """Cut annotated slides into a training set: tagged tiles, their masks (255 = unannotated), unlabelled tiles.

    Writes OUT/images/, OUT/masks/, labels.csv (patch-level tags; empty cells = unlabelled), tiles.csv
    (slide, level-0 x/y, MPP of every tile) and dataset.json. Glass is skipped. Rerun to resume:
    finished slides are skipped; a slide that fails is listed at the end and the exit code is 1.
    """
    from tissueseg.slides.annotations import ClassMapping
    from tissueseg.slides.tiles import TileOptions, tile_slides

    with user_errors():
        options = TileOptions(ClassMapping.parse(classes), mpp=mpp, slide_mpp=slide_mpp, tile=tile, stride=stride,
                              tag_min_area=tag_min_area, min_tissue=min_tissue, unlabelled=unlabelled, seed=seed,
                              split=split, reader=reader, overwrite=overwrite,
                              object_types=("annotation", "detection", "cell") if detections else ("annotation",))
        with progress_bar() as bar:
            def factory(slide: Path):
                task = bar.add_task(slide.name, total=None)
                return lambda done, total: bar.update(task, completed=done, total=total)

            result = tile_slides(slides, annotations, out, options, progress_factory=factory,
                                 log=lambda m: bar.console.print(m, highlight=False, markup=False))
    annotated = sum(s.get("tiles_annotated", 0) for s in result.summaries.values())
    free = sum(s.get("tiles_unlabelled", 0) for s in result.summaries.values())
    console.print(f"{len(result.done)} slides tiled, {len(result.skipped)} already finished, {len(result.failed)} "
                  f"failed: {annotated} annotated + {free} unlabelled tiles in {out}", highlight=False)
    if result.done or result.skipped:
        console.print(f"check it with: tissueseg data check {out} --format folder", highlight=False)
    if result.failed:
        console.print("[red]failed slides:[/red]")
        for _, msg in result.failed:
            console.print(f"  {msg}", highlight=False, markup=False)
        raise typer.Exit(1)


@data_app.command("tag-crops")
def data_tag_crops(
    dataset: Annotated[Path, typer.Argument(help="A dataset with masks (e.g. ../shared/data/wsss4luad, EBHI-Seg).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (`folder` format).")],
    crop: Annotated[int, typer.Option(help="Crop side in pixels (after --scale).")] = 224,
    stride: Annotated[int | None, typer.Option(help="Step between crops (default: --crop).")] = None,
    tag_min_area: Annotated[float, typer.Option(
        help="A class is tagged when it covers this fraction of the crop's tissue.")] = 0.05,
    min_tissue: Annotated[float, typer.Option(help="Skip crops with less tissue than this fraction.")] = 0.0,
    background: Annotated[bool, typer.Option(
        "--background/--no-background", help="Tag background as a class of its own (when the dataset has one).")]
    = True,
    scale: Annotated[float, typer.Option(
        help="Resize the images by this factor before cropping (bilinear, masks nearest), e.g. 0.5.")] = 1.0,
    mpp: Annotated[float | None, typer.Option(
        help="Microns per pixel of the dataset's images (default: what its dataset.json records); OUT's "
             "dataset.json records it divided by --scale, and training takes that as data.mpp.")] = None,
    split_fractions: Annotated[str | None, typer.Option(
        help="Re-split the images by case (seeded) into train,val,test with these image fractions, e.g. "
             "0.6,0.2,0.2 (default: the dataset's own splits).")] = None,
    whole: Annotated[str, typer.Option(
        help="Splits written as whole images with their masks instead of crops (for validation and scoring), "
             "comma-separated, e.g. val,test.")] = "",
    per_image: Annotated[int | None, typer.Option(help="Keep this many tagged crops per image (seeded).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of --split-fractions and --per-image.")] = 0,
    format: Annotated[str, typer.Option("--format", "-f", help=f"Dataset format: {FORMATS}.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Rewrite the crops.")] = False,
) -> None:
    """Tagged crops of a masked dataset: patch-level tags (as `data tiles` computes them) plus the crops' masks."""
    from tissueseg.slides.tiles import CropOptions, tag_crops

    with user_errors():
        try:
            fractions = tuple(float(v) for v in split_fractions.split(",")) if split_fractions else None
        except ValueError as exc:
            raise ValueError(f"--split-fractions {split_fractions}: give three comma-separated fractions "
                             f"train,val,test (fix: e.g. --split-fractions 0.6,0.2,0.2)") from exc
        options = CropOptions(crop=crop, stride=stride, tag_min_area=tag_min_area, min_tissue=min_tissue,
                              background=background, scale=scale, mpp=mpp, split_fractions=fractions,
                              whole=tuple(w for w in whole.split(",") if w), per_image=per_image, seed=seed,
                              format=format, overwrite=overwrite)
        with progress_bar() as bar:
            task = bar.add_task(f"cropping {dataset.name}", total=None)
            summary = tag_crops(dataset, out, options, progress=lambda i, n: bar.update(task, completed=i, total=n),
                                warn=lambda m: bar.console.print(m, highlight=False, markup=False))
    tags = ", ".join(f"{c} {n}" for c, n in summary["tag_frequencies"].items())
    whole_images = f" + {summary['whole']} whole images" if summary["whole"] else ""
    console.print(f"{summary['crops']} crops{whole_images} of {summary['images']} images in {out} "
                  f"(crops per tag: {tags})", highlight=False)
