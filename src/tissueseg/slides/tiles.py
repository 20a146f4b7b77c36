"""Training sets from annotated slides (``tissueseg data tiles``) and from masked images (``data tag-crops``).

:func:`tile_slides` cuts tiles at a chosen resolution from slides annotated in QuPath
(:mod:`tissueseg.slides.annotations`) and writes a ``folder`` dataset (case id = slide):

* **annotated tiles** (tissue tiles an annotation overlaps): the image, its patch-level tags in
  ``labels.csv`` (class *k* is tagged when its annotations cover at least ``tag_min_area`` of the
  tile's tissue) — the weakly supervised training set — and ``masks/<tile>.png`` with the
  annotated class per pixel and 255 elsewhere — the labelled tiles of semi- and fully supervised
  training;
* **unlabelled tiles** (``unlabelled`` per slide, seeded): tissue no annotation touches, listed in
  ``labels.csv`` with empty class cells and split ``unlabelled`` (the unlabelled pool of
  ``semi train``);
* ``tiles.csv``: every tile's slide, level-0 x/y and extent, MPP and tags, so each traces back to
  its slide; ``dataset.json``: classes, resolution and settings.

Glass is skipped with the project's tissue detection (thumbnail mask, then the tile's own
saturation at the thumbnail's Otsu threshold). Tiles are read one at a time and annotations are
rasterised per tile window, so memory does not grow with the slide. Each slide's tiles are
staged in ``OUT/.tiles/<slide>/`` with a journal and moved into ``images/``/``masks/`` when the
slide is complete (done marker ``OUT/.tiles/<slide>.done.json``): an interrupted run resumes where
it stopped, finished slides are skipped, and a slide that fails is reported while the others go on.
Runs with other slides (e.g. ``--split val``) add to the same dataset; ``labels.csv`` and
``tiles.csv`` are rebuilt from all finished slides, atomically.

:func:`tag_crops` applies the same tagging to a dataset that already has masks (WSSS4LUAD,
EBHI-Seg, any ``folder`` dataset): crops of its (optionally rescaled) images, their tags and their
masks, in its own splits or a seeded split by case, with chosen splits (validation, test) kept whole.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from tissueseg.data.io import atomic_path, palette_bytes, write_json
from tissueseg.slides.annotations import (IGNORE, AnnotationError, AnnotationIndex, ClassMapping,
                                          load_annotations)

STAGING = ".tiles"
UNLABELLED_SPLIT = "unlabelled"
STATE_VERSION = 1
# Default mask colours (classes without a QuPath colour); 255 (unannotated) shows white.
_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))

Progress = Callable[[int, int], None]
Warn = Callable[[str], None]


class TilingError(ValueError):
    """A slide (or dataset) that cannot be tiled; the message names it and the fix."""


@dataclass
class TileOptions:
    """Settings of ``tissueseg data tiles``."""

    classes: ClassMapping
    mpp: float | None = None  # µm/px of the tiles; default each slide's level-0 MPP
    slide_mpp: float | None = None  # level-0 µm/px of the slides, overriding their metadata
    tile: int = 224  # tile side in pixels at ``mpp``
    stride: int | None = None  # default: tile (no overlap)
    tag_min_area: float = 0.05  # a class is tagged when it covers this fraction of the tile's tissue
    min_tissue: float = 0.25  # tiles with less tissue than this fraction of their area are skipped
    unlabelled: int = 0  # unannotated tissue tiles per slide
    seed: int = 0
    split: str = "train"
    object_types: tuple[str, ...] = ("annotation",)
    reader: str = "auto"
    mask_size: int = 2048  # longer side of the thumbnail tissue is detected on
    overwrite: bool = False

    def settings(self) -> dict:
        d = asdict(self)
        d["classes"] = {"classes": list(self.classes.classes), "mapping": self.classes.mapping}
        d.pop("overwrite")
        return d


@dataclass
class TilesResult:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # finished by an earlier run
    failed: list[tuple[Path, str]] = field(default_factory=list)
    summaries: dict[str, dict] = field(default_factory=dict)  # slide path → its summary


# --- inputs ------------------------------------------------------------------------------------------

def pair_annotations(slides: Sequence[Path], annotations: Sequence[Path]) -> dict[Path, Path | None]:
    """Each slide's GeoJSON: ``<slide stem>.geojson`` (or ``<slide name>.geojson``, ``.json``); a lone
    slide with a lone GeoJSON pair up whatever their names."""
    if len(slides) == 1 and len(annotations) == 1:
        return {slides[0]: annotations[0]}
    by_stem: dict[str, Path] = {}
    for a in annotations:
        by_stem.setdefault(a.stem, a)
    return {s: by_stem.get(s.stem) or by_stem.get(s.name) for s in slides}


def _file_id(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _png(path: Path, array: np.ndarray, palette=None) -> None:
    """Atomic PNG (a palette image of class indices with ``palette``), zlib level 1: half the time of the
    default level for 3 % more bytes on H&E tiles."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    if palette is not None:
        img.putpalette(palette_bytes(palette))  # "L" → "P"
    with atomic_path(path) as tmp:  # the usual file mode, not mkstemp's 0600 (datasets are shared)
        img.save(tmp, format="PNG", compress_level=1)


