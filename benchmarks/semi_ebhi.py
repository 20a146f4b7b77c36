"""Semi-supervised benchmark on real EBHI-Seg (or GlaS, ``--format glas``): binary gland/lesion vs background.

Rows per labelled budget (whole training cases, seeded): supervised only, consistency only,
UniSemAlign (text encoder named) and fully supervised (trained once, the same for every budget);
optional ablations (no text / no prototype; "neither" is the consistency row; alignment none vs
MSE) and a training-speed comparison of bf16 vs fp32 in the same process. Scores on the test split
of a seeded case split (70/15/15), sliding window, in the UniSemAlign convention (mDice / mJaccard
over background and foreground) and foreground-only. Prints a markdown table and writes ``<out>/results.json``.

Example (CPU, reduced)::

    python benchmarks/semi_ebhi.py --labelled 8 32 --epochs 4 --image-size 128 --max-steps-per-epoch 20

EBHI-Seg: Shi et al., Frontiers in Medicine 2023 (CC BY 4.0).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ROWS = ("supervised", "consistency", "unisemalign")
ABLATIONS = {  # name: UniSemAlign settings overrides (paper Table: branches and alignment loss);
    # "neither branch" is the consistency-only row (the same network and losses), so it is not trained twice
    "unisemalign_no_text": {"text": False},
    "unisemalign_no_prototype": {"prototypes": False},
    "unisemalign_no_alignment": {"alignment": "none"},
    # the paper's / official loss recipe (our defaults changed it: see UniSemAlignSettings)
    "unisemalign_paper": "PAPER_RECIPE",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ebhi-seg",
                   help="EBHI-Seg root (default: ../shared/data/ebhi-seg from the repository root)")
    p.add_argument("--format", default="ebhi-seg", choices=["ebhi-seg", "glas", "synthetic"],
                   help="glas: ../shared/data/glas, trained on train (validation cases carved out by patient), "
                        "scored on testA; synthetic: a built-in synthetic set written to <out>/synthetic "
                        "(e.g. for --speed alone; --data is not used)")
    p.add_argument("--labelled", nargs="+", default=["8", "32", "10%", "20%"],
                   help="labelled budgets: image counts (8) or fractions of the training images (10%%)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (and after the last)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224, help="training crop (EBHI images are 224 px)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="train and test on a copy of the data rescaled by this factor (CPU runs; masks nearest)")
    p.add_argument("--lr", type=float, default=0.001, help="base LR (config default and official: 0.001)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--no-pretrained", action="store_true", help="random init instead of ImageNet weights")
    p.add_argument("--freeze", action="store_true", help="freeze the encoder (paper, for UNI)")
    p.add_argument("--decoder-channels", type=int, default=256)
    p.add_argument("--text-encoder", default="auto", choices=["auto", "clip", "minilm", "learnable"])
    p.add_argument("--branch-logits-at", default="input", choices=["input", "feature"])
    p.add_argument("--rows", nargs="*", default=list(ROWS), choices=[*ROWS, *ABLATIONS],
                   help="rows to train per budget (default: the references and UniSemAlign; none: --speed only)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="UniSemAlign settings overrides for every row, e.g. teacher_momentum=0.99 (values as JSON)")
    p.add_argument("--ablations", action="store_true", help="also the branch / alignment ablations")
    p.add_argument("--no-full", action="store_true", help="skip the fully supervised row")
    p.add_argument("--speed", action="store_true", help="time UniSemAlign training steps, bf16 vs fp32")
    p.add_argument("--speed-steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "bench-semi-ebhi")
    return p.parse_args(argv)


def budget(spec: str) -> dict:
    if spec.endswith("%"):
        return {"labelled_fraction": float(spec[:-1]) / 100}
    return {"labelled_count": int(spec)}


def settings_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs → a dict, values parsed as JSON where they parse (``0.99``, ``null``, ``true``)."""
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    return overrides


