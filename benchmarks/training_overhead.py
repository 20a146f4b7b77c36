"""Training overhead of the engine: the Trainer's images/s against a bare PyTorch loop, same network, data and step.

Rows: MLPS stage 1 (PDA classifier), MLPS stage 2 (DeepLabV3+ on three masks per patch), PLIMSeg stage 1
(label-trained matcher, random weights, frozen) and UniSemAlign (the semi step; two images per item). Each
row builds the method's own network, training items and step function (those `tissueseg wsss` / `semi`
train with) on a synthetic LUAD-HistoSeg set.

Timed, engine: ``Trainer.fit`` end to end for ``--epochs`` epochs of ``--steps`` steps — its DataLoader,
poly LR, NaN guard, loss bookkeeping, progress bar (rendered to a terminal-like sink), JSON log and the
epoch-end checkpoints; no validation (``evaluate=None``). Bare: a plain DataLoader over the same items
(shuffled, same batch and workers) → ``step`` → backward → SGD step, as many steps. Both use the same
precision and memory format (bf16 autocast on CUDA when ``--amp``, channels_last). Blocks alternate
bare / engine ``--rounds`` times after one untimed pair; medians are reported.

    python benchmarks/training_overhead.py --device cpu --threads 1 --size 64 --batch 8
    python benchmarks/training_overhead.py --device cuda --size 224 --batch 20 --steps 20 --workers 8
    torchrun --standalone --nproc-per-node 8 benchmarks/training_overhead.py --engine-only --rows mlps-stage1
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROWS = ("mlps-stage1", "mlps-stage2", "plimseg-stage1", "unisemalign")
TITLES = {"mlps-stage1": "MLPS stage 1 (PDA classifier)", "mlps-stage2": "MLPS stage 2 (DeepLabV3+, 3 masks)",
          "plimseg-stage1": "PLIMSeg stage 1 (label-trained matcher)", "unisemalign": "UniSemAlign (semi step)"}


UNIQUE_PATCHES = 48


@dataclass
class Row:
    """One training row: its network, training items, step, parameter groups and images per item."""

    model: nn.Module
    items: Dataset
    step: Callable
    groups: Callable[[], list[dict]]
    images_per_item: int = 1


def cached_synthetic_set(root: Path, n_train: int, size: int) -> Path:
    """A synthetic LUAD-HistoSeg set at ``root`` (``n_train`` patches of ``size`` px, about four per case,
    a quarter of the cases in ``splits/labelled.txt``), written once."""
    from tissueseg.data.synthetic import write_synthetic_dataset

    if not (root / "README.txt").exists():
        shutil.rmtree(root, ignore_errors=True)
        write_synthetic_dataset(root, n_train=n_train, n_val=4, n_test=4, size=size, seed=0,
                                cases=max(n_train // 4, 4), labelled_fraction=0.25)
    return root


def synthetic_data(args: argparse.Namespace) -> Path:
    """This run's synthetic set in ``--workdir`` (rank 0 writes it, the other ranks wait).

    :data:`UNIQUE_PATCHES` patches, repeated by :func:`build_row` to fill the epochs: rendering a patch
    takes longer than training on it, and the dataset's decode cache holds them all either way.
    """
    from tissueseg.engine import distributed as dist_utils

    root = args.workdir / f"synthetic-{args.size}px"
    if dist_utils.is_main_process():
        cached_synthetic_set(root, UNIQUE_PATCHES, args.size)
    dist_utils.barrier()
    return root


def open_run(args: argparse.Namespace, data: Path, semi: bool, out: Path):
    from tissueseg.config import SemiConfig, WSSSConfig
    from tissueseg.engine.run import RunContext

    common = {"out_dir": str(out), "device": args.device, "amp": args.amp, "channels_last": True,
              "data": {"path": str(data), "format": "luad-histoseg", "crop_size": args.size,
                       "num_workers": args.workers}}
    optim = {"batch_size": args.batch}
    if semi:
        config = SemiConfig.model_validate({**common, "labelled_fraction": 0.25, "text": {"encoder": "learnable"},
                                            "backbone": {"name": args.backbone, "pretrained": False},
                                            "train": {**optim, "decoder_channels": args.decoder_channels}})
    else:
        config = WSSSConfig.model_validate({
            **common, "backbone": {"name": args.backbone, "pretrained": False},
            "classifier": optim, "segmenter": {**optim, "decoder_channels": args.decoder_channels},
            "plimseg": {"matcher": {"backbone": args.backbone, "text": "learnable", "pretrained": False}}})
    return RunContext.open(config, console=Console(file=io.StringIO()))


def build_row(name: str, args: argparse.Namespace, data: Path, out: Path) -> Row:
    """The method's own network, items and step for ``name``, with random weights."""
    from tissueseg.methods import mlps, plimseg, unisemalign
    from tissueseg.models.bundle import MatcherSpec, create_model

    torch.manual_seed(0)
    run = open_run(args, data, name == "unisemalign", out)
    cfg = run.config
    records = run.splits["train"]
    run.splits["train"] = [records[i % len(records)] for i in range(max(args.train_items, len(records)))]
    if name == "unisemalign":
        space = unisemalign.semi_space(run)
        labelled, unlabelled = unisemalign.labelled_records(run)
        items = unisemalign.SemiPairs(run.dataset, labelled, unlabelled, space, args.size)
        model = unisemalign.build_network(cfg, space, "unisemalign", out_dir=run.out_dir)
        return Row(model, items, unisemalign.semi_step(cfg.unisemalign, False, lambda: 0.5),
                   lambda: unisemalign.parameter_groups(model, cfg.train.head_lr_mult), images_per_item=2)
    if name == "mlps-stage2":
        for layer in range(3):  # the ground-truth masks stand in for the three pseudo-mask layers
            folder = run.out_dir / mlps.PSEUDO_FOLDER / f"layer{layer}"
            folder.mkdir(parents=True, exist_ok=True)
            for r in records:
                shutil.copy(r.mask_path, folder / f"{Path(r.image_path).stem}.png")
        model = mlps.build_segmenter(cfg, run.space.num_classes)
        items = mlps.segmenter_samples(run, mlps.pseudo_mask_reader(run, mlps.PSEUDO_FOLDER, 3))
        return Row(model, items, mlps.segmenter_step(cfg.segmenter.layer_weights),
                   lambda: model.parameter_groups(cfg.segmenter.head_lr_mult))
    model = mlps.build_classifier(cfg, run.space.num_classes)
    model.gamma = 0.9  # PDA on
    cam_losses = None
    if name == "plimseg-stage1":
        rows = plimseg.prompt_rows(plimseg.prompt_bank(run))
        matcher = create_model(MatcherSpec(cfg.plimseg.matcher.backbone, rows, "learnable text embeddings"))
        matcher = matcher.to(run.device).eval().requires_grad_(False)
        cam_losses = plimseg.plim_cam_losses(run, matcher)
    return Row(model, mlps.classifier_samples(run), mlps.classifier_step(cam_losses, cfg.plimseg.classification_weight
                                                                         if cam_losses else 1.0),
               lambda: model.parameter_groups(cfg.classifier.head_lr_mult))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_config(args: argparse.Namespace):
    from tissueseg.engine.trainer import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=1e-3, amp=args.amp, channels_last=True,
                       num_workers=args.workers, device=args.device, max_steps_per_epoch=args.steps)