# --- one slide ---------------------------------------------------------------------------------------

def _tile_name(name: str, x: int, y: int) -> str:
    return f"{name}_x{x}_y{y}.png"


def _palette(options: TileOptions, annotations) -> list[tuple[int, int, int]]:
    palette = [_PALETTE[i % len(_PALETTE)] for i in range(len(options.classes.classes))]
    for a in annotations:
        if a.label is not None and a.colour is not None:
            palette[a.label] = a.colour
    return palette + [(0, 0, 0)] * (IGNORE - len(palette)) + [(255, 255, 255)]


class _Journal:
    """Rows of the tiles already written for a slide (JSON lines after a state header); a torn last
    line from a crash is ignored."""

    def __init__(self, path: Path, state: dict):
        """Resume the journal at ``path`` when it was written with ``state``; else clear its folder (the
        staged tiles of other settings) and start afresh."""
        self.path = path
        self.rows: list[dict] = []
        header = json.loads(json.dumps(state))
        if not path.exists() and path.parent.exists():
            shutil.rmtree(path.parent)
        if path.exists():
            lines = path.read_text().splitlines()
            try:
                ok = bool(lines) and json.loads(lines[0]) == header
            except ValueError:
                ok = False
            if ok:
                for line in lines[1:]:
                    try:
                        self.rows.append(json.loads(line))
                    except ValueError:  # torn by a crash: drop it and what follows (rewritten below)
                        break
                with atomic_path(path) as tmp:
                    tmp.write_text("".join(json.dumps(r) + "\n" for r in [header, *self.rows]))
                self._f = open(path, "a")
                return
            shutil.rmtree(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "w")
        self._f.write(json.dumps(header) + "\n")
        self._f.flush()

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _clear_slide(out: Path, name: str) -> None:
    """Remove a slide's staged files, journal, marker and the tiles it had moved into the dataset."""
    marker = out / STAGING / f"{name}.done.json"
    rows = []
    if marker.exists():
        try:
            rows = json.loads(marker.read_text()).get("rows", [])
        except ValueError:
            rows = []
    for row in rows:
        (out / "images" / row["image"]).unlink(missing_ok=True)
        (out / "masks" / row["image"]).unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    shutil.rmtree(out / STAGING / name, ignore_errors=True)


