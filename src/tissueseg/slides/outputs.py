"""What a slide prediction leaves behind: pyramidal class-map TIFF, GeoJSON, area tables, overlay, HTML report.

Everything is written atomically (temporary file, then rename) and built tile by tile or from a
bounded, downsampled class map, so no output needs the full-resolution map in memory.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tissueseg.data.io import atomic_path
from tissueseg.data.tiff import TileFn, pyramid_levels, write_pyramidal_tiff  # noqa: F401  (re-exported)

RGB = tuple[int, int, int]
NO_TISSUE = 255  # class-map value of pixels that were not analysed (glass, outside the image)
NO_TISSUE_COLOUR: RGB = (255, 255, 255)


# --- pyramidal TIFF (the writer is :mod:`tissueseg.data.tiff`) ----------------------------------------

def palette_colormap(palette: Sequence[RGB], no_tissue: RGB = NO_TISSUE_COLOUR) -> np.ndarray:
    """A TIFF colour map (3, 256) uint16 for class indices, ``NO_TISSUE`` in ``no_tissue``."""
    cmap = np.zeros((3, 256), dtype=np.uint16)
    for i, colour in enumerate(palette[:255]):
        cmap[:, i] = np.asarray(colour, dtype=np.uint16) * 257
    cmap[:, NO_TISSUE] = np.asarray(no_tissue, dtype=np.uint16) * 257
    return cmap


# --- chunk store: the level-0 class map on disk ------------------------------------------------------

class ChunkStore:
    """The working-resolution class map as one ``.npy`` file per chunk, read back window by window.

    Windows are read through short-lived memory maps, so reading never keeps more than a window
    resident.
    """

    def __init__(self, folder: str | os.PathLike, width: int, height: int, chunk: int):
        self.folder = Path(folder)
        self.width, self.height, self.chunk = width, height, chunk

    def path(self, i: int, j: int) -> Path:
        return self.folder / f"chunk_{i}_{j}.npy"

    def read(self, y: int, x: int, h: int, w: int, step: int = 1) -> np.ndarray:
        """Samples (y + r·step, x + c·step) for r < h, c < w; ``NO_TISSUE`` outside the image."""
        out = np.full((h, w), NO_TISSUE, dtype=np.uint8)
        c = self.chunk
        y_end = min(y + (h - 1) * step + 1, self.height)
        x_end = min(x + (w - 1) * step + 1, self.width)
        if y_end <= y or x_end <= x:
            return out
        for i in range(y // c, (y_end - 1) // c + 1):
            cy0, cy1 = i * c, min((i + 1) * c, self.height)
            # first sample row inside this chunk row
            r0 = max(0, math.ceil((cy0 - y) / step))
            r1 = min(h, math.ceil((cy1 - y) / step))
            if r1 <= r0:
                continue
            for j in range(x // c, (x_end - 1) // c + 1):
                cx0, cx1 = j * c, min((j + 1) * c, self.width)
                q0 = max(0, math.ceil((cx0 - x) / step))
                q1 = min(w, math.ceil((cx1 - x) / step))
                if q1 <= q0:
                    continue
                arr = np.load(self.path(i, j), mmap_mode="r")
                ys = y + r0 * step - cy0
                xs = x + q0 * step - cx0
                out[r0:r1, q0:q1] = arr[ys:ys + (r1 - r0 - 1) * step + 1:step, xs:xs + (q1 - q0 - 1) * step + 1:step]
                del arr
        return out

    def blocks(self, size: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """(y, x, window) over the whole map in ``size`` × ``size`` windows, raster order."""
        for y in range(0, self.height, size):
            for x in range(0, self.width, size):
                yield y, x, self.read(y, x, min(size, self.height - y), min(size, self.width - x))


def mode_pool(window: np.ndarray, factor: int, batch: int = 1 << 20) -> np.ndarray:
    """Most frequent value in each ``factor`` × ``factor`` block; blocks cut by the window edge count only
    their pixels inside. Ties go to the smaller value (classes before ``NO_TISSUE``).

    Uniform blocks (most of a class map) are found with ``factor``² strided comparisons and keep their
    value; only the mixed blocks are counted (``batch`` samples at a time). Mostly mixed windows
    (speckle at a large ``factor``) are counted densely instead.
    """
    window = np.asarray(window, dtype=np.uint8)
    if factor == 1:
        return window.copy()
    h, w = window.shape
    out = window[::factor, ::factor].copy()
    mixed = np.zeros(out.shape, dtype=bool)
    for dy in range(factor):
        for dx in range(factor):
            view = window[dy::factor, dx::factor]
            mixed[:view.shape[0], :view.shape[1]] |= view != out[:view.shape[0], :view.shape[1]]
    if mixed.mean() > 0.5:
        return _mode_pool_dense(window, factor)
    bi, bj = np.nonzero(mixed)
    dy, dx = np.divmod(np.arange(factor * factor), factor)
    step = max(1, batch // max(factor * factor, 256))
    for s in range(0, len(bi), step):
        ys, xs = bi[s:s + step, None] * factor + dy, bj[s:s + step, None] * factor + dx
        inside = (ys < h) & (xs < w)
        code = np.arange(len(ys))[:, None] * 256 + window[np.minimum(ys, h - 1), np.minimum(xs, w - 1)]
        counts = np.bincount(code[inside], minlength=len(ys) * 256).reshape(len(ys), 256)
        out[bi[s:s + step], bj[s:s + step]] = counts.argmax(axis=1)
    return out


def _mode_pool_dense(window: np.ndarray, factor: int) -> np.ndarray:
    """:func:`mode_pool` counting every block, one pass per value present."""
    h, w = window.shape
    ph, pw = math.ceil(h / factor), math.ceil(w / factor)
    values = np.flatnonzero(np.bincount(window.ravel(), minlength=256))
    padded = np.full((ph * factor, pw * factor), 0, dtype=np.uint8)
    padded[:h, :w] = window
    inside = np.zeros((ph * factor, pw * factor), dtype=bool)
    inside[:h, :w] = True
    blocks = padded.reshape(ph, factor, pw, factor).transpose(0, 2, 1, 3).reshape(ph * pw, factor * factor)
    inside = inside.reshape(ph, factor, pw, factor).transpose(0, 2, 1, 3).reshape(ph * pw, factor * factor)
    counts = np.stack([((blocks == v) & inside).sum(axis=1, dtype=np.int32) for v in values], axis=1)
    return values[counts.argmax(axis=1)].astype(np.uint8).reshape(ph, pw)


def downsampled_map(store: ChunkStore, factor: int) -> np.ndarray:
    """The class map mode-pooled by ``factor`` (a power of two), built from aligned windows."""
    out = np.full((math.ceil(store.height / factor), math.ceil(store.width / factor)), NO_TISSUE, dtype=np.uint8)
    size = factor * max(1, 2048 // factor)
    for y, x, window in store.blocks(size):
        pooled = mode_pool(window, factor)
        out[y // factor:y // factor + pooled.shape[0], x // factor:x // factor + pooled.shape[1]] = pooled
    return out


# --- polygons and GeoJSON ----------------------------------------------------------------------------
# Traced and written by tissueseg.slides.annotations (rasterio + shapely); these wrappers keep the ring-array
# form ([[outer (N, 2), hole, …], …]) for callers that want plain arrays.

def _ring_area(ring: np.ndarray) -> float:
    """Signed shoelace area of an (N, 2) ring (x, y), closed or not."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(x[:-1] @ y[1:] - x[1:] @ y[:-1] + x[-1] * y[0] - x[0] * y[-1])


