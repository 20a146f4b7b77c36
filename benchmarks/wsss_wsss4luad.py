"""Weakly supervised methods on real lung adenocarcinoma tissue: WSSS4LUAD validation images (Han et al. 2022).

Only the 31 released validation images with pixel masks are at hand (the training patches are not), so
the weak labels are derived the way the challenge derived its own, by ``tissueseg data tag-crops``
(:func:`tissueseg.slides.tiles.tag_crops`): images are split **by image** (seeded), training images
are cut into ``--crop`` crops (``--stride`` apart; crops with less than 10 % tissue are dropped) and
a crop is tagged with every class (tumour, stroma, normal) covering at least ``--min-fraction`` of
its tissue (background, mask index 3, is not a class and not scored; it becomes 255). Training uses only these
tags; validation / test images are scored whole with their masks (mIoU over the three classes).
Rows: the plain reference CAM (``benchmarks/reference_cam.py``, timm ResNet-18, random init, Adam),
the CAM baseline, MLPS, PLIMSeg (label-trained matcher) and the fully supervised stage 2 on the
ground-truth masks of the same crops; on request (``--rows``) MLPS with PDA off, PLIMSeg's MLPS-stage-2
variant and PLIMSeg started from the MLPS classifier.

    python benchmarks/wsss_wsss4luad.py --scale 0.5 --epochs 12 --decoder-channels 64 --seeds 0 1 2  # CPU, 2 cores

With several seeds (each its own split by image and training seed) it ends with the seeds table: test
mIoU per seed, mean ± sd, and the *pooled* mIoU of the test confusion matrices summed over the seeds.

WSSS4LUAD: Han et al., arXiv 2204.06455 (research use).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from tissueseg.config import WSSSBackboneConfig, WSSSConfig
from tissueseg.engine.evaluate import meter_for, summarize_scores
from tissueseg.engine.run import RunContext
from tissueseg.methods.mlps import run_mlps
from tissueseg.methods.plimseg import run_plimseg, run_variant, share_matcher
from tissueseg.methods.registry import results_table
from tissueseg.slides.tiles import CropOptions, tag_crops

ROOT = Path(__file__).resolve().parents[1]


def write_weak_dataset(source: Path, out: Path, scale: float, crop: int, stride: int, min_fraction: float,
                       seed: int) -> Path:
    """A `folder`-format dataset (``tissueseg data tag-crops``): tagged training crops with at least 10 %
    tissue, whole val / test images; background → 255."""
    tag_crops(source, out, CropOptions(crop=crop, stride=stride, tag_min_area=min_fraction, min_tissue=0.1,
                                       background=False, scale=scale, split_fractions=(0.6, 0.2, 0.2),
                                       whole=("val", "test"), seed=seed, format="wsss4luad"))
    return out


def reference_cam_row(run: RunContext, steps: int, seed: int) -> dict:
    """The plain reference CAM trained on the same tagged crops, scored on the same val and test images."""
    from reference_cam import predict_reference_cam, train_reference_cam

    train = [run.dataset.load(r) for r in run.splits["train"]]
    size = run.config.data.crop_size
    train = [s for s in train if s.image.shape[:2] == (size, size)]
    model = train_reference_cam([s.image for s in train], np.stack([s.labels for s in train]).astype(np.float32),
                                steps=steps, seed=seed)
    scores = {}
    for split in ("val", "test"):
        meter = meter_for(run.info)
        for record in run.splits[split]:
            sample = run.dataset.load(record)
            meter.update(predict_reference_cam(model, sample.image), sample.mask)
        scores[split] = summarize_scores(meter, run.info)
    return scores


def apply_overrides(raw: dict, items: list[str]) -> dict:
    """``SECTION.KEY=VALUE`` overrides into a raw config (values parsed as JSON where they parse)."""
    from semi_ebhi import settings_overrides

    for key, value in settings_overrides(items).items():
        section, field = key.split(".", 1)
        raw.setdefault(section, {})[field] = value
    return raw


DEFAULT_ROWS = ("reference", "mlps", "plimseg")
WEAK_ROWS = ("reference_cam", "cam", "mlps", "mlps_no_pda", "plimseg_cam", "plimseg_mlps", "plimseg_init_mlps_mlps")
ROW_NAMES = {"reference_cam": "reference CAM", "cam": "CAM baseline", "mlps": "MLPS", "mlps_no_pda": "MLPS, PDA off",
             "plimseg_cam": "PLIMSeg", "plimseg_mlps": "PLIMSeg + MLPS stage 2",
             "plimseg_init_mlps_mlps": "PLIMSeg from MLPS stage 1 + MLPS stage 2", "supervised": "fully supervised"}


def plimseg_init_mlps_rows(config: WSSSConfig, console: Console, epochs: int | None = None) -> dict:
    """PLIMSeg stage 1 fine-tuned from the run's MLPS classifier (``plimseg.init_classifier``, CLIMS-style;
    ``epochs`` of it, default the classifier's), then MLPS's pseudo masks and stage 2, in ``<run>/plimseg_init_mlps``
    with the matcher of ``<run>/plimseg``. Result keys ``plimseg_init_mlps_*``."""
    base = Path(config.out_dir)
    out = base / "plimseg_init_mlps"
    share_matcher(base / "plimseg", out)
    plimseg = config.plimseg.model_copy(update={"stage2": "mlps",
                                                "init_classifier": base / "checkpoints" / "classifier_best.pt"})
    classifier = config.classifier.model_copy(update={"epochs": epochs or config.classifier.epochs})
    plim = config.model_copy(update={"method": "plimseg", "out_dir": out, "plimseg": plimseg, "classifier": classifier})
    results = run_plimseg(RunContext.open(plim, console=console))
    return {k.replace("plimseg_", "plimseg_init_mlps_", 1): v for k, v in results.items()}


def mlps_no_pda_rows(config: WSSSConfig, console: Console) -> dict:
    """MLPS with ``classifier.pda: false``, in ``<run>/mlps_no_pda``: its stage 1 is the CAM baseline's classifier
    (the same stage 1 with PDA off, same config and seed), copied in rather than trained again; then MLPS's
    multi-layer Grad-CAM pseudo masks, stage 2 and gate. Result keys ``mlps_no_pda*``."""
    base = Path(config.out_dir)
    out = base / "mlps_no_pda"
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    for kind in ("best", "last"):
        target = out / "checkpoints" / f"classifier_{kind}.pt"
        if not target.exists():
            shutil.copy(base / "checkpoints" / f"cam_classifier_{kind}.pt", target)
    classifier = config.classifier.model_copy(update={"pda": False})
    results = run_mlps(RunContext.open(config.model_copy(update={"out_dir": out, "classifier": classifier}),
                                       console=console), references=False)
    return {k.replace("mlps", "mlps_no_pda", 1): v for k, v in results.items()}


def run_seed(args: argparse.Namespace, seed: int, console: Console) -> dict:
    """Every requested row for one seeded split; writes ``benchmark.json`` in the run folder."""
    crop = args.crop or round(224 * args.scale)
    stride = args.stride or crop // 2
    name = f"s{args.scale}_c{crop}_st{stride}_f{args.min_fraction}_seed{seed}"
    data = write_weak_dataset(args.data, args.work / f"crops_{name}", args.scale, crop, stride, args.min_fraction,
                              seed)
    raw = {"out_dir": str(args.work / f"run_{name}_e{args.epochs}_os{args.output_stride}{args.tag}"), "seed": seed,
           "device": args.device,
           "data": {"path": str(data), "format": "folder", "crop_size": crop, "background_detection": False},
           "backbone": {"name": "efficientnet_lite0", "pretrained": True, "output_stride": args.output_stride},
           "classifier": {"epochs": args.epochs, "batch_size": args.batch_size},
           "segmenter": {"epochs": args.epochs, "batch_size": args.batch_size,
                         "decoder_channels": args.decoder_channels}}
    apply_overrides(raw, args.set)
    config = WSSSConfig.model_validate(raw)
    start = time.time()
    run = RunContext.open(config, console=console)
    results: dict = {}
    if "reference" in args.rows:
        results["reference_cam"] = reference_cam_row(run, args.reference_steps, seed)
    if "mlps" in args.rows:
        results.update(run_mlps(run, references=True))
    if "mlps_no_pda" in args.rows:  # after the mlps row (its CAM baseline's classifier)
        results.update(mlps_no_pda_rows(config, console))
    if {"plimseg", "plimseg_mlps"} & set(args.rows):
        plim = config.model_copy(update={"method": "plimseg", "out_dir": Path(config.out_dir) / "plimseg"})
        plim_run = RunContext.open(plim, console=console)
        if "plimseg" in args.rows:
            results.update(run_plimseg(plim_run))
        if "plimseg_mlps" in args.rows:  # multi-layer Grad-CAM of the PLIMSeg classifier, MLPS's stage 2
            results.update(run_variant(plim_run, "mlps"))
    if "plimseg_init_mlps" in args.rows:
        results.update(plimseg_init_mlps_rows(config, console, args.init_epochs))
    elapsed = time.time() - start
    console.print(results_table(results, "wsss", run.info.label_classes, title=f"WSSS4LUAD, seed {seed}"))
    full = results.get("supervised", {}).get("test", {}).get("miou")
    for key in WEAK_ROWS:
        if full and "test" in results.get(key, {}):
            console.print(f"{ROW_NAMES[key]}: test mIoU {100 * results[key]['test']['miou']:.1f}, "
                          f"{100 * results[key]['test']['miou'] / full:.0f} % of fully supervised")
    device = torch.cuda.get_device_name() if run.device.type == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    n_train = len(run.splits["train"])
    summary = {"weak_labels": f"{n_train} training crops of {crop} px (stride {stride}, scale {args.scale}), a class "
                              f"tagged when >= {args.min_fraction:.0%} of the crop's tissue; split by image 60/20/20",
               "epochs": args.epochs, "device": device, "seconds": round(elapsed), "overrides": args.set,
               "results": results}
    report = Path(config.out_dir) / ("benchmark.json" if sorted(args.rows) == sorted(DEFAULT_ROWS)
                                     else f"benchmark_{'_'.join(args.rows)}.json")
    report.write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"{device}, {elapsed / 60:.1f} min; details in {report}")
    return {"results": results, "info": run.info}


def seeds_table(per_seed: dict[int, dict]) -> Table:
    """Test mIoU per seed, mean ± sd, and the mIoU of the confusion matrices summed over the seeds' test
    splits (pooled: a class absent from one 6-image split no longer decides a third of its mIoU)."""
    seeds = list(per_seed)
    info = next(iter(per_seed.values()))["info"]
    table = Table(title=f"WSSS4LUAD test mIoU (%), seeds {', '.join(map(str, seeds))}")
    for col in ("row", *[f"seed {s}" for s in seeds], "mean ± sd", "pooled", "pooled, % of full"):
        table.add_column(col, justify="left" if col == "row" else "right")
    rows: dict[str, tuple[np.ndarray, float]] = {}
    for key in (*WEAK_ROWS, "supervised"):
        tests = [per_seed[s]["results"].get(key, {}).get("test") for s in seeds]
        if any(t is None for t in tests):
            continue
        meter = meter_for(info)
        meter.matrix = np.sum([np.asarray(t["confusion"]) for t in tests], axis=0)
        rows[key] = (np.array([100 * t["miou"] for t in tests]), 100 * summarize_scores(meter, info)["miou"])
    full = rows.get("supervised", (None, None))[1]
    for key, (mious, pooled) in rows.items():
        sd = mious.std(ddof=1) if len(mious) > 1 else 0.0
        table.add_row(ROW_NAMES[key], *[f"{m:.1f}" for m in mious], f"{mious.mean():.1f} ± {sd:.1f}", f"{pooled:.1f}",
                      f"{100 * pooled / full:.0f} %" if full else "-")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "wsss4luad")
    parser.add_argument("--work", type=Path, default=ROOT / ".devdata" / "bench-wsss4luad")
    parser.add_argument("--scale", type=float, default=1.0, help="downscale images first (CPU budget)")
    parser.add_argument("--crop", type=int, default=None, help="crop size after scaling (default 224 × scale)")
    parser.add_argument("--stride", type=int, default=None, help="crop stride (default crop / 2)")
    parser.add_argument("--min-fraction", type=float, default=0.05, help="share of the crop's tissue to tag a class")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--decoder-channels", type=int, default=256)
    parser.add_argument("--output-stride", type=int, choices=[8, 16], default=WSSSBackboneConfig().output_stride,
                        help="of the classifier and segmenters (default: the config's, 8; the run folder ends in _os<N>)")
    parser.add_argument("--reference-steps", type=int, default=300)
    parser.add_argument("--rows", nargs="+", choices=["reference", "mlps", "mlps_no_pda", "plimseg", "plimseg_mlps",
                                                      "plimseg_init_mlps"],
                        default=list(DEFAULT_ROWS),
                        help="mlps_no_pda: MLPS with PDA off (stage 1 = the CAM baseline's classifier); "
                             "plimseg_mlps: the PLIMSeg classifier's multi-layer Grad-CAM with MLPS's stage 2 "
                             "(after the plimseg row, or on its trained classifier); plimseg_init_mlps: PLIMSeg "
                             "stage 1 fine-tuned from the MLPS classifier (after the mlps row), then MLPS's "
                             "stage 2; rows other than the default write benchmark_<rows>.json")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="config overrides for the project's rows, e.g. classifier.lr=0.001")
    parser.add_argument("--init-epochs", type=int, default=None,
                        help="epochs of the plimseg_init_mlps fine-tune (default: --epochs)")
    parser.add_argument("--tag", default="", help="suffix of the run folder (for variants)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one split and training seed per value; several add the seeds table")
    args = parser.parse_args()
    console = Console(width=160)
    per_seed = {seed: run_seed(args, seed, console) for seed in args.seeds}
    if len(per_seed) > 1:
        console.print(seeds_table(per_seed))


if __name__ == "__main__":
    main()