def tile_slide(slide: str | os.PathLike, geojson: str | os.PathLike, out: str | os.PathLike, options: TileOptions,
               name: str | None = None, progress: Progress | None = None, warn: Warn | None = None) -> dict:
    """Tile one annotated slide into the dataset ``out``; returns its summary (rows included).

    Resumes from ``out/.tiles/<name>/`` when the slide, its GeoJSON and the settings are unchanged.
    Raises :class:`TilingError`, :class:`AnnotationError` or :class:`SlideError` for bad input.
    """
    from tissueseg.models.inference import window_starts
    from tissueseg.slides.readers import open_slide
    from tissueseg.slides.tissue import TissueIndex, detect_tissue, saturation, saturation_threshold

    import time

    t_start = time.perf_counter()
    slide, geojson, out = Path(slide), Path(geojson), Path(out)
    name = name or slide.stem
    warn = warn or (lambda msg: None)
    if not geojson.exists():
        raise AnnotationError(f"{geojson}: annotation file not found (fix: check the path)")
    if options.unlabelled and options.split != "train":
        raise TilingError(f"--unlabelled with --split {options.split}: unlabelled tiles join the training pool, "
                          f"so only training slides (--split train) may give them")
    state = {"version": STATE_VERSION, "slide": _file_id(slide), "geojson": _sha1(geojson),
             "settings": options.settings()}
    work = out / STAGING / name
    marker = out / STAGING / f"{name}.done.json"
    if marker.exists() and not options.overwrite:
        try:
            done = json.loads(marker.read_text())
            if done.get("state") == json.loads(json.dumps(state)):
                return {**done, "resumed": "finished"}
        except ValueError:
            pass
    if options.overwrite or marker.exists():
        _clear_slide(out, name)

    with open_slide(slide, options.reader) as reader:
        width0, height0 = reader.dimensions
        slide_mpp = options.slide_mpp or reader.mpp
        if not slide_mpp:
            raise TilingError(f"{slide}: the slide has no MPP (µm per pixel) in its metadata (fix: pass "
                              f"--slide-mpp with its level-0 µm/px, e.g. --slide-mpp 0.25 for a 40x scan)")
        mpp = options.mpp or slide_mpp
        scale = mpp / slide_mpp
        if scale < 0.9:
            warn(f"{slide}: tiles at {mpp:.3f} µm/px are finer than the slide ({slide_mpp:.3f} µm/px): "
                 f"upsampling x{1 / scale:.2f}")
        annotations = load_annotations(geojson, options.classes, (width0, height0), options.object_types,
                                       warn=warn, slide=slide.name)
        if not any(a.label is not None for a in annotations):
            raise TilingError(f"{slide}: {geojson} has no usable annotation (every feature was skipped, ignored or "
                              f"outside the slide; see the warnings) (fix: export the annotations of this slide "
                              f"from QuPath)")
        index = AnnotationIndex(annotations)
        palette = _palette(options, annotations)

        thumb, thumb_ds = reader.thumbnail(options.mask_size)
        tissue_index = TissueIndex(detect_tissue(thumb), thumb_ds)
        threshold = saturation_threshold(saturation(thumb))
        del thumb

        t, stride = options.tile, options.stride or options.tile
        if t < 8 or stride < 1:
            raise TilingError(f"tile {t} / stride {stride}: the tile must be ≥ 8 px and the stride ≥ 1 px")
        width, height = max(1, int(width0 / scale + 1e-6)), max(1, int(height0 / scale + 1e-6))
        ys, xs = window_starts(height, t, stride), window_starts(width, t, stride)
        yy, xx = np.meshgrid(np.asarray(ys, dtype=np.float64), np.asarray(xs, dtype=np.float64), indexing="ij")
        x0, y0 = (xx.ravel() * scale).round(), (yy.ravel() * scale).round()
        ext = t * scale
        has_tissue = tissue_index.counts(x0, y0, ext, ext) > 0
        annotated = has_tissue & index.touching(x0, y0, x0 + ext, y0 + ext, labelled_only=True)
        near_any = index.touching(x0, y0, x0 + ext, y0 + ext)
        free = np.flatnonzero(has_tissue & ~near_any)
        rng = np.random.default_rng([options.seed, zlib.crc32(name.encode())])
        free = free[rng.permutation(len(free))]
        candidates = np.flatnonzero(annotated)

        t_tiles = time.perf_counter()
        journal = _Journal(work / "journal.jsonl", state)
        written = {(r["x"], r["y"], r["kind"]) for r in journal.rows}
        n_unlabelled = sum(r["kind"] == "unlabelled" for r in journal.rows)
        total = len(candidates) + min(options.unlabelled, len(free))
        counts = {"glass": 0, "below_tag_min_area": 0}
        step = len(journal.rows)
        if progress is not None:
            progress(step, total)
        classes = options.classes.classes

        def read(i: int) -> tuple[np.ndarray, np.ndarray, float]:
            image = reader.read_scaled((x0[i], y0[i], ext, ext), (t, t))
            tissue = saturation(image) > threshold
            return image, tissue, float(tissue.mean())

        def row(i: int, kind: str, tissue_fraction: float, coverage=None, labels=None) -> dict:
            return {"image": _tile_name(name, int(x0[i]), int(y0[i])), "slide": str(slide), "case": name,
                    "split": options.split if kind == "annotated" else UNLABELLED_SPLIT, "kind": kind,
                    "x": int(x0[i]), "y": int(y0[i]), "width": round(ext, 3), "height": round(ext, 3),
                    "mpp": mpp, "tile": t, "tissue": round(tissue_fraction, 4),
                    "coverage": coverage, "labels": labels}

        (work / "images").mkdir(parents=True, exist_ok=True)
        (work / "masks").mkdir(parents=True, exist_ok=True)
        try:
            for i in candidates:
                if (int(x0[i]), int(y0[i]), "annotated") in written:
                    continue
                image, tissue, fraction = read(i)
                step += 1
                if fraction < options.min_tissue:
                    counts["glass"] += 1
                else:
                    mask = index.rasterize(x0[i], y0[i], t, t, scale)
                    n = max(int(tissue.sum()), 1)
                    on_tissue = np.bincount(mask[tissue], minlength=256)
                    coverage = {c: round(float(on_tissue[k]) / n, 4) for k, c in enumerate(classes)}
                    labels = [int(coverage[c] >= options.tag_min_area and on_tissue[k] > 0)
                              for k, c in enumerate(classes)]
                    if not any(labels):
                        counts["below_tag_min_area"] += 1
                    else:
                        r = row(i, "annotated", fraction, coverage, labels)
                        _png(work / "images" / r["image"], image)
                        _png(work / "masks" / r["image"], mask, palette=palette)
                        journal.add(r)
                if progress is not None:
                    progress(step, total)
            for i in free:
                if n_unlabelled >= options.unlabelled:
                    break
                if (int(x0[i]), int(y0[i]), "unlabelled") in written:
                    continue
                image, _, fraction = read(i)
                if fraction < options.min_tissue:
                    counts["glass"] += 1
                    continue
                r = row(i, "unlabelled", fraction)
                _png(work / "images" / r["image"], image)
                journal.add(r)
                n_unlabelled += 1
                step += 1
                if progress is not None:
                    progress(min(step, total), total)
        finally:
            journal.close()
    if progress is not None:
        progress(total, total)

    rows = journal.rows
    n_annotated = sum(r["kind"] == "annotated" for r in rows)
    if not n_annotated:
        shutil.rmtree(work, ignore_errors=True)
        raise TilingError(f"{slide}: no tile written: {len(candidates)} tissue tiles touch an annotation, "
                          f"{counts['glass']} of them had less than {options.min_tissue:.0%} tissue and "
                          f"{counts['below_tag_min_area']} no class covering {options.tag_min_area:.0%} of their "
                          f"tissue (fix: check the annotations lie on tissue, lower --min-tissue / --tag-min-area, "
                          f"or use a smaller --tile)")
    if n_unlabelled < options.unlabelled:
        warn(f"{slide}: only {n_unlabelled} unannotated tissue tiles (asked for {options.unlabelled})")
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for f in (work / sub).iterdir():
            if not f.name.startswith("."):
                os.replace(f, out / sub / f.name)
    summary = {"slide": str(slide), "name": name, "geojson": str(geojson), "dimensions": [width0, height0],
               "slide_mpp": slide_mpp, "mpp": mpp, "tile": t, "stride": stride, "classes": list(classes),
               "annotations": len(annotations), "tiles_annotated": n_annotated, "tiles_unlabelled": n_unlabelled,
               "tiles_candidate": int(len(candidates)), "skipped": counts,
               "seconds": {"setup": round(t_tiles - t_start, 3), "tiles": round(time.perf_counter() - t_tiles, 3)},
               "state": state, "rows": rows}
    write_json(marker, summary)
    shutil.rmtree(work, ignore_errors=True)
    return summary