def _rings(poly) -> list[np.ndarray]:
    return [np.asarray(poly.exterior.coords)] + [np.asarray(h.coords) for h in poly.interiors]


def _polygon(rings: list[np.ndarray]):
    from shapely.geometry import Polygon

    return Polygon(rings[0], rings[1:])


def iter_class_polygons(class_map: np.ndarray, classes: Sequence[int], scale: float = 1.0,
                        min_pixels: int = 0, tolerance: float = 0.0) -> Iterator[tuple[int, list[list[np.ndarray]]]]:
    """Polygons (with holes) of each class region, one class at a time: ``(class, [[outer, hole, …], …])``.

    Rings are closed (N, 2) float arrays of (x, y) in units of ``scale`` px per map pixel, with
    pixel (i, j) covering [j, j+1) × [i, i+1); exteriors counter-clockwise, holes clockwise.
    :func:`tissueseg.slides.annotations.class_geometries` traces them (rasterio, 4-connected,
    along pixel edges, optionally simplified to ``tolerance``).
    """
    from tissueseg.slides.annotations import class_geometries

    for k, polys in class_geometries(class_map, classes, scale, min_pixels, tolerance):
        yield k, [_rings(p) for p in polys]


def class_polygons(class_map: np.ndarray, classes: Sequence[int], scale: float = 1.0,
                   min_pixels: int = 0) -> dict[int, list[list[np.ndarray]]]:
    """:func:`iter_class_polygons` as a dict ``{class: [[outer ring, hole, …], …]}``."""
    return dict(iter_class_polygons(class_map, classes, scale, min_pixels))


