"""Peak memory of `tissueseg predict` on synthetic pyramidal TIFF slides of increasing size.

Memory must not grow with the slide: blended probabilities live in one chunk canvas at a time, the
class map goes to disk chunk by chunk and is written to the pyramidal TIFF tile by tile, polygons
come from a bounded downsampled map. Each size runs in a fresh process; peak RSS (``ru_maxrss``) is
reported for the main process and for the DataLoader workers.

The default setting is cheap so 32k² finishes in minutes on a laptop CPU: a 1×1-conv "model"
(``--model tiny``) at full resolution (the largest working grid, the worst case for the pipeline's
own memory). ``--model PATH`` runs a real model.pt instead (use ``--target-mpp`` to keep CPU time sane).

    python benchmarks/slide_memory.py --sizes 8192 16384 32768                 # tiny model, CPU
    python benchmarks/slide_memory.py --sizes 8192 16384 --model run/model.pt --target-mpp 4 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MPP = 0.5


def cached_synthetic_slide(workdir: Path, size: int, tissue_types: int = 1) -> Path:
    """``workdir/synthetic_<size>[_t<types>].tif``, written (and timed) by :func:`write_synthetic_slide` the
    first time."""
    slide = workdir / (f"synthetic_{size}.tif" if tissue_types == 1 else f"synthetic_{size}_t{tissue_types}.tif")
    if not slide.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        write_synthetic_slide(slide, size, tissue_types=tissue_types)
        print(f"wrote {slide} ({slide.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s", flush=True)
    return slide


TISSUE_COLOURS = np.array([[190, 95, 175], [120, 60, 150], [225, 140, 190], [160, 40, 90]], np.float32)


def write_synthetic_slide(path: Path, size: int, seed: int = 0, tissue_fraction: float = 0.55,
                          tile: int = 512, tissue_types: int = 1) -> Path:
    """A ``size``² RGB pyramidal TIFF (zlib, ``tile``² tiles, levels as main IFDs, 0.5 µm/px) with H&E-like
    blobs on glass, generated tile by tile (memory independent of ``size``). ``tissue_types`` > 1 (at most
    4) splits the tissue into smooth regions of that many stain colours (:data:`TISSUE_COLOURS`), for
    models whose class map should follow the tissue."""
    from tissueseg.data.tiff import write_pyramidal_tiff

    rng = np.random.default_rng(seed)
    low = 64  # tissue layout at 1/64 resolution
    lh = lw = -(-size // low)
    yy, xx = np.mgrid[:lh, :lw] / max(lh, 1)
    field = np.zeros((lh, lw))
    for _ in range(12):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.3)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    mask = field > np.quantile(field, 1 - tissue_fraction)
    from scipy.ndimage import gaussian_filter

    types = np.zeros((lh, lw), np.intp)
    if tissue_types > 1:
        types = np.argmax([gaussian_filter(rng.normal(size=(lh, lw)), max(lh, 8) / 16)
                           for _ in range(tissue_types)], axis=0)
    noise = rng.normal(0, 1, (tile, tile, 1)).astype(np.float32)
    noise = gaussian_filter(noise, (2, 2, 0))
    textures = np.clip(TISSUE_COLOURS[:tissue_types, None, None] + 120 * noise * np.array([0.8, 1.0, 0.6]), 0, 255)
    textures = textures.astype(np.uint8)
    glass = np.array([238, 236, 240], np.uint8)

    def tile_fn(level, y, x, h, w):
        step = 2 ** level
        rows = np.minimum(((y + np.arange(h)) * step) // low, lh - 1)
        cols = np.minimum(((x + np.arange(w)) * step) // low, lw - 1)
        m = mask[rows[:, None], cols[None, :]]
        kind = types[rows[:, None], cols[None, :]]
        tex = textures[kind, ((np.arange(h) + y) % tile)[:, None], ((np.arange(w) + x) % tile)[None, :]]
        return np.where(m[..., None], tex, glass)

    return write_pyramidal_tiff(path, tile_fn, size, size, samples=3, mpp=MPP, tile=tile, level=1, fill=255)


class TinyPredictor:
    """Built lazily in the child: a 1×1 conv + softmax with the TissuePredictor contract."""

    @staticmethod
    def create(num_classes: int = 5, tile: int = 512):
        import torch
        from torch import nn

        from tissueseg.models.bundle import ModelMeta

        class Tiny(nn.Module):
            def __init__(self):
                super().__init__()
                self.mix = nn.Conv2d(3, num_classes, 1)
                torch.nn.init.normal_(self.mix.weight, std=4.0)
                self.meta = ModelMeta(method="tiny", classes=[f"class{i}" for i in range(num_classes)],
                                      palette=[(40 * i, 255 - 40 * i, 120) for i in range(num_classes)],
                                      label_to_mask=list(range(num_classes)), background_index=None,
                                      window=tile, mpp=MPP)

            @torch.no_grad()
            def forward(self, x):
                return self.mix(x).softmax(1)

        torch.manual_seed(0)
        return Tiny().eval()


def child(args) -> None:
    """Predict one slide and print a JSON line with timings and peak RSS."""
    import torch

    from tissueseg.models.bundle import load_predictor
    from tissueseg.slides.predict import PredictOptions, predict_slide

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.model == "tiny":
        predictor = TinyPredictor.create(tile=args.tile).to(device)
    else:
        predictor = load_predictor(args.model, device)
    options = PredictOptions(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                             workers=args.workers, device=args.device, target_mpp=args.target_mpp)
    t0 = time.perf_counter()
    summary = predict_slide(predictor, args.slide, args.out, options)
    elapsed = time.perf_counter() - t0
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"summary": summary, "seconds": elapsed, "rss_main_mb": rss_self,
                      "rss_worker_mb": rss_children,
                      "classmap_mb": (Path(args.out) / "classmap.tif").stat().st_size / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--model", default="tiny", help="'tiny' (1x1 conv) or a model.pt path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    parser.add_argument("--target-mpp", type=float, default=None, help="predict at this MPP (slides are 0.5)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tissueseg-slide-bench")
    parser.add_argument("--keep-outputs", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    rows = []
    for size in args.sizes:
        slide = cached_synthetic_slide(args.workdir, size)
        out = args.workdir / f"out_{size}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        cmd = [sys.executable, __file__, "--child", "--slide", str(slide), "--out", str(out), "--model", args.model,
               "--device", args.device, "--tile", str(args.tile), "--overlap", str(args.overlap),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--threads", str(args.threads)]
        if args.target_mpp:
            cmd += ["--target-mpp", str(args.target_mpp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            raise SystemExit(f"size {size} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        s = res["summary"]
        rows.append({"size": size, "working": "×".join(map(str, s["working_size"])),
                     "tiles": s["tiles_tissue"], "chunks": s["chunks"], "seconds": res["seconds"],
                     "predict_s": s["seconds"]["predict"], "outputs_s": s["seconds"]["outputs"],
                     "rss_main_mb": res["rss_main_mb"], "rss_worker_mb": res["rss_worker_mb"],
                     "classmap_mb": res["classmap_mb"]})
        print(json.dumps(rows[-1]), flush=True)
        if not args.keep_outputs:
            import shutil

            shutil.rmtree(out, ignore_errors=True)

    print(f"\nmodel {args.model}, device {args.device}, tile {args.tile}, overlap {args.overlap}, "
          f"batch {args.batch_size}, workers {args.workers}, target MPP {args.target_mpp or MPP}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| slide | working px | tissue tiles | chunks | total s | predict s | outputs s | peak RSS main (MiB) "
          "| peak RSS worker (MiB) | classmap.tif (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}² | {r['working']} | {r['tiles']} | {r['chunks']} | {r['seconds']:.0f} | "
              f"{r['predict_s']:.0f} | {r['outputs_s']:.0f} | {r['rss_main_mb']:.0f} | {r['rss_worker_mb']:.0f} | "
              f"{r['classmap_mb']:.1f} |")


if __name__ == "__main__":
    main()