# --- the dataset index -------------------------------------------------------------------------------

LABEL_COLUMNS = ("case", "split")
TILE_COLUMNS = ("image", "slide", "case", "split", "kind", "x", "y", "width", "height", "mpp", "tile", "tissue",
                "tags")


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _labels_rows(rows: Sequence[dict], n_classes: int) -> list[list]:
    out = []
    for r in rows:
        labels = r.get("labels")
        cells = [str(v) for v in labels] if labels is not None else [""] * n_classes
        out.append([r["image"], *cells, r["case"], r["split"]])
    return out


def write_index(out: str | os.PathLike, extra: dict | None = None) -> dict:
    """Rebuild ``labels.csv``, ``tiles.csv`` and ``dataset.json`` from every finished slide in ``out``."""
    out = Path(out)
    markers = sorted((out / STAGING).glob("*.done.json"))
    summaries = [json.loads(m.read_text()) for m in markers]
    if not summaries:
        raise TilingError(f"{out}: no finished slide, nothing to index")
    classes = summaries[0]["classes"]
    for s in summaries[1:]:
        if s["classes"] != classes:
            raise TilingError(f"{out}: slide {s['name']} was tiled with classes {s['classes']}, others with {classes} "
                              f"(fix: tile every slide of a dataset with the same --classes, or use a new --out)")
    rows = [r for s in summaries for r in s["rows"]]
    _write_csv(out / "labels.csv", ["image", *classes, *LABEL_COLUMNS], _labels_rows(rows, len(classes)))
    _write_csv(out / "tiles.csv", TILE_COLUMNS,
               [[r["image"], r["slide"], r["case"], r["split"], r["kind"], r["x"], r["y"], r["width"], r["height"],
                 r["mpp"], r["tile"], r["tissue"],
                 ";".join(c for c, v in zip(classes, r["labels"] or []) if v)] for r in rows])
    mpps = sorted({s["mpp"] for s in summaries})
    info = {"format": "folder", "classes": classes, "mpp": mpps[0] if len(mpps) == 1 else mpps,
            "tile": sorted({s["tile"] for s in summaries}), "images": len(rows),
            "slides": {s["name"]: {"slide": s["slide"], "geojson": s["geojson"], "split": s["rows"][0]["split"],
                                   "annotated": s["tiles_annotated"], "unlabelled": s["tiles_unlabelled"]}
                       for s in summaries}, **(extra or {})}
    write_json(out / "dataset.json", info)
    return info


