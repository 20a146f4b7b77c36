"""PLIMSeg loss ablations: one-layer CAM pseudo-mask mIoU with each matching loss switched off.

Runs on a finished PLIMSeg run folder (its ``config.yaml``, matcher and pseudo masks), e.g. the
demo's: every ablation retrains stage 1 with the same matcher, seed and schedule and scores its
pseudo masks against the training masks. Prints a markdown table: all losses, then without each.

    tissueseg demo --out /tmp/demo && python benchmarks/plimseg_ablations.py /tmp/demo/plimseg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from tissueseg.config import WSSSConfig, load_config
from tissueseg.methods.plimseg import loss_ablations, pseudo_mask_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished PLIMSeg run folder (with config.yaml)")
    parser.add_argument("--losses", nargs="+", default=None, help="ablate only these losses (default: all in use)")
    args = parser.parse_args()
    config = load_config(args.run / "config.yaml", WSSSConfig, overrides={"out_dir": str(args.run)})
    full = args.run / pseudo_mask_folder("cam") / "report.json"
    if not full.exists():
        raise SystemExit(f"{full}: no one-layer PLIMSeg pseudo masks in this run (fix: finish the run first)")
    rows = {"all losses": json.loads(full.read_text())}
    if rows["all losses"]["layers"][0] is None:
        raise SystemExit(f"{full}: the training patches have no masks, so pseudo masks cannot be scored "
                         f"(fix: ablate on data with training masks, e.g. the demo or EBHI-Seg)")
    rows.update({f"without {k[3:]}": v for k, v in loss_ablations(config, Console(width=150), args.losses).items()})
    layer = rows["all losses"]["layers"][0]
    classes = [c for c, v in layer["iou"].items() if v is not None]  # scored classes (MLPS: not background)
    print(f"| PLIMSeg stage 1 | pseudo-mask mIoU | {' | '.join(classes)} |")
    print("|---|---|" + "---|" * len(classes))
    for name, report in rows.items():
        layer = report["layers"][0]
        print(f"| {name} | {100 * layer['miou']:.1f} | "
              + " | ".join(f"{100 * layer['iou'][c]:.1f}" for c in classes) + " |")


if __name__ == "__main__":
    main()
