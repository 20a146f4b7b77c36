"""Probe of the CAM baseline's stage-1 classifier on a tagged-crop set (e.g. the one `wsss_wsss4luad.py` writes).

Trains only the plain CAM classifier (no PDA) with config overrides and scores the CAM row on the
validation and test images for every gate threshold × CAM normalisation, without retraining:

    python benchmarks/cam_classifier_probe.py CROPS_FOLDER --tag lr001 --set classifier.lr=0.001

Prints one JSON line: {"gate<g>_<norm>": [test mIoU, val mIoU], ...} in %.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console

from tissueseg.config import WSSSConfig
from tissueseg.engine.evaluate import evaluate_split
from tissueseg.engine.run import RunContext
from tissueseg.methods.mlps import cam_predictor, train_classifier
from wsss_wsss4luad import apply_overrides

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="folder-format dataset of tagged crops with whole val/test images")
    p.add_argument("--crop", type=int, default=112)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--tag", default="probe")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    raw: dict = {"out_dir": str(ROOT / "runs" / "probe-cam" / args.tag), "seed": 0, "device": "cpu",
                 "data": {"path": str(args.data), "format": "folder", "crop_size": args.crop,
                          "background_detection": False},
                 "backbone": {"name": "efficientnet_lite0", "pretrained": True, "output_stride": 16},
                 "classifier": {"epochs": args.epochs, "batch_size": 16}}
    config = WSSSConfig.model_validate(apply_overrides(raw, args.set))
    run = RunContext.open(config, console=Console(stderr=True))
    start = time.time()
    classifier = train_classifier(run, pda=False, name="cam_classifier")
    scores = {}
    for gate in (0.1, 0.3, 0.5):
        for norm in ("global", "per_class"):
            variant = config.model_copy(deep=True)
            variant.segmenter.gate_threshold, variant.pseudo_masks.normalization = gate, norm
            run.config = variant
            test, val = (evaluate_split(cam_predictor(run, classifier), run.dataset, run.splits[s], run.device)
                         for s in ("test", "val"))
            scores[f"gate{gate}_{norm}"] = [round(100 * test["miou"], 1), round(100 * val["miou"], 1)]
    print(json.dumps({"tag": args.tag, "overrides": args.set, "seconds": round(time.time() - start), **scores}))


if __name__ == "__main__":
    main()
