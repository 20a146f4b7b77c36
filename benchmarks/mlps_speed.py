"""MLPS training speed: stage-1 (PDA classifier) and stage-2 (DeepLabV3+) images/s and peak memory.

Each stage is timed twice in the same run on the same synthetic batches: fp32 eager (contiguous
tensors) as the baseline, then the engine's fast path (bf16 autocast on CUDA + channels_last).
Prints a markdown table with the ratio. On CPU, autocast is off (bf16 is slower there), so the fast
path differs only by channels_last; CPU numbers are for the demo-size model. ``--compile`` adds the
fast path under ``torch.compile`` (compilation happens in the untimed warm-up steps).

    python benchmarks/mlps_speed.py --device cuda --size 224 --batch 20 --compile
    python benchmarks/mlps_speed.py --device cpu --size 96 --batch 16 --decoder-channels 64
"""

from __future__ import annotations

import argparse

import torch
from timing import images_per_second as timed

from tissueseg.methods.mlps import classification_loss, multi_layer_pseudo_supervision_loss
from tissueseg.models.bundle import ClassifierSpec, SegmenterSpec, create_model


def make_model(stage: str, args: argparse.Namespace) -> torch.nn.Module:
    if stage == "stage 1 (PDA classifier)":
        model = create_model(ClassifierSpec(args.backbone, 4, args.output_stride))
        model.gamma = 0.9
        return model
    return create_model(SegmenterSpec(args.backbone, 4, args.output_stride, args.decoder_channels))


def images_per_second(stage: str, args: argparse.Namespace, fast: bool, device: torch.device,
                      compiled: bool = False) -> tuple[float, float]:
    torch.manual_seed(0)
    model = make_model(stage, args).to(device).train()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    labels = (torch.rand(args.batch, 4, device=device) > 0.5).float()
    masks = torch.randint(0, 4, (args.batch, args.size, args.size), device=device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    forward = torch.compile(model) if compiled else model

    def loss_fn() -> torch.Tensor:
        out = forward(x)
        return (classification_loss(out, labels) if out.ndim == 2
                else multi_layer_pseudo_supervision_loss(out, [masks] * 3))

    return timed(loss_fn, opt, args.batch, args.steps, args.warmup, device, amp=fast)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--output-stride", type=int, default=16)
    parser.add_argument("--decoder-channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    memory = "peak GPU memory (GiB)" if device.type == "cuda" else "peak RSS so far (GiB)"
    print(f"device: {name}, threads: {torch.get_num_threads()}, {args.backbone} OS{args.output_stride}, "
          f"{args.size}px, batch {args.batch}, decoder {args.decoder_channels}")
    compiled = " | bf16+channels_last+compile img/s | compile speed-up" if args.compile else ""
    print(f"| stage | fp32 eager img/s | bf16+channels_last img/s | speed-up{compiled} | {memory} fp32 / fast |")
    print("|---|---|---|---|" + "---|---|" * args.compile + "---|")
    for stage in ("stage 1 (PDA classifier)", "stage 2 (DeepLabV3+)"):
        base, base_mem = images_per_second(stage, args, fast=False, device=device)
        fast, fast_mem = images_per_second(stage, args, fast=True, device=device)
        extra = ""
        if args.compile:
            comp, _ = images_per_second(stage, args, fast=True, device=device, compiled=True)
            extra = f" | {comp:.1f} | {comp / base:.2f}×"
        print(f"| {stage} | {base:.1f} | {fast:.1f} | {fast / base:.2f}×{extra} | {base_mem:.2f} / {fast_mem:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
