"""PLIMSeg stage-1 cost: training images/s with the language–image matching losses against MLPS stage 1.

Same run, same synthetic batches, same classifier: MLPS stage 1 (classification loss, PDA on) is the
baseline; PLIMSeg stage 1 adds two matcher forwards per positive (image, class) pair (object and
background views) and backpropagates through the frozen matcher to the CAMs. Matchers: the
label-trained one (a registry backbone + projection) and, with ``--clip``, the real QuiltNet-B-32
architecture (open_clip ViT-B-32, random weights: speed does not depend on them). bf16 autocast and
channels_last on CUDA, as the engine trains.

    python benchmarks/plimseg_speed.py --device cpu --size 96 --batch 16
    python benchmarks/plimseg_speed.py --device cuda --size 224 --batch 32 --clip
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import images_per_second as timed

from tissueseg.methods.mlps import classification_loss
from tissueseg.methods.plimseg import matching_losses
from tissueseg.models.bundle import ClassifierSpec, MatcherSpec, create_model

NUM_CLASSES = 4
WEIGHTS = {"otm": 10.0, "btm": 24.0, "cbs": 1.0, "area": 0.2}


def label_trained_matcher(args: argparse.Namespace) -> torch.nn.Module:
    rows = [[f"class {k}"] for k in range(NUM_CLASSES)] + [["background"]]
    return create_model(MatcherSpec(args.matcher_backbone, rows, "random text", torch.randn(len(rows), 384)))


def quiltnet_architecture() -> torch.nn.Module:
    import open_clip

    from tissueseg.models.vlm import OpenClipVLM

    model = open_clip.create_model("ViT-B-32")
    return OpenClipVLM(model, open_clip.get_tokenizer("ViT-B-32"), "open_clip ViT-B-32 (QuiltNet-B-32 architecture)")


def images_per_second(args: argparse.Namespace, device: torch.device, matcher: torch.nn.Module | None
                      ) -> tuple[float, float]:
    torch.manual_seed(0)
    model = create_model(ClassifierSpec(args.backbone, NUM_CLASSES, 16)).to(device).train()
    model.gamma = 0.9
    fast = device.type == "cuda"
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    labels = (torch.rand(args.batch, NUM_CLASSES, device=device) > 0.5).float()
    if fast:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn: Callable[[], torch.Tensor]
    if matcher is None:
        def loss_fn() -> torch.Tensor:
            return classification_loss(model(x), labels)
    else:
        matcher = matcher.to(device).eval()
        for p in matcher.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            emb = matcher.encode_image(torch.rand(NUM_CLASSES + 1, 3, args.size, args.size, device=device))
        class_text, background_text = F.normalize(emb[:NUM_CLASSES], dim=-1), F.normalize(emb[NUM_CLASSES:], dim=-1)

        def loss_fn() -> torch.Tensor:
            logits, cams = model(x, with_cams=True)
            terms = matching_losses(matcher, x, cams, labels, class_text, background_text, WEIGHTS)
            return classification_loss(logits, labels) + sum(terms.values())

    return timed(loss_fn, opt, args.batch, args.steps, args.warmup, device, amp=fast)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--matcher-backbone", default="efficientnet_lite0")
    parser.add_argument("--clip", action="store_true", help="also time the QuiltNet-B-32 architecture as matcher")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    memory = "peak GPU memory (GiB)" if device.type == "cuda" else "peak RSS so far (GiB)"
    print(f"device: {name}; classifier {args.backbone} OS16, {args.size}px, batch {args.batch}, "
          f"{'bf16 + channels_last' if device.type == 'cuda' else 'fp32'}")
    print(f"| stage 1 | img/s | relative to MLPS stage 1 | {memory} |")
    print("|---|---|---|---|")
    base, base_mem = images_per_second(args, device, None)
    print(f"| MLPS (classification + PDA) | {base:.1f} | 1.00× | {base_mem:.2f} |")
    rows = [(f"PLIMSeg, label-trained matcher ({args.matcher_backbone})", label_trained_matcher(args))]
    if args.clip:
        rows.append(("PLIMSeg, QuiltNet-B-32 architecture matcher", quiltnet_architecture()))
    for label, matcher in rows:
        speed, mem = images_per_second(args, device, matcher)
        print(f"| {label} | {speed:.1f} | {speed / base:.2f}× | {mem:.2f} |")


if __name__ == "__main__":
    main()
