"""End-to-end slide throughput of `tissueseg predict` against model-only forward throughput on the same tiles.

End to end = everything `predict` does for one slide: tissue detection, reading tiles (DataLoader
workers), inference, blending, checkpointing chunks, and writing all outputs (pyramidal TIFF,
GeoJSON, areas, overlay, report). Model only = the same tissue tiles, already decoded in memory,
through the same predictor with the same batch size (uint8 → float on the device, forward with
softmax, flip TTA if asked; no copy back). Both run in the same process on the same slide; the
model-only pass runs before and after the end-to-end pass and the mean is used. Target: end to end
≥ 70 % of model only (tiles/s).

    python benchmarks/slide_throughput.py --device cpu --size 4096 --tile 256 --batch-size 8 --threads 1 --workers 1
    python benchmarks/slide_throughput.py --device cuda --size 16384 --tile 512 --batch-size 32 --workers 6
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slide_memory import MPP, write_synthetic_slide  # noqa: E402


def build_model(args, device: torch.device):
    from tissueseg.models.bundle import ModelMeta, SegmenterSpec, create_model, load_predictor, save_bundle

    if args.model:
        return load_predictor(args.model, device)
    torch.manual_seed(0)
    spec = SegmenterSpec(args.backbone, 4, 16, args.decoder_channels)
    meta = ModelMeta(method="bench", classes=["tumour", "stroma", "lymphocytes", "necrosis", "background"],
                     palette=[(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0), (255, 255, 255)],
                     label_to_mask=[0, 1, 2, 3], background_index=4, window=args.tile, mpp=MPP)
    path = Path(args.workdir) / f"bench_{args.backbone}_{args.decoder_channels}.pt"
    save_bundle(path, create_model(spec), spec, meta)
    return load_predictor(path, device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def model_only(predictor, tiles: np.ndarray, batch_size: int, device: torch.device, flip: bool, amp: bool) -> float:
    from tissueseg.models.device import autocast

    sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(tiles), batch_size):
        x = torch.from_numpy(tiles[i:i + batch_size]).to(device, non_blocking=True).float().div_(255.0)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            p = predictor(x)
            if flip:
                p = p + predictor(x.flip(-1)).flip(-1)
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="synthetic slide side (px at 0.5 µm/px)")
    parser.add_argument("--model", default=None, help="a model.pt (default: random-weight DeepLabV3+)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--decoder-channels", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tissueseg-slide-bench")
    args = parser.parse_args()

    from tissueseg.slides.predict import PredictOptions, plan_tiles, predict_slide, resolve_geometry
    from tissueseg.slides.readers import open_slide
    from tissueseg.slides.tiling import SlideTileDataset, TileGrid

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.workdir / f"throughput_{args.size}.tif"
    if not slide.exists():
        write_synthetic_slide(slide, args.size, seed=1, tissue_fraction=0.8)
    predictor = build_model(args, device)
    amp = not args.no_amp
    options = PredictOptions(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                             workers=args.workers, device=args.device, flip=args.flip, amp=amp)

    # the tiles predict will run on, decoded up front for the model-only pass
    with open_slide(slide) as reader:
        geom = resolve_geometry(reader, predictor.meta.mpp, options)
        grid = TileGrid.create(geom.width, geom.height, args.tile, args.overlap, options.chunk_size)
        _, _, all_tiles, tiles = plan_tiles(reader, grid, geom.scale, options)
        ds = SlideTileDataset(slide, tiles, args.tile, geom.scale, reader=reader)
        decoded = np.stack([ds[i][0].numpy() for i in range(len(ds))])
    n = len(tiles)
    model_only(predictor, decoded[: args.batch_size], args.batch_size, device, args.flip, amp)  # warm-up

    t_model_a = model_only(predictor, decoded, args.batch_size, device, args.flip, amp)
    out = args.workdir / f"throughput_out_{args.size}"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = predict_slide(predictor, slide, out, options)
    t_e2e = time.perf_counter() - t0
    t_model_b = model_only(predictor, decoded, args.batch_size, device, args.flip, amp)
    t_model = (t_model_a + t_model_b) / 2
    assert summary["tiles_this_run"] == n
    shutil.rmtree(out, ignore_errors=True)

    tile_mpx = n * args.tile ** 2 / 1e6
    slide_mpx = geom.width * geom.height / 1e6
    sec = summary["seconds"]
    model_name = args.model or f"{args.backbone} DeepLabV3+ (decoder {args.decoder_channels}), random weights"
    print(f"\nslide {args.size}² px synthetic ({n} tissue tiles of {len(all_tiles)}, tile {args.tile}, overlap "
          f"{args.overlap}), model {model_name}"
          f", batch {args.batch_size}, workers {args.workers}, device {args.device}, threads "
          f"{torch.get_num_threads()}, flip {args.flip}, amp {amp and device.type == 'cuda'}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| pass | seconds | tiles/s | tile Mpx/s | slide Mpx/s | vs model-only |")
    print("|---|---|---|---|---|---|")
    print(f"| model only (mean of 2: {t_model_a:.1f} s, {t_model_b:.1f} s) | {t_model:.1f} | {n / t_model:.2f} | "
          f"{tile_mpx / t_model:.2f} | {slide_mpx / t_model:.2f} | 100 % |")
    print(f"| end to end | {t_e2e:.1f} | {n / t_e2e:.2f} | {tile_mpx / t_e2e:.2f} | {slide_mpx / t_e2e:.2f} | "
          f"{100 * t_model / t_e2e:.0f} % |")
    print(f"\nend-to-end breakdown: setup (thumbnail, tissue, plan) {sec['setup']:.1f} s, predict + blend "
          f"{sec['predict']:.1f} s, outputs {sec['outputs']:.1f} s")


if __name__ == "__main__":
    main()