def polygon_area(poly: list[np.ndarray]) -> float:
    """Area of an outer ring minus its holes."""
    return abs(_ring_area(poly[0])) - sum(abs(_ring_area(h)) for h in poly[1:])


def geojson_feature(k: int, polys: list[list[np.ndarray]], class_names: Sequence[str],
                    palette: Sequence[RGB]) -> dict:
    """One QuPath annotation: a MultiPolygon with the classification name and colour."""
    from tissueseg.slides import annotations

    return annotations.geojson_feature(k, [_polygon(p) for p in polys], class_names, palette)


def geojson_features(polygons: dict[int, list[list[np.ndarray]]], class_names: Sequence[str],
                     palette: Sequence[RGB]) -> dict:
    """A GeoJSON FeatureCollection QuPath imports: one MultiPolygon annotation per class, with the
    classification name and colour; coordinates are level-0 pixels (x right, y down)."""
    return {"type": "FeatureCollection",
            "features": [geojson_feature(k, polys, class_names, palette) for k, polys in sorted(polygons.items())]}


def write_geojson(path: str | os.PathLike, polygons: Iterator[tuple[int, list[list[np.ndarray]]]],
                  class_names: Sequence[str], palette: Sequence[RGB], max_polygons: int = 5000) -> Path:
    """Stream a FeatureCollection of ring-array polygons to ``path`` (atomic), see
    :func:`tissueseg.slides.annotations.write_geojson`."""
    from tissueseg.slides import annotations

    annotations.write_geojson(path, ((k, [_polygon(p) for p in polys]) for k, polys in polygons), class_names,
                              palette, max_polygons)
    return Path(path)


# --- areas -------------------------------------------------------------------------------------------

def area_table(counts: np.ndarray, class_names: Sequence[str], mpp: float | None,
               background_index: int | None = None, palette: Sequence[RGB] | None = None) -> dict:
    """Per-class pixel counts → areas in mm² (``mpp`` µm per pixel; ``None`` when unknown).

    ``counts`` has 256 entries (class-map values); ``NO_TISSUE`` pixels are not analysed and excluded.
    """
    counts = np.asarray(counts, dtype=np.int64)
    analysed = int(counts[:len(class_names)].sum())
    px_mm2 = (mpp / 1000.0) ** 2 if mpp else None
    rows = []
    for k, name in enumerate(class_names):
        n = int(counts[k])
        rows.append({"class": name, "index": k, "pixels": n,
                     "area_mm2": round(n * px_mm2, 6) if px_mm2 else None,
                     "percent": round(100.0 * n / analysed, 3) if analysed else 0.0,
                     **({"color": [int(c) for c in palette[k]]} if palette is not None and k < len(palette) else {})})
    tissue = analysed - (int(counts[background_index]) if background_index is not None
                         and background_index < len(class_names) else 0)
    return {"mpp": mpp, "classes": rows, "analysed_pixels": analysed,
            "analysed_area_mm2": round(analysed * px_mm2, 6) if px_mm2 else None,
            "tissue_pixels": tissue, "tissue_area_mm2": round(tissue * px_mm2, 6) if px_mm2 else None,
            "not_analysed_pixels": int(counts[NO_TISSUE])}