def tile_slides(slides: Sequence[str | os.PathLike], annotations: Sequence[str | os.PathLike],
                out: str | os.PathLike, options: TileOptions, *, log: Callable[[str], None] | None = None,
                progress_factory: Callable[[Path], Progress | None] | None = None) -> TilesResult:
    """Tile every slide (files or folders) with its GeoJSON into the dataset ``out``; failures are collected.

    Finished slides are skipped (same slide, GeoJSON and settings), interrupted ones resume. The index
    files are rebuilt at the end from all finished slides of ``out``.
    """
    from tissueseg.slides.predict import expand_inputs, output_names

    log = log or (lambda msg: None)
    out = Path(out)
    result = TilesResult()
    paths = expand_inputs(slides)
    for p in map(Path, slides):
        if p.is_dir() and not any(s.parent == p for s in paths):
            result.failed.append((p, f"{p}: no slides or images in this folder"))
    geojsons = expand_inputs(annotations, (".geojson", ".json"))  # GeoJSON files, or folders of them
    pairs = pair_annotations(paths, geojsons)
    for path, name in zip(paths, output_names(paths)):
        geojson = pairs[path]
        if geojson is None:
            msg = (f"{path}: no GeoJSON for this slide among --annotations (fix: name it {path.stem}.geojson, "
                   f"as QuPath's export does by default)")
            result.failed.append((path, msg))
            log(f"FAILED {msg}")
            continue
        try:
            summary = tile_slide(path, geojson, out, options, name=name,
                                 progress=progress_factory(path) if progress_factory else None, warn=log)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
            msg = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{path}: {type(exc).__name__}: {exc}"
            if str(path) not in msg:
                msg = f"{path}: {msg}"
            result.failed.append((path, msg))
            log(f"FAILED {msg}")
            continue
        result.summaries[str(path)] = summary
        if summary.get("resumed") == "finished":
            result.skipped.append(path)
            log(f"skip {path} (finished)")
        else:
            result.done.append(path)
            log(f"done {path}: {summary['tiles_annotated']} annotated + {summary['tiles_unlabelled']} unlabelled "
                f"tiles at {summary['mpp']:.3f} µm/px")
    if result.done or result.skipped:
        write_index(out)
    return result