def make_config(args: argparse.Namespace, out_dir: Path, labelled: dict | None) -> dict:
    return {
        "method": "unisemalign", "out_dir": str(out_dir), "seed": args.seed, "device": args.device,
        "data": {"path": str(args.data), "format": args.format, "crop_size": args.image_size,
                 **({"test_split": "testA"} if args.format == "glas" else {})},
        "binary": True, **(labelled or {"labelled_fraction": 1.0}),
        "backbone": {"name": args.backbone, "pretrained": not args.no_pretrained, "output_stride": 16,
                     "freeze": args.freeze},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                  "decoder_channels": args.decoder_channels, "max_steps_per_epoch": args.max_steps_per_epoch,
                  "eval_every": args.eval_every},
        "unisemalign": {"branch_logits_at": args.branch_logits_at, **settings_overrides(args.set)},
        "text": {"encoder": args.text_encoder},
        "evaluation": {"window": 256, "stride": 170, "overlays": 0},
    }


def open_run(config: dict):
    from rich.console import Console

    from tissueseg.config import SemiConfig
    from tissueseg.engine.run import RunContext

    return RunContext.open(SemiConfig.model_validate(config), console=Console(stderr=True))


def ablation_overrides(name: str) -> dict | None:
    """UniSemAlign settings overrides of an ablation row (the paper row: ``PAPER_RECIPE``)."""
    from tissueseg.methods.unisemalign import PAPER_RECIPE

    overrides = ABLATIONS.get(name)
    return PAPER_RECIPE if overrides == "PAPER_RECIPE" else overrides


def train_and_score(run, row: str, name: str, overrides: dict | None = None) -> dict:
    from tissueseg.methods.unisemalign import evaluate_segmenter, train_row


    settings = run.config.unisemalign.model_copy(update=overrides or {})
    start = time.perf_counter()
    segmenter = train_row(run, row, name=name, settings=settings)
    seconds = time.perf_counter() - start
    scores = evaluate_segmenter(run, segmenter, run.splits["test"])
    return {"row": name, "train_seconds": round(seconds, 1), **{k: scores[k] for k in
            ("mdice", "mjaccard", "dice_fg", "jaccard_fg")}}


def text_encoder_name(run) -> str:
    log = run.out_dir / "log.jsonl"
    names = [json.loads(line).get("text_encoder") for line in log.read_text().splitlines()
             if '"event": "row"' in line] if log.exists() else []
    return next((n for n in reversed(names) if n), "-")