def write_area_csv(path: str | os.PathLike, table: dict) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "index", "pixels", "area_mm2", "percent"])
    for row in table["classes"]:
        writer.writerow([row["class"], row["index"], row["pixels"],
                         "" if row["area_mm2"] is None else f"{row['area_mm2']:.6f}", f"{row['percent']:.3f}"])
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return Path(path)


# --- pictures and report -----------------------------------------------------------------------------

def write_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """A PNG at zlib level 3: half the encoding time of the default 6 for ~10 % more bytes (thumbnails)."""
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG", compress_level=3)
    return Path(path)


def overlay_image(thumbnail: np.ndarray, class_map: np.ndarray, class_names: Sequence[str],
                  palette: Sequence[RGB]) -> np.ndarray:
    """The thumbnail with the class map (resized to it, nearest) blended on; not-analysed pixels untouched."""
    from tissueseg.viz import add_legend, overlay

    h, w = thumbnail.shape[:2]
    if class_map.shape != (h, w):
        class_map = np.asarray(Image.fromarray(class_map).resize((w, h), Image.NEAREST))
    return add_legend(overlay(thumbnail, class_map, palette, skip_index=NO_TISSUE), class_names, palette)


def write_report(path: str | os.PathLike, summary: dict, table: dict, files: dict[str, str]) -> Path:
    """A self-describing HTML page: slide facts, thumbnail and overlay side by side, the area table."""
    e = html.escape
    facts = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in summary.items())
    def mm2(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    def row(r: dict) -> str:
        colour = tuple(r.get("color", (0, 0, 0)))
        return (f"<tr><td><span class=sw style='background:rgb{colour}'></span>{e(r['class'])}</td>"
                f"<td>{r['pixels']:,}</td><td>{mm2(r['area_mm2'])}</td><td>{r['percent']:.2f}</td></tr>")

    rows = "".join(row(r) for r in table["classes"])
    total = mm2(table["analysed_area_mm2"])
    links = " · ".join(f"<a href='{e(v)}'>{e(k)}</a>" for k, v in files.items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tissueseg: {e(str(summary.get('slide', '')))}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}} th{{background:#f4f4f4}}
.pics{{display:flex;gap:1em;flex-wrap:wrap}} .pics img{{max-width:48vw;border:1px solid #ccc}}
.sw{{display:inline-block;width:12px;height:12px;margin-right:6px;border:1px solid #333;vertical-align:middle}}</style>
</head><body>
<h1>{e(str(summary.get('slide', '')))}</h1>
<div class="pics"><figure><img src="{e(files.get('thumbnail', 'thumbnail.png'))}" alt="thumbnail">
<figcaption>slide</figcaption></figure>
<figure><img src="{e(files.get('overlay', 'overlay.png'))}" alt="overlay">
<figcaption>prediction</figcaption></figure></div>
<h2>Class areas</h2>
<table><tr><th>class</th><th>pixels</th><th>area (mm²)</th><th>% of analysed</th></tr>{rows}
<tr><th>analysed</th><th>{table['analysed_pixels']:,}</th><th>{total}</th>
<th>100</th></tr></table>
<h2>Slide and run</h2><table>{facts}</table>
<p>{links}</p>
</body></html>
"""
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return Path(path)