# --- tagged crops of masked datasets -----------------------------------------------------------------

CROP_STAMP = ".tag-crops.json"  # settings of the crops in OUT, written before the first one


@dataclass
class CropOptions:
    """Settings of ``tissueseg data tag-crops``."""

    crop: int = 224
    stride: int | None = None  # default: crop
    tag_min_area: float = 0.05  # of the crop's tissue (pixels of tissue classes)
    min_tissue: float = 0.0  # crops with less tissue (fraction of the crop) are skipped
    background: bool = True  # tag background as a class of its own ("background" column) when the dataset has one
    scale: float = 1.0  # images resized by this factor (bilinear, masks nearest) before cropping
    mpp: float | None = None  # µm/px of the source images (default: the source's own); OUT records mpp / scale
    split_fractions: tuple[float, float, float] | None = None  # re-split the images by case (seeded): train/val/test
    whole: tuple[str, ...] = ()  # splits written as whole images with their masks (for scoring), not cropped
    per_image: int | None = None  # keep this many of each image's tagged crops (seeded)
    seed: int = 0  # of split_fractions and per_image
    format: str = "auto"
    overwrite: bool = False

    def settings(self, source: str | os.PathLike) -> dict:
        """What the crops of ``source`` depend on, as JSON values (``overwrite`` left out)."""
        d = asdict(self) | {"source": str(Path(source))}
        d.pop("overwrite")
        return json.loads(json.dumps(d))

    def check(self) -> None:
        """Raise :class:`TilingError` naming the bad option and its fix."""
        if self.crop < 1 or (self.stride is not None and self.stride < 1):
            raise TilingError(f"--crop {self.crop} / --stride {self.stride}: both must be ≥ 1 px "
                              f"(fix: e.g. --crop 224 --stride 112)")
        if not self.scale > 0:
            raise TilingError(f"--scale {self.scale}: must be > 0 (fix: e.g. --scale 0.5 halves the images, "
                              f"1 keeps them)")
        if self.mpp is not None and not self.mpp > 0:
            raise TilingError(f"--mpp {self.mpp}: must be > 0 µm/px (fix: e.g. --mpp 0.25 for a 40x scan, "
                              f"or leave it out)")
        if self.per_image is not None and self.per_image < 1:
            raise TilingError(f"--per-image {self.per_image}: must be ≥ 1 (fix: leave it out to keep every crop)")
        fractions = self.split_fractions
        if fractions is not None and (len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6):
            raise TilingError(f"--split-fractions {','.join(map(str, fractions))}: three fractions (train, val, test) "
                              f"≥ 0 summing to 1 (fix: e.g. --split-fractions 0.7,0.15,0.15)")
        for name, value in (("--tag-min-area", self.tag_min_area), ("--min-tissue", self.min_tissue)):
            if not 0 <= value <= 1:
                raise TilingError(f"{name} {value}: must be a fraction in [0, 1] (fix: e.g. {name} 0.05)")


def crop_tags(mask: np.ndarray, tissue_values: Sequence[int], background_value: int | None,
              tag_min_area: float) -> tuple[list[int], list[float], float, float]:
    """Tags of one crop's mask: ``(tags, coverage, tissue_fraction, background_fraction)``.

    Tissue classes are tagged when they cover ≥ ``tag_min_area`` of the crop's tissue (its pixels of
    tissue classes); background when it covers ≥ ``tag_min_area`` of the crop's labelled pixels.
    """
    counts = np.bincount(np.clip(mask, 0, 255).ravel().astype(np.int64), minlength=256)
    tissue = int(sum(counts[v] for v in tissue_values))
    coverage = [float(counts[v]) / tissue if tissue else 0.0 for v in tissue_values]
    tags = [int(c >= tag_min_area and counts[v] > 0) for c, v in zip(coverage, tissue_values)]
    bg = 0.0
    if background_value is not None:
        labelled = tissue + int(counts[background_value])
        bg = float(counts[background_value]) / labelled if labelled else 0.0
        tags.append(int(bg >= tag_min_area and counts[background_value] > 0))
        coverage.append(bg)
    return tags, coverage, tissue / mask.size, bg


