"""Tiles per second and peak memory of `tissueseg data tiles` on synthetic annotated slides of growing size.

Memory must stay flat in the slide size: tiles are read one at a time, annotations are rasterised per
tile window (an STR tree finds the polygons a tile touches), the tissue mask comes from a bounded
thumbnail. Each slide is a synthetic pyramidal TIFF (`benchmarks/slide_memory.py`'s generator, 0.5 µm/px)
with a GeoJSON of hand-drawn-like annotations that scale with it: 24 wobbly polygons (120 vertices each, some
with a hole) of three classes over about a third of the slide. Each size runs in a fresh process; peak RSS is
``ru_maxrss``.

    python benchmarks/data_tiles.py --sizes 4096 8192 16384 32768            # tiles of 224 px at 1 µm/px
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

CLASSES = ["Tumor", "Stroma", "Necrosis"]


def write_annotations(path: Path, size: int, seed: int = 0, n: int = 24) -> Path:
    """QuPath-style GeoJSON: ``n`` wobbly polygons of radius ~size/14 (some with a hole), classes in turn."""
    rng = np.random.default_rng(seed)
    features = []
    for i in range(n):
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        r = size / 14 * rng.uniform(0.6, 1.2)
        angles = np.linspace(0, 2 * np.pi, 120, endpoint=False)
        radius = r * (1 + 0.15 * np.sin(3 * angles + rng.uniform(0, 6)) + rng.normal(0, 0.02, angles.size))
        ring = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1).round(1).tolist()
        rings = [ring + [ring[0]]]
        if i % 3 == 0:
            h = r * 0.25
            rings.append([[cx - h, cy - h], [cx - h, cy + h], [cx + h, cy + h], [cx + h, cy - h], [cx - h, cy - h]])
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
                         "properties": {"objectType": "annotation",
                                        "classification": {"name": CLASSES[i % 3], "color": [200, 50 * i % 255, 0]}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def child(args) -> None:
    from tissueseg.slides.annotations import ClassMapping
    from tissueseg.slides.tiles import TileOptions, tile_slides

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Python, torch, shapely, …
    options = TileOptions(ClassMapping.parse(",".join(CLASSES)), mpp=args.mpp, tile=args.tile,
                          unlabelled=args.unlabelled)
    t0 = time.perf_counter()
    result = tile_slides([args.slide], [args.geojson], args.out, options)
    elapsed = time.perf_counter() - t0
    if result.failed:
        raise SystemExit(result.failed[0][1])
    s = next(iter(result.summaries.values()))
    print(json.dumps({"seconds": elapsed, "setup_s": s["seconds"]["setup"], "tiles_s": s["seconds"]["tiles"],
                      "annotated": s["tiles_annotated"], "unlabelled": s["tiles_unlabelled"],
                      "candidates": s["tiles_candidate"], "rss_imports_mb": rss_imports,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--mpp", type=float, default=1.0, help="tile resolution (slides are 0.5 µm/px)")
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--unlabelled", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tissueseg-tiles-bench")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--geojson", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from slide_memory import cached_synthetic_slide

    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        slide = cached_synthetic_slide(args.workdir, size)
        geojson = write_annotations(args.workdir / f"synthetic_{size}.geojson", size)
        out = args.workdir / f"out_{size}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, __file__, "--child", "--slide", str(slide), "--geojson", str(geojson), "--out", str(out),
               "--mpp", str(args.mpp), "--tile", str(args.tile), "--unlabelled", str(args.unlabelled)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            raise SystemExit(f"size {size} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["size"] = size
        res["tiles"] = res["annotated"] + res["unlabelled"]
        rows.append(res)
        print(json.dumps(res), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    print(f"\ntiles {args.tile} px at {args.mpp} µm/px, {args.unlabelled} unlabelled per slide; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| slide | annotated tiles | unlabelled tiles | total s | setup s (thumbnail, tissue, GeoJSON) | tiles s "
          "| tiles/s (tiling) | peak RSS (MiB) | of which imports (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']}² | {r['annotated']} | {r['unlabelled']} | {r['seconds']:.1f} | {r['setup_s']:.1f} | "
              f"{r['tiles_s']:.1f} | {r['tiles'] / r['tiles_s']:.1f} | {r['rss_mb']:.0f} | {r['rss_imports_mb']:.0f} |")


if __name__ == "__main__":
    main()