def speed(args: argparse.Namespace, run) -> list[dict]:
    """Training images/s and peak memory of UniSemAlign steps, fp32 and bf16 autocast, same process.

    bf16 is measured on CPU too (``torch.autocast("cpu")``), although the engine trains in fp32 there.
    """
    from tissueseg.engine.trainer import to_device
    from tissueseg.methods.unisemalign import (SemiPairs, build_network, cutmix, labelled_records, parameter_groups,
                                               semi_space, unisemalign_losses)

    space = semi_space(run)
    labelled, unlabelled = labelled_records(run)
    length = max(len(labelled), len(unlabelled), args.batch_size * (args.speed_steps + 2))  # images repeat if few
    pairs = SemiPairs(run.dataset, labelled, unlabelled, space, args.image_size, length)
    loader = torch.utils.data.DataLoader(pairs, batch_size=args.batch_size, shuffle=True, drop_last=True)
    batches = [to_device(b, run.device, True) for _, b in zip(range(args.speed_steps + 2), loader)]
    rows = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = build_network(run.config, space, "unisemalign", out_dir=run.out_dir).to(run.device)
        net = net.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD([g for g in parameter_groups(net, 10.0)], lr=1e-3, momentum=0.9)
        if run.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        net.train()
        timed = 0.0
        for i, batch in enumerate(batches):
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = net(batch["image"], batch["weak"], cutmix(batch["strong"], batch["box"].bool()))
                losses, threshold = unisemalign_losses(out, batch, net.threshold, run.config.unisemalign)
            opt.zero_grad()
            losses["loss"].backward()
            opt.step()
            net.threshold.copy_(threshold)
            if run.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:  # warm-up steps are not timed
                timed += time.perf_counter() - t
        images = 2 * args.batch_size * (len(batches) - 2)  # labelled + unlabelled per step
        peak = (torch.cuda.max_memory_allocated() / 2**20 if run.device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        rows.append({"precision": precision, "images_per_s": round(images / max(timed, 1e-9), 2),
                     "peak_memory_mib": round(peak), "memory_kind": "CUDA allocated" if run.device.type == "cuda"
                     else "process peak RSS so far"})
    return rows


def pct(v: float) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.format == "glas" and args.data == REPO.parent / "shared" / "data" / "ebhi-seg":
        args.data = REPO.parent / "shared" / "data" / "glas"
    if args.format == "synthetic":
        from training_overhead import cached_synthetic_set

        args.data = cached_synthetic_set(args.out / "synthetic", 32, args.image_size)
        args.format = "luad-histoseg"
    if not args.data.exists():
        print(f"error: {args.data}: {args.format} data not found (fix: pass --data)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    if args.scale != 1.0:
        args.data = rescaled_copy(args.data, args.out / f"data-x{args.scale:g}", args.scale, args.format)
    results: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "rows": []}
    full = None
    if not args.no_full:
        run = open_run(make_config(args, args.out / "full", None))
        full = train_and_score(run, "fully_supervised", "fully_supervised")
    for spec in args.labelled:
        run = open_run(make_config(args, args.out / f"labelled-{spec.replace('%', 'pct')}", budget(spec)))
        from tissueseg.methods.unisemalign import labelled_records

        labelled, unlabelled = labelled_records(run)
        names = list(args.rows) + [a for a in ABLATIONS if args.ablations and a not in args.rows]
        for name in names:
            row = name if name in ROWS else "unisemalign"
            entry = train_and_score(run, row, name, ablation_overrides(name))
            entry.update(labelled=spec, n_labelled=len(labelled), n_unlabelled=len(unlabelled),
                         text_encoder=text_encoder_name(run) if row == "unisemalign" and
                         (ablation_overrides(name) or {}).get("text", True) else "-")
            results["rows"].append(entry)
            write(args.out / "results.json", results)
        if full is not None:
            results["rows"].append({**full, "labelled": spec, "n_labelled": len(labelled) + len(unlabelled),
                                    "n_unlabelled": 0, "text_encoder": "-"})
        if args.speed and spec == args.labelled[0]:
            results["speed"] = speed(args, run)
        write(args.out / "results.json", results)
    print(markdown(results))
    return 0


def rescaled_copy(source: Path, target: Path, scale: float, data_format: str = "ebhi-seg") -> Path:
    """EBHI-Seg (or a flat GlaS folder) with every image (bilinear) and mask (nearest) resized by ``scale``,
    written once as PNG; GlaS's Grade.csv is copied."""
    import shutil

    from PIL import Image

    from tissueseg.data.readers import _ebhi_base

    done = target / "DONE"
    if done.exists():
        return target
    if data_format == "ebhi-seg":
        base, out_base = _ebhi_base(source), target / "EBHI-SEG"
        files = [p for p in sorted(base.glob("*/*/*")) if p.parent.name in ("image", "label") and p.is_file()]
    else:
        base, out_base, files = source, target, sorted(p for p in source.iterdir() if p.is_file())
    for path in files:
        out = out_base / path.relative_to(base)
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".csv":
            shutil.copyfile(path, out)
            continue
        with Image.open(path) as img:
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            is_mask = path.parent.name == "label" or path.stem.endswith("_anno")
            img.resize(size, Image.NEAREST if is_mask else Image.BILINEAR).save(out.with_suffix(".png"))
    done.write_text(f"{source} x {scale}\n")
    return target


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return (f"{device}; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} CPU threads")


def write(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2))


def markdown(results: dict) -> str:
    lines = [f"Command: `{results['command']}`", f"Machine: {results['machine']}", "",
             "| labelled | row | text encoder | mDice | mJaccard | Dice fg | Jaccard fg | train s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['labelled']} ({r['n_labelled']} img) | {r['row']} | {r['text_encoder']} | "
                     f"{pct(r['mdice'])} | {pct(r['mjaccard'])} | {pct(r['dice_fg'])} | {pct(r['jaccard_fg'])} | "
                     f"{r['train_seconds']} |")
    if results.get("speed"):
        lines += ["", "| precision | train images/s | peak memory (MiB) |", "|---|---:|---:|"]
        for s in results["speed"]:
            lines.append(f"| {s['precision']} | {s['images_per_s']} | {s['peak_memory_mib']} {s['memory_kind']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