def clocks() -> tuple[float, float]:
    """(wall, this process's CPU) seconds; CPU time is steadier on a machine shared with other jobs."""
    return time.perf_counter(), time.process_time()


def engine_seconds(row: Row, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``Trainer.fit`` end to end in a fresh run folder (so it does not resume)."""
    from tissueseg.engine.trainer import Trainer

    shutil.rmtree(out, ignore_errors=True)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)  # the bar renders as on a terminal
    trainer = Trainer(row.model, train_config(args), out, param_groups=row.groups(), name="bench", console=console)
    sync(trainer.device)
    start = clocks()
    trainer.fit(row.items, row.step)
    sync(trainer.device)
    return tuple(b - a for a, b in zip(start, clocks()))


def bare_seconds(row: Row, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds of a plain loop: DataLoader → step → backward → SGD step, ``epochs × steps`` steps."""
    from tissueseg.engine.trainer import to_device
    from tissueseg.models.device import autocast

    model = row.model.to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(row.groups(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    loader = DataLoader(row.items, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
                        pin_memory=device.type == "cuda")
    sync(device)
    start = clocks()
    for _ in range(args.epochs):
        for _, batch in zip(range(args.steps), loader):
            batch = to_device(batch, device, True)
            with autocast(device, args.amp):
                loss = row.step(model, batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    sync(device)
    return tuple(b - a for a, b in zip(start, clocks()))


def measure(name: str, args: argparse.Namespace) -> dict:
    """Alternating bare / engine blocks after one untimed pair: median images/s (wall) of each, and the
    median engine / bare ratio of wall and of CPU time over the pairs. ``--engine-only``: the engine's
    images/s over every rank (under torchrun: DDP), no bare loop."""
    from tissueseg.engine import distributed as dist_utils
    from tissueseg.models.device import resolve_device

    device = resolve_device(args.device)
    work = args.workdir / f"overhead-{name}-rank{dist_utils.rank()}"
    shutil.rmtree(work, ignore_errors=True)
    row = build_row(name, args, synthetic_data(args), work / "run")
    images = args.epochs * args.steps * args.batch * row.images_per_item * dist_utils.world_size()
    pairs = [(None if args.engine_only else bare_seconds(row, args, device),
              engine_seconds(row, args, work / "engine")) for _ in range(args.rounds + 1)][1:]
    shutil.rmtree(work, ignore_errors=True)
    engine = statistics.median(images / e[0] for _, e in pairs)
    if args.engine_only:
        return {"engine": engine}
    return {"bare": statistics.median(images / b[0] for b, _ in pairs), "engine": engine,
            "wall": statistics.median(b[0] / e[0] for b, e in pairs),
            "cpu": statistics.median(b[1] / e[1] for b, e in pairs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto: this rank's GPU when there is one, else CPU")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--decoder-channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="patch and crop side (px)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5, help="timed bare / engine pairs per row")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (both loops)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA (CPU is always fp32)")
    parser.add_argument("--engine-only", action="store_true",
                        help="time the engine alone, over every rank (run under torchrun for DDP)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tissueseg-overhead-bench")
    args = parser.parse_args(argv)
    from tissueseg.engine import distributed as dist_utils
    from tissueseg.models.device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    dist_utils.init_distributed()
    world = dist_utils.world_size()
    args.train_items = max(args.steps * args.batch * world, 16)
    args.workdir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    main_rank = dist_utils.is_main_process()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    if main_rank:
        print(f"device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.machine()}; "
              f"{args.backbone}, {args.size}px, batch {args.batch} per rank × {world} rank(s), {args.epochs} "
              f"epoch(s) × {args.steps} steps, workers {args.workers}, "
              f"{'bf16' if args.amp and device.type == 'cuda' else 'fp32'} + channels_last, median of {args.rounds} "
              + ("rounds" if args.engine_only else "alternating rounds (CPU time: this process; without workers)"))
        print("timed: engine = Trainer.fit end to end (data loading, progress bar, log, epoch-end checkpoints; "
              "no validation)" + ("" if args.engine_only else
                                  "; bare = plain DataLoader → step → backward → SGD step") + "\n")
        print("| row | ranks | bare loop img/s | engine img/s | engine / bare (wall) | engine / bare (CPU time) |")
        print("|---|---|---|---|---|---|")
    for row in args.rows:
        m = measure(row, args)
        if not main_rank:
            continue
        if args.engine_only:
            print(f"| {TITLES[row]} | {world} | - | {m['engine']:.1f} | - | - |", flush=True)
            continue
        cpu = f"{100 * m['cpu']:.0f} %" if device.type == "cpu" and not args.workers else "-"
        print(f"| {TITLES[row]} | {world} | {m['bare']:.1f} | {m['engine']:.1f} | {100 * m['wall']:.0f} % | "
              f"{cpu} |", flush=True)
    dist_utils.shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