def _rescaled(array: np.ndarray, scale: float, nearest: bool) -> np.ndarray:
    """An image (bilinear) or mask (``nearest``) resized by ``scale``."""
    if scale == 1.0:
        return array
    from PIL import Image

    h, w = array.shape[:2]
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(img.resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def _start_crops(out: Path, settings: dict, overwrite: bool) -> None:
    """Clear crops of other settings (or all, with ``overwrite``) from ``out`` and stamp it with ``settings``."""
    stamp = out / CROP_STAMP
    prior = json.loads(stamp.read_text()) if stamp.exists() else None
    if prior is None and not overwrite and any((out / "images").glob("*")):
        raise TilingError(f"{out}: images/ holds files that tag-crops did not write (fix: choose a new --out, or "
                          f"--overwrite to replace them)")
    if overwrite or prior != settings:
        for sub in ("images", "masks"):
            shutil.rmtree(out / sub, ignore_errors=True)
    write_json(stamp, settings)


def tag_crops(dataset: str | os.PathLike, out: str | os.PathLike, options: CropOptions | None = None,
              progress: Progress | None = None, warn: Warn | None = None) -> dict:
    """Cut every masked image of ``dataset`` into crops and write a ``folder`` dataset with their tags.

    Classes are the dataset's label classes (plus ``background`` when it has one and
    ``options.background``); masks keep every class pixel, 255 elsewhere. Images are resized by
    ``options.scale`` first; crops along a side shorter than the crop are as long as that side.
    Case and split come from the source, or from a seeded split by case
    (``options.split_fractions``); the images of ``options.whole`` splits are written whole, with
    their tags and masks, whatever their tissue (validation and scoring). ``crops.csv`` gives each
    crop's source image, x/y and size (scaled pixels). A rerun with the same settings keeps the crops
    already written (files are written atomically); other settings start afresh. The CSVs and
    ``dataset.json`` (classes, MPP of the crops when known) are written last.
    """
    from tissueseg.data import open_dataset, split_by_case
    from tissueseg.models.inference import window_starts
    from tissueseg.slides.predict import output_names

    options = options or CropOptions()
    options.check()
    warn = warn or (lambda msg: None)
    out = Path(out)
    settings = options.settings(dataset)
    if not options.overwrite and all((out / f).exists() for f in ("labels.csv", "crops.csv", "dataset.json")):
        prior = json.loads((out / "dataset.json").read_text())
        if prior.get("settings") == settings:
            return {**prior, "resumed": "finished"}
    ds = open_dataset(dataset, format=options.format, strict=False)  # e.g. WSSS4LUAD without its training folder
    for problem in ds.problems:
        warn(f"{problem} (its files are left out)" if problem.fatal else str(problem))
    info = ds.info
    label_values = [info.classes.index(c) for c in info.label_classes]
    bg = info.background_index if options.background else None
    if bg is not None and bg in label_values:  # background already a label class (folder datasets)
        label_values.remove(bg)
    values = label_values + ([bg] if bg is not None else [])
    classes = [info.classes[v] for v in label_values] + (["background"] if bg is not None else [])
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[values] = np.arange(len(values))
    palette = [tuple(info.palette[v]) if v < len(info.palette) else _PALETTE[k % len(_PALETTE)]
               for k, v in enumerate(values)]
    palette = palette + [(0, 0, 0)] * (IGNORE - len(palette)) + [(255, 255, 255)]
    records = [r for r in ds.records if r.mask_path is not None]
    if len(records) < len(ds.records):
        warn(f"{dataset}: {len(ds.records) - len(records)} images without a mask skipped")
    if not records:
        raise TilingError(f"{dataset}: no image has a mask to derive tags from")
    if options.split_fractions is not None:
        parts = split_by_case(records, tuple(options.split_fractions), options.seed)
        records = [replace(r, split=name) for name, part in parts.items() for r in part]
    unknown = sorted(set(options.whole) - {r.split for r in records})
    if unknown:
        raise TilingError(f"--whole {','.join(unknown)}: {dataset} has no such split (its splits: "
                          f"{', '.join(sorted({r.split for r in records}))}) (fix: name splits it has, or re-split the "
                          f"images with --split-fractions 0.7,0.15,0.15)")
    _start_crops(out, settings, options.overwrite)
    c, stride = options.crop, options.stride or options.crop
    tissue_values, bg_value = range(len(label_values)), (len(label_values) if bg is not None else None)
    rows, untagged = [], 0
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    stems = output_names([r.image_path for r in records])  # a path hash where stems repeat (EBHI class folders)
    for i, (record, stem) in enumerate(zip(records, stems)):
        sample = ds.load(record)
        image = _rescaled(sample.image, options.scale, nearest=False)
        mask = _rescaled(lut[np.clip(sample.mask, 0, 255)], options.scale, nearest=True)
        h, w = mask.shape
        kind = "whole" if record.split in options.whole else "crop"
        windows = [(f"{stem}.png", 0, 0, h, w)] if kind == "whole" else [
            (f"{stem}_x{x}_y{y}.png", x, y, c, c)
            for y in window_starts(h, c, stride) for x in window_starts(w, c, stride)]
        pieces = []
        for name, x, y, ph, pw in windows:
            m = mask[y:y + ph, x:x + pw]
            tags, coverage, tissue, _ = crop_tags(m, tissue_values, bg_value, options.tag_min_area)
            if kind == "whole" or (tissue >= options.min_tissue and any(tags)):
                pieces.append((name, x, y, m, tags, coverage))
        untagged += len(windows) - len(pieces)
        if kind == "crop" and options.per_image and len(pieces) > options.per_image:
            rng = np.random.default_rng([options.seed, zlib.crc32(stem.encode())])
            pieces = [pieces[k] for k in sorted(rng.choice(len(pieces), options.per_image, replace=False))]
        for name, x, y, m, tags, coverage in pieces:
            if not (out / "images" / name).exists() or not (out / "masks" / name).exists():
                _png(out / "masks" / name, m, palette=palette)
                _png(out / "images" / name, image[y:y + m.shape[0], x:x + m.shape[1]])
            rows.append({"image": name, "source": str(record.image_path), "case": record.case_id,
                         "split": record.split, "kind": kind, "x": x, "y": y, "width": m.shape[1],
                         "height": m.shape[0], "labels": tags, "coverage": [round(v, 4) for v in coverage]})
        if progress is not None:
            progress(i + 1, len(records))
    crops = [r for r in rows if r["kind"] == "crop"]
    if not crops and any(r.split not in options.whole for r in records):
        raise TilingError(f"{dataset}: no crop has a tag (fix: lower --tag-min-area / --min-tissue or the --crop size)")
    _write_csv(out / "crops.csv", ["image", "source", "case", "split", "kind", "x", "y", "width", "height", "tags"],
               [[r["image"], r["source"], r["case"], r["split"], r["kind"], r["x"], r["y"], r["width"], r["height"],
                 ";".join(cl for cl, v in zip(classes, r["labels"]) if v)] for r in rows])
    _write_csv(out / "labels.csv", ["image", *classes, *LABEL_COLUMNS], _labels_rows(rows, len(classes)))
    mpp = options.mpp or info.mpp
    summary = {"format": "folder", "source": str(dataset), "source_format": info.format, "classes": classes,
               "mpp": mpp / options.scale if mpp else None, "crops": len(crops), "whole": len(rows) - len(crops),
               "images": len(records), "skipped_untagged": untagged,
               "splits": {s: sum(r["split"] == s for r in rows) for s in sorted({r["split"] for r in rows})},
               "tag_frequencies": {cl: int(sum(r["labels"][k] for r in crops)) for k, cl in enumerate(classes)},
               "settings": settings}
    write_json(out / "dataset.json", summary)
    return summary
