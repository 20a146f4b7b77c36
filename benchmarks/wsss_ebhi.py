"""Weakly supervised methods on real data: EBHI-Seg (Shi et al., Frontiers in Medicine 2023, CC BY 4.0).

Case-level split. Weak labels: patch-level tags on sub-crops, the way BCSS-WSSS derived its patch
labels from BCSS masks, cut by ``tissueseg data tag-crops`` (:func:`tissueseg.slides.tiles.tag_crops`).
Each training image (optionally downscaled) is cut into non-overlapping crops; a crop is tagged with
every lesion class covering at least ``--min-fraction`` of its tissue (its lesion pixels), and with
background when background covers that much of the crop (the image-level class alone says nothing
about where the ~37 % background is); ``--crops-per-image`` keeps a subset seeded per image. Training
uses only these tags; validation/test images are kept whole with their pixel masks for scoring (plain
mIoU over background + 6 classes). Rows: CAM baseline, MLPS, PLIMSeg (label-trained matcher unless
``--matcher`` names local CLIP weights), PLIMSeg + MLPS stage 2, fully supervised (stage 2 on the
ground-truth masks of the same crops); pseudo-mask mIoU on the training crops and test mIoU.
``--ablations`` adds PLIMSeg with each matching loss switched off (pseudo-mask mIoU).

    python benchmarks/wsss_ebhi.py --epochs 8 --scale 0.5 --crop 56 --crops-per-image 2 --decoder-channels 64  # CPU
    python benchmarks/wsss_ebhi.py --epochs 20 --crop 112 --device cuda --ablations                          # GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from rich.console import Console

from tissueseg.config import PLIM_LOSSES, PLIMSegConfig, WSSSBackboneConfig, WSSSConfig
from tissueseg.engine.run import RunContext
from tissueseg.methods.mlps import run_mlps
from tissueseg.methods.registry import results_table
from tissueseg.methods.plimseg import loss_ablations, run_plimseg, run_variant
from tissueseg.models.vlm import VLM_KINDS
from tissueseg.slides.tiles import CropOptions, tag_crops
from wsss_wsss4luad import apply_overrides, mlps_no_pda_rows, plimseg_init_mlps_rows

ROOT = Path(__file__).resolve().parents[1]


def write_weak_dataset(source: Path, out: Path, scale: float, crop: int, min_fraction: float, seed: int,
                       crops_per_image: int | None) -> Path:
    """A `folder`-format dataset (``tissueseg data tag-crops``): tagged training crops (all, or a seeded
    subset per image); whole val/test images with masks."""
    tag_crops(source, out, CropOptions(crop=crop, tag_min_area=min_fraction, scale=scale,
                                       split_fractions=(0.7, 0.15, 0.15), whole=("val", "test"),
                                       per_image=crops_per_image, seed=seed, format="ebhi-seg"))
    return out


def plimseg_rows(config: WSSSConfig, args: argparse.Namespace, console: Console) -> dict:
    """PLIMSeg (both pseudo-mask variants) in ``<run>/plimseg``; ablations in ``<run>/plimseg/no_<loss>``."""
    matcher = {"kind": args.matcher, "weights": args.matcher_weights} if args.matcher != "label_trained" else {}
    plim = config.model_copy(update={"method": "plimseg", "out_dir": Path(config.out_dir) / "plimseg",
                                     "plimseg": PLIMSegConfig.model_validate({"matcher": matcher})})
    run = RunContext.open(plim, console=console)
    results = run_plimseg(run)
    results.update(run_variant(run, "mlps"))
    if args.ablations:
        results.update({f"ablation_{k}": v for k, v in loss_ablations(plim, console).items()})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ebhi-seg")
    parser.add_argument("--work", type=Path, default=ROOT / ".devdata" / "bench-mlps-ebhi")
    parser.add_argument("--scale", type=float, default=1.0, help="downscale images first (CPU budget)")
    parser.add_argument("--crop", type=int, default=112, help="training sub-crop size (after scaling)")
    parser.add_argument("--min-fraction", type=float, default=0.02)
    parser.add_argument("--crops-per-image", type=int, default=None, help="seeded subset of training crops")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--decoder-channels", type=int, default=256)
    parser.add_argument("--output-stride", type=int, choices=[8, 16], default=WSSSBackboneConfig().output_stride,
                        help="of the classifier and segmenters (default: the config's, 8; the run folder ends in _os<N>)")
    parser.add_argument("--methods", nargs="+", choices=["mlps", "mlps_no_pda", "plimseg", "plimseg_init_mlps"],
                        default=["mlps", "plimseg"],
                        help="mlps_no_pda: MLPS with PDA off (stage 1 = the CAM baseline's classifier, after the "
                             "mlps row); plimseg_init_mlps: PLIMSeg stage 1 fine-tuned from the MLPS classifier, then "
                             "MLPS's stage 2 (needs the mlps and plimseg rows' checkpoints in the run folder)")
    parser.add_argument("--init-epochs", type=int, default=None,
                        help="epochs of the plimseg_init_mlps fine-tune (default: --epochs)")
    parser.add_argument("--matcher", default="label_trained", choices=["label_trained", *VLM_KINDS])
    parser.add_argument("--matcher-weights", default=None, help="local CLIP weights for --matcher")
    parser.add_argument("--ablations", action="store_true", help="PLIMSeg with each matching loss switched off")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="config overrides, e.g. classifier.lr=0.001")
    args = parser.parse_args()

    tag = f"s{args.scale}_c{args.crop}_f{args.min_fraction}_k{args.crops_per_image}_seed{args.seed}"
    data = write_weak_dataset(args.data, args.work / f"crops_{tag}", args.scale, args.crop, args.min_fraction,
                              args.seed, args.crops_per_image)
    raw = {
        "out_dir": str(args.work / f"run_{tag}_e{args.epochs}_os{args.output_stride}"), "seed": args.seed,
        "device": args.device,
        "data": {"path": str(data), "format": "folder", "crop_size": args.crop, "background_detection": False},
        "backbone": {"name": args.backbone, "pretrained": True, "output_stride": args.output_stride},
        "classifier": {"epochs": args.epochs, "batch_size": args.batch_size},
        "segmenter": {"epochs": args.epochs, "batch_size": args.batch_size,
                      "decoder_channels": args.decoder_channels},
    }
    config = WSSSConfig.model_validate(apply_overrides(raw, args.set))
    console = Console(width=160)
    start = time.time()
    run = RunContext.open(config, console=console)
    results = run_mlps(run, references=True) if "mlps" in args.methods else {}
    if "mlps_no_pda" in args.methods:
        results.update(mlps_no_pda_rows(config, console))
    if "plimseg" in args.methods:
        results.update(plimseg_rows(config, args, console))
    if "plimseg_init_mlps" in args.methods:
        results.update(plimseg_init_mlps_rows(config, console, args.init_epochs))
    elapsed = time.time() - start
    console.print(results_table(results, "wsss", run.info.label_classes))
    for loss in PLIM_LOSSES:
        if f"ablation_no_{loss}" in results:
            console.print(f"PLIMSeg without {loss}: pseudo-mask mIoU "
                          f"{100 * results[f'ablation_no_{loss}']['layers'][0]['miou']:.1f}")
    device = torch.cuda.get_device_name() if run.device.type == "cuda" else f"CPU ({platform.processor() or 'x86_64'})"
    summary = {"weak_labels": f"sub-crop tags ({args.crop}px crops at scale {args.scale}, "
                              f"{args.crops_per_image or 'all'} per image, a class tagged when >= "
                              f"{args.min_fraction:.0%} of the crop's tissue, background when >= that much "
                              f"of the crop)",
               "split": f"by case, seed {args.seed}, 70/15/15", "epochs": args.epochs, "device": device,
               "seconds": round(elapsed), "results": results}
    report = Path(config.out_dir) / f"benchmark_{'_'.join(args.methods)}.json"
    report.write_text(json.dumps(summary, indent=2, default=str))
    console.print(f"{device}, {elapsed / 60:.1f} min; details in {report}")


if __name__ == "__main__":
    main()
