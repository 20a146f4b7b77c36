"""Size of `tissueseg predict`'s classes.geojson: features, polygons, vertices, bytes and seconds per
``--polygon-tolerance``, on a real prediction or on the class map of a simulated 60k² slide.

`predict` traces the class map downsampled to at most 4096 px a side (``PredictOptions.polygon_max_size``),
so a 60k² slide is traced on a ~3750² map whatever the working resolution. ``--synthetic`` builds
such a map: tissue regions from smoothed random fields (4 classes plus background), glass outside,
and 1 % single-pixel speckle for an imperfect model.

    python benchmarks/geojson_size.py --classmap tissueseg-demo/slides/synthetic_slide/classmap.tif
    python benchmarks/geojson_size.py --synthetic 60000 --mpp 0.25 --tolerances 0 1 2 4
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_map(size: int, max_side: int = 4096, seed: int = 0) -> tuple[np.ndarray, float]:
    """A class map as `predict` traces it for a ``size``² slide, and its level-0 px per map pixel: smooth
    class regions, glass around the tissue, and small islands (2 % of the area) like an imperfect model's."""
    from scipy import ndimage

    factor = 1
    while size / factor > max_side:
        factor *= 2
    side = math.ceil(size / factor)
    rng = np.random.default_rng(seed)
    low = side // 8 + 1
    fields = np.stack([ndimage.zoom(ndimage.gaussian_filter(rng.normal(size=(low, low)), 6), 8, order=1)[:side, :side]
                       for _ in range(5)])
    classes = np.argmax(fields, 0).astype(np.uint8)
    del fields
    blob = ndimage.zoom(ndimage.gaussian_filter(rng.normal(size=(64, 64)), 6), side / 64, order=1)[:side, :side]
    yy, xx = np.mgrid[:side, :side] / side
    tissue = (blob > np.quantile(blob, 0.4)) & ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.2)
    islands = ndimage.gaussian_filter(rng.normal(size=(side, side)).astype(np.float32), 1.5)
    islands = islands > np.quantile(islands, 0.98)
    labels, n = ndimage.label(islands)
    classes[islands] = rng.integers(0, 5, n + 1).astype(np.uint8)[labels[islands]]
    return np.where(tissue, classes, 255).astype(np.uint8), float(factor)


def measure(class_map: np.ndarray, scale: float, mpp: float | None, tolerances, names, palette) -> list[dict]:
    from tissueseg.slides.annotations import class_geometries, write_geojson

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tol in tolerances:
            t0 = time.perf_counter()
            stats = write_geojson(Path(tmp) / "c.geojson",
                                  class_geometries(class_map, range(len(names)), scale=scale, min_pixels=4,
                                                   tolerance=tol / mpp if mpp else tol), names, palette)
            rows.append({"tolerance_um": tol, **stats, "seconds": round(time.perf_counter() - t0, 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classmap", type=Path, help="classmap.tif written by tissueseg predict")
    parser.add_argument("--synthetic", type=int, help="simulate the class map of a SIZE² slide")
    parser.add_argument("--mpp", type=float, default=0.25, help="level-0 µm/px of the simulated slide")
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0, 1, 2, 4])
    args = parser.parse_args()
    if args.classmap:
        import tifffile

        from tissueseg.slides.outputs import mode_pool

        summary = json.loads((args.classmap.parent / "summary.json").read_text())
        class_map = tifffile.imread(args.classmap, key=0)
        factor = 1
        while max(class_map.shape) / factor > 4096:
            factor *= 2
        class_map = mode_pool(class_map, factor)
        scale, mpp, names = factor * summary["scale"], summary["slide_mpp"], summary["classes"]
        what = f"{args.classmap} ({summary['dimensions'][0]}×{summary['dimensions'][1]} slide)"
    else:
        class_map, scale = synthetic_map(args.synthetic)
        mpp, names = args.mpp, ["tumour", "stroma", "lymphocytes", "necrosis", "background"]
        what = f"simulated {args.synthetic}² slide at {mpp} µm/px, traced on {class_map.shape[1]}² map"
    palette = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 150, 0), (255, 255, 255)] * 10
    print(f"{what}; {platform.processor() or platform.machine()}")
    print("| tolerance (µm) | features | polygons | vertices | bytes | seconds |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in measure(class_map, scale, mpp, args.tolerances, names, palette):
        print(f"| {r['tolerance_um']:g} | {r['features']} | {r['polygons']:,} | {r['vertices']:,} | "
              f"{r['bytes']:,} | {r['seconds']} |")


if __name__ == "__main__":
    main()
