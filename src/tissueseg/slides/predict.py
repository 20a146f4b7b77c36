"""The slide pipeline behind ``tissueseg predict``: slide → tissue mask → tiles → blended class map → outputs.

Per slide (:func:`predict_slide`):

1. open the slide (:func:`tissueseg.slides.readers.open_slide`) and choose the *working
   resolution*: the model's training MPP (``ModelMeta.mpp``, or ``target_mpp``) read from the best
   pyramid level and resampled; without an MPP on either side, level 0 as is;
2. detect tissue on a thumbnail (Otsu on saturation) so tiles of bare glass are skipped;
3. predict overlapping tiles in batches (optional flip TTA; ``amp``: bf16 autocast and channels_last on
   CUDA and on CPUs with AMX, fp32 elsewhere — :func:`inference_model`; the model's
   classification gate and white-background detection are applied by ``TissuePredictor``) while
   DataLoader workers read the next tiles;
4. blend the tiles chunk by chunk (:mod:`tissueseg.slides.tiling`): each finished chunk's class
   map is saved in ``<out>/.partial`` — the resume checkpoint — so an interrupted slide continues
   where it stopped and memory never holds more than one chunk; meanwhile a thread writes the
   pyramidal class-map TIFF's full-resolution level as its rows of chunks are finished
   (:class:`FinishedRows`);
5. write the other outputs (:mod:`tissueseg.slides.outputs`) atomically, ``summary.json`` last (the
   "finished" marker), and remove ``.partial``.

:func:`predict_slides` runs a batch: under ``torchrun`` rank *r* of *N* takes slides ``r::N``,
finished slides are skipped, and a slide that fails is reported and the batch goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tissueseg.data.io import write_json
from tissueseg.models.device import inference_autocast, inference_dtype, resolve_device
from tissueseg.slides.annotations import class_geometries, write_geojson
from tissueseg.slides.outputs import (NO_TISSUE, ChunkStore, area_table, downsampled_map, overlay_image,
                                      palette_colormap, write_area_csv, write_image, write_pyramidal_tiff,
                                      write_report)
from tissueseg.slides.readers import SLIDE_SUFFIXES, SlideError, SlideReader, open_slide
from tissueseg.slides.tiling import (BlendAccumulator, SlideTileDataset, TileGrid, _save_npy, blend_window,
                                     collate_tiles)
from tissueseg.slides.tissue import TissueIndex, detect_tissue

WORK_DIR = ".partial"
SUMMARY = "summary.json"
STATE_VERSION = 1

ProgressFn = Callable[[int, int], None]


@dataclass
class PredictOptions:
    """Settings of a slide prediction (CLI flags of ``tissueseg predict``)."""

    tile_size: int | None = None  # working-resolution tile side; default the model's window (ModelMeta.window)
    overlap: int | None = None  # px shared by neighbouring tiles; default tile_size // 4
    batch_size: int = 16
    workers: int = 2  # DataLoader worker processes reading tiles ahead
    device: str = "auto"
    flip: bool = False  # average with the horizontally flipped prediction
    amp: bool = True  # bf16 autocast + channels_last on CUDA and on CPUs with AMX (else, or False: fp32)
    slide_mpp: float | None = None  # level-0 µm/px of the slide, overriding its metadata
    target_mpp: float | None = None  # µm/px to predict at, overriding the model's training MPP
    tissue_detection: bool = True
    mask_glass: bool | None = None  # set pixels outside the tissue mask to "not analysed"; default: when the
    #                                 model has no background class
    reader: str = "auto"  # auto | openslide | tiff | image
    chunk_size: int = 1024  # blending/checkpoint unit (working px, rounded up to a multiple of the stride)
    mask_size: int = 2048  # longer side of the thumbnail tissue is detected on
    thumbnail_size: int = 1024  # longer side of thumbnail.png / overlay.png
    # the GeoJSON is traced on the class map downsampled to at most this side, and further while a traced pixel
    # stays within half the polygon tolerance (:func:`trace_downsample`)
    polygon_max_size: int = 4096
    min_polygon_pixels: int = 4  # smaller regions (in that downsampled map) are not exported
    polygon_tolerance: float | None = None  # µm the GeoJSON outlines may deviate by (level-0 px without an MPP);
    #                                         default: 2 µm and at least one pixel of the traced map; 0: exact
    tiff_tile: int = 256
    overwrite: bool = False  # redo finished slides instead of skipping them


@dataclass
class SlideGeometry:
    """Level-0 size, MPPs and the working grid (working px (y, x) = level-0 px (y·scale, x·scale))."""

    width0: int
    height0: int
    slide_mpp: float | None
    scale: float
    width: int
    height: int
    mpp: float | None
    notes: list[str] = field(default_factory=list)


def resolve_geometry(reader: SlideReader, model_mpp: float | None, options: PredictOptions) -> SlideGeometry:
    """Working resolution = the model's MPP when both it and the slide's MPP are known, else level 0."""
    width0, height0 = reader.dimensions
    slide_mpp = options.slide_mpp or reader.mpp
    target = options.target_mpp or model_mpp
    notes = []
    if target and slide_mpp:
        scale = target / slide_mpp
        if scale < 0.9:
            notes.append(f"the slide ({slide_mpp:.3f} µm/px) is coarser than the model's resolution "
                         f"({target:.3f} µm/px): upsampling ×{1 / scale:.2f}")
    else:
        scale = 1.0
        if target and not slide_mpp:
            notes.append("the slide has no MPP in its metadata: predicting at level 0 "
                         "(fix: pass --mpp with the slide's µm per pixel)")
        elif slide_mpp and not target:
            notes.append("the model does not record its training MPP: predicting at level 0 "
                         "(pass --target-mpp to choose the resolution)")
    width = max(1, int(math.floor(width0 / scale + 1e-6)))
    height = max(1, int(math.floor(height0 / scale + 1e-6)))
    mpp = slide_mpp * scale if slide_mpp else None
    return SlideGeometry(width0, height0, slide_mpp, scale, width, height, mpp, notes)


def polygon_tolerance(tolerance_um: float | None, slide_mpp: float | None, traced_pixel: float) -> float:
    """Simplification tolerance in level-0 px: ``tolerance_um`` converted with the slide's MPP (taken as
    level-0 px without one); by default 2 µm, and never less than one pixel of the map the polygons are
    traced on (``traced_pixel`` level-0 px), whose staircase edges would otherwise stay in the file."""
    if tolerance_um is not None:
        return tolerance_um / slide_mpp if slide_mpp else tolerance_um
    return max(2.0 / slide_mpp if slide_mpp else 0.0, traced_pixel)


def trace_downsample(width: int, height: int, max_size: int, tolerance: float, scale: float) -> int:
    """Power-of-2 downsampling of the working class map that the GeoJSON polygons are traced on.

    At most ``max_size`` px a side, and coarser while a traced pixel stays within half the
    simplification ``tolerance`` (level-0 px; ``scale``: level-0 px per working px): finer pixel steps
    would be simplified away, so the outlines stay within 1.5 × the tolerance of the class map's pixel
    edges, traced on a map 4× or 16× smaller. A tolerance of 0 keeps the pixel edges (factor 1 below
    ``max_size``).
    """
    factor = 1
    while max(width, height) / factor > max_size:
        factor *= 2
    while tolerance > 0 and 2 * factor * scale <= tolerance / 2:
        factor *= 2
    return factor


def model_fingerprint(predictor: torch.nn.Module) -> str:
    """A short hash of the predictor's weights and metadata (resume checkpoints are tied to it)."""
    h = hashlib.sha1()
    meta = getattr(predictor, "meta", None)
    if meta is not None:
        h.update(json.dumps(asdict(meta), sort_keys=True, default=str).encode())
    for name, tensor in predictor.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _file_id(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _prepare_work(work: Path, state: dict) -> None:
    """Keep ``work`` when it was made with the same settings (resume), else start it afresh."""
    state_path = work / "state.json"
    if state_path.exists():
        try:
            if json.loads(state_path.read_text()) == json.loads(json.dumps(state)):
                return
        except (OSError, ValueError):
            pass
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json(state_path, state)


def _chunk_marker(work: Path, chunk: tuple[int, int]) -> Path:
    return work / f"chunk_{chunk[0]}_{chunk[1]}.json"


class FinishedRows:
    """How many working rows of the class map are on disk (every chunk above them finished), for a writer
    that follows the prediction: :meth:`wait` blocks until enough are, and raises if :meth:`stop` comes
    first."""

    def __init__(self, grid: TileGrid, finished: Iterable[tuple[int, int]] = ()):
        rows, cols = grid.chunks_shape
        self._grid = grid
        self._left = [cols] * rows  # unfinished chunks per chunk row
        for c in finished:
            self._left[c[0]] -= 1
        self._stopped = False
        self._cond = threading.Condition()

    @property
    def rows(self) -> int:
        first_open = next((i for i, n in enumerate(self._left) if n), len(self._left))
        return min(first_open * self._grid.chunk, self._grid.height)

    def finish(self, chunk: tuple[int, int]) -> None:
        with self._cond:
            self._left[chunk[0]] -= 1
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def wait(self, rows: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._stopped or self.rows >= min(rows, self._grid.height))
            if self._stopped and self.rows < min(rows, self._grid.height):
                raise RuntimeError("the prediction stopped before the class map was finished")


def plan_tiles(reader: SlideReader, grid: TileGrid, scale: float, options: PredictOptions
               ) -> tuple[np.ndarray, TissueIndex, np.ndarray, np.ndarray]:
    """Thumbnail, tissue index, all tile starts and those touching tissue (chunk order)."""
    thumb, thumb_ds = reader.thumbnail(options.mask_size)
    mask = detect_tissue(thumb) if options.tissue_detection else np.ones(thumb.shape[:2], dtype=bool)
    tissue = TissueIndex(mask, thumb_ds)
    all_tiles = grid.tiles()
    t = grid.tile * scale
    keep = tissue.counts(all_tiles[:, 1] * scale, all_tiles[:, 0] * scale, t, t) > 0
    return thumb, tissue, all_tiles, all_tiles[keep]


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps freed multi-MB blocks otherwise, and the RSS
    of a long slide creeps up with heap fragmentation)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def argmax_classes(probs: torch.Tensor) -> torch.Tensor:
    """uint8 argmax over dim 0 (first maximum wins), as K elementwise passes: on CPU 10x faster than
    ``argmax(0)``, which reduces over the strided class axis."""
    best = probs[0].clone()
    index = torch.zeros(probs.shape[1:], dtype=torch.uint8, device=probs.device)
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        index.masked_fill_(better, k)
        torch.maximum(best, probs[k], out=best)
    return index


def fold_batch_norms(module: torch.nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` inside a plain
    ``nn.Sequential`` (torchvision's conv-norm-activation blocks, the DeepLabV3+ decoder's
    ``conv_bn_relu``) into the convolution, in place; the norm becomes ``nn.Identity``. Returns how
    many were folded. Only plain Sequentials and exact ``Conv2d`` are touched (a subclass with its
    own ``forward`` may not run its children in order, or pad differently)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for seq in module.modules():
        if not isinstance(seq, torch.nn.Sequential) or type(seq).forward is not torch.nn.Sequential.forward:
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = seq._modules[a], seq._modules[b]
            if (type(conv) is torch.nn.Conv2d and type(norm) is torch.nn.BatchNorm2d and not norm.training
                    and not conv.training and norm.track_running_stats and norm.running_mean is not None):
                seq._modules[a] = fuse_conv_bn_eval(conv, norm)
                seq._modules[b] = torch.nn.Identity()
                folded += 1
    return folded


def inference_model(predictor: torch.nn.Module, device: torch.device, amp: bool) -> torch.nn.Module:
    """The module the tiles run through. Where prediction runs in bf16 (``amp`` on CUDA, or on a CPU with
    AMX: :func:`tissueseg.models.device.inference_dtype`), a copy of ``predictor`` with batch norms folded
    into their convolutions and weights in channels_last (the layout oneDNN's and cuDNN's bf16 kernels
    are fastest in); ``predictor`` itself is left as it is. In fp32 (``amp`` off, or a CPU without AMX)
    ``predictor`` unchanged."""
    if inference_dtype(device, amp) != torch.bfloat16:
        return predictor
    try:
        import copy

        fast = copy.deepcopy(predictor)
    except Exception:  # noqa: BLE001 - an uncopyable module still runs, only without the folding
        return predictor
    fold_batch_norms(fast)
    return fast.to(memory_format=torch.channels_last)


@torch.inference_mode()
def _infer(predictor: torch.nn.Module, images: torch.Tensor, device: torch.device, flip: bool, amp: bool,
           window: torch.Tensor) -> torch.Tensor:
    """Window-weighted probabilities (B, K, T, T) float32 on the model's device."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    # on CPU the input stays contiguous: the first convolution's channels_last weights (inference_model) make
    # its output channels_last anyway, and elementwise work a model does on its input is faster contiguous
    with inference_autocast(device, amp):
        p = predictor(x).float()
        if flip:
            p = p.add_(predictor(x.flip(-1)).float().flip(-1)).mul_(0.5)
    del x
    return p.mul_(window)


def predict_slide(predictor: torch.nn.Module, path: str | os.PathLike, out_dir: str | os.PathLike,
                  options: PredictOptions | None = None, *, model_id: str | None = None,
                  progress: ProgressFn | None = None,
                  on_chunk: Callable[[tuple[int, int]], None] | None = None) -> dict:
    """Predict one slide into ``out_dir``; returns the summary (also written to ``summary.json``).

    ``predictor`` is a :class:`tissueseg.models.bundle.TissuePredictor` (or any module with the same
    contract and a ``meta``) already on its device. Rerunning after an interruption resumes from
    the chunks in ``out_dir/.partial``. ``progress(done, total)`` is called with tile counts;
    ``on_chunk(chunk)`` after every chunk is checkpointed (on the chunk-finishing
    thread, in chunk order; an exception it raises stops the prediction at the next chunk).
    """
    options = options or PredictOptions()
    path, out_dir = Path(path), Path(out_dir)
    t0 = time.perf_counter()
    meta = predictor.meta
    num_classes = len(meta.classes)
    if num_classes >= NO_TISSUE:
        raise ValueError(f"{num_classes} classes do not fit the uint8 class map (at most {NO_TISSUE - 1})")
    device = next(iter(predictor.parameters()), torch.empty(0)).device
    with open_slide(path, options.reader) as reader:
        geom = resolve_geometry(reader, meta.mpp, options)
        tile = int(options.tile_size or meta.window)
        overlap = int(options.overlap if options.overlap is not None else tile // 4)
        grid = TileGrid.create(geom.width, geom.height, tile, overlap, options.chunk_size)
        mask_glass = options.mask_glass if options.mask_glass is not None else meta.background_index is None
        work = out_dir / WORK_DIR
        precision = "bf16" if inference_dtype(device, options.amp) == torch.bfloat16 else "fp32"
        state = {"version": STATE_VERSION, "slide": _file_id(path),
                 "model": model_id or model_fingerprint(predictor), "grid": asdict(grid), "scale": geom.scale,
                 "flip": options.flip, "precision": precision, "tissue_detection": options.tissue_detection,
                 "mask_glass": mask_glass,
                 "mask_size": options.mask_size, "reader": options.reader}
        _prepare_work(work, state)

        # -- tissue and tiles -------------------------------------------------------------------------
        thumb, tissue, all_tiles, tiles = plan_tiles(reader, grid, geom.scale, options)
        s = geom.scale
        rows, cols = grid.chunks_shape
        chunk_ids = (tiles[:, 0] // grid.chunk) * cols + tiles[:, 1] // grid.chunk
        done = {c for c in grid.chunks() if _chunk_marker(work, c).exists()}
        pending = [c for c in grid.chunks() if c not in done]
        todo_mask = ~np.isin(chunk_ids, np.array([i * cols + j for i, j in done], dtype=np.int64))
        todo = tiles[todo_mask]
        todo_ids = chunk_ids[todo_mask]

        def own_tiles(c: tuple[int, int]) -> np.ndarray:
            cid = c[0] * cols + c[1]
            lo, hi = np.searchsorted(todo_ids, cid, "left"), np.searchsorted(todo_ids, cid, "right")
            return todo[lo:hi]

        # -- predict and blend chunk by chunk ---------------------------------------------------------
        t_predict = time.perf_counter()
        model = inference_model(predictor, device, options.amp)
        window = blend_window(tile, overlap)
        window_t = torch.from_numpy(window).to(device)
        acc = BlendAccumulator(grid, num_classes, work, window, device, buffers=2)
        store = ChunkStore(work, grid.width, grid.height, grid.chunk)
        # a finished chunk's class map is taken, saved and checkpointed on a thread of its own while the next
        # chunk's tiles run through the network (the two canvas buffers take turns); one chunk at a time, in order
        finisher = ThreadPoolExecutor(1, thread_name_prefix="chunk-finish")
        finishing: deque[Future] = deque()
        failed = threading.Event()

        def save_chunk(c: tuple[int, int], sums: torch.Tensor, weight: torch.Tensor) -> None:
            if failed.is_set():  # an earlier chunk failed: no later checkpoint may exist without it
                return
            try:
                cmap = argmax_classes(sums).masked_fill_(weight <= 0, NO_TISSUE).cpu().numpy()
                del sums, weight
                if mask_glass:
                    y0, y1, x0, x1 = grid.chunk_bounds(c)
                    cmap[~tissue.pixel_mask(x0 * s, y0 * s, x1 - x0, y1 - y0, s)] = NO_TISSUE
                counts = np.bincount(cmap.ravel(), minlength=256)
                _save_npy(store.path(*c), cmap)
                write_json(_chunk_marker(work, c), {"counts": counts.tolist()})
                acc.release(c)
                release_memory()
                finished_rows.finish(c)
                if on_chunk is not None:
                    on_chunk(c)
            except BaseException:
                failed.set()
                raise

        def finalize(c: tuple[int, int]) -> None:
            sums, weight = acc.finish(normalize=False)  # spills written now; argmax of the sums = of their mean
            finishing.append(finisher.submit(save_chunk, c, sums, weight))
            while len(finishing) > 1:  # the chunk before has its buffer back before the next begin() takes it
                finishing.popleft().result()

        palette = [tuple(int(v) for v in p) for p in meta.palette]
        names = list(meta.classes)
        finished_rows = FinishedRows(grid, done)

        def classmap_tile(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
            step = 2 ** level
            finished_rows.wait((y + h) * step)
            return store.read(y * step, x * step, h, w, step)

        tiff_writer = ThreadPoolExecutor(1, thread_name_prefix="classmap-tiff")
        classmap_written = tiff_writer.submit(
            write_pyramidal_tiff, out_dir / "classmap.tif", classmap_tile, grid.width, grid.height, mpp=geom.mpp,
            tile=options.tiff_tile, colormap=palette_colormap(palette), fill=NO_TISSUE)
        tiff_writer.shutdown(wait=False)
        chunk_iter = iter(pending)
        current: tuple[int, int] | None = None
        n_done = 0
        try:
            if progress is not None:
                progress(0, len(todo))
            workers = options.workers if len(todo) > options.batch_size else 0
            loader = DataLoader(SlideTileDataset(path, todo, tile, s, options.reader, reader=reader),
                                batch_size=options.batch_size, num_workers=workers, collate_fn=collate_tiles,
                                pin_memory=device.type == "cuda",
                                prefetch_factor=4 if workers else None, persistent_workers=False)
            for images, index in loader:
                weighted = _infer(model, images, device, options.flip, options.amp, window_t)
                for b, i in enumerate(index.tolist()):
                    y, x = int(todo[i, 0]), int(todo[i, 1])
                    c = grid.chunk_of(y, x)
                    while current != c:
                        if current is not None:
                            finalize(current)
                        current = next(chunk_iter)
                        acc.begin(current, own_tiles(current))
                    acc.add(y, x, weighted[b])
                n_done += len(index)
                del weighted, images
                if progress is not None:
                    progress(n_done, len(todo))
            if current is not None:
                finalize(current)
            for c in chunk_iter:
                acc.begin(c, own_tiles(c))
                finalize(c)
            while finishing:
                finishing.popleft().result()
        finally:
            failed.set()  # after an error: chunks still queued are not checkpointed
            finisher.shutdown(wait=True, cancel_futures=True)
            finished_rows.stop()  # a writer still waiting then fails instead of hanging
        t_write = time.perf_counter()

        # -- outputs (classmap.tif is being written) --------------------------------------------------
        counts = np.zeros(256, dtype=np.int64)
        for c in grid.chunks():
            counts += np.asarray(json.loads(_chunk_marker(work, c).read_text())["counts"], dtype=np.int64)
        factor = trace_downsample(grid.width, grid.height, options.polygon_max_size,
                                  polygon_tolerance(options.polygon_tolerance, geom.slide_mpp, 0.0), s)
        small = downsampled_map(store, factor)
        tolerance = polygon_tolerance(options.polygon_tolerance, geom.slide_mpp, factor * s)
        geojson = write_geojson(out_dir / "classes.geojson",
                                class_geometries(small, range(num_classes), scale=factor * s,
                                                 min_pixels=options.min_polygon_pixels, tolerance=tolerance),
                                names, palette)
        table = area_table(counts, names, geom.mpp, meta.background_index, palette)
        write_json(out_dir / "areas.json", {"slide": str(path), **table})
        write_area_csv(out_dir / "areas.csv", table)
        tw = max(1, round(thumb.shape[1] * min(1.0, options.thumbnail_size / max(thumb.shape[:2]))))
        th = max(1, round(thumb.shape[0] * min(1.0, options.thumbnail_size / max(thumb.shape[:2]))))
        small_thumb = np.asarray(Image.fromarray(thumb).resize((tw, th), Image.BILINEAR))
        write_image(out_dir / "thumbnail.png", small_thumb)
        write_image(out_dir / "overlay.png", overlay_image(small_thumb, small, names, palette))
        classmap_written.result()
        t_end = time.perf_counter()
        summary = {
            "slide": str(path), "reader": reader.kind, "dimensions": [geom.width0, geom.height0],
            "levels": reader.level_count, "slide_mpp": geom.slide_mpp, "working_mpp": geom.mpp,
            "scale": round(geom.scale, 6), "working_size": [grid.width, grid.height], "tile": tile,
            "overlap": overlap, "tiles_total": int(len(all_tiles)), "tiles_tissue": int(len(tiles)),
            "tiles_this_run": int(len(todo)), "chunks": rows * cols, "chunks_resumed": len(done),
            "geojson": {**geojson, "tolerance_level0_px": round(tolerance, 3), "traced_at_downsample": factor * s},
            "flip": options.flip, "precision": precision, "mask_glass": mask_glass, "device": str(device),
            "method": meta.method,
            "classes": names, "model": state["model"], "notes": geom.notes,
            "seconds": {"setup": round(t_predict - t0, 3), "predict": round(t_write - t_predict, 3),
                        "outputs": round(t_end - t_write, 3), "total": round(t_end - t0, 3)},
            "files": {"classmap": "classmap.tif", "geojson": "classes.geojson", "areas_csv": "areas.csv",
                      "areas_json": "areas.json", "thumbnail": "thumbnail.png", "overlay": "overlay.png",
                      "report": "report.html"},
        }
        write_report(out_dir / "report.html", {k: v for k, v in summary.items() if k not in ("files", "classes")},
                     table, {k: v for k, v in summary["files"].items() if k != "report"})
        write_json(out_dir / SUMMARY, {**summary, "finished": True})
    shutil.rmtree(work, ignore_errors=True)
    return summary


# --- batches and torchrun sharding ---------------------------------------------------------------------

@dataclass
class BatchResult:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # slide path → output folder


def expand_inputs(paths: Sequence[str | os.PathLike], suffixes: Sequence[str] = SLIDE_SUFFIXES) -> list[Path]:
    """Files as given; folders → their files with one of ``suffixes`` (default: slides and images;
    sorted, not recursive, hidden files skipped)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                              and f.suffix.lower() in suffixes))
        else:
            out.append(p)
    return out


def output_names(paths: Sequence[Path]) -> list[str]:
    """One output folder name per input: the file stem, plus a short path hash where stems repeat."""
    stems = [p.stem for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f"{s}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}" if s in dup else s
            for s, p in zip(stems, paths)]


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank`` of ``world_size`` takes items ``rank::world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(items[rank::world_size])


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables torchrun sets; (0, 1, 0) otherwise."""
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def is_finished(folder: str | os.PathLike) -> bool:
    try:
        return bool(json.loads((Path(folder) / SUMMARY).read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def failure_message(path: Path, exc: BaseException) -> str:
    if isinstance(exc, (SlideError, FileNotFoundError)):
        return str(exc)
    return f"{path}: {type(exc).__name__}: {exc}"


def predict_slides(model: str | os.PathLike | torch.nn.Module, inputs: Sequence[str | os.PathLike],
                   out: str | os.PathLike, options: PredictOptions | None = None, *, rank: int | None = None,
                   world_size: int | None = None, log: Callable[[str], None] | None = None,
                   progress_factory: Callable[[Path], ProgressFn | None] | None = None,
                   on_chunk: Callable[[tuple[int, int]], None] | None = None) -> BatchResult:
    """Predict this rank's share of ``inputs`` into ``out/<slide name>/``; failures are collected, not raised.

    ``model`` is a model.pt path or a loaded predictor. ``rank``/``world_size`` default to torchrun's
    environment. Finished slides (``summary.json`` present) are skipped unless ``options.overwrite``.
    """
    from tissueseg.models.bundle import load_predictor

    options = options or PredictOptions()
    log = log or (lambda msg: None)
    env_rank, env_world, local_rank = distributed_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    slides = expand_inputs(inputs)
    names = output_names(slides)
    out = Path(out)
    result = BatchResult()
    for p in map(Path, inputs):
        if p.is_dir() and not any(s.parent == p for s in slides) and rank == 0:
            result.failed.append((p, f"{p}: no slides or images in this folder"))
    mine = shard(list(zip(slides, names)), rank, world_size)
    if not mine:
        return result
    if isinstance(model, torch.nn.Module):
        predictor, model_id = model, None
    else:
        device = resolve_device(options.device)  # "auto": this rank's GPU (LOCAL_RANK) when there is one
        if device.type == "cuda" and device.index is None and env_world > 1:
            device = torch.device("cuda", local_rank)
        predictor = load_predictor(model, device)
        st = Path(model).stat()
        model_id = hashlib.sha1(f"{Path(model).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    predictor.eval()
    for slide, name in mine:
        folder = out / name
        result.outputs[str(slide)] = str(folder)
        if is_finished(folder) and not options.overwrite:
            result.skipped.append(slide)
            log(f"skip {slide} (finished: {folder})")
            continue
        if options.overwrite and folder.exists():
            (folder / SUMMARY).unlink(missing_ok=True)
            shutil.rmtree(folder / WORK_DIR, ignore_errors=True)
        try:
            summary = predict_slide(predictor, slide, folder, options, model_id=model_id,
                                    progress=progress_factory(slide) if progress_factory else None,
                                    on_chunk=on_chunk)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
            msg = failure_message(slide, exc)
            result.failed.append((slide, msg))
            log(f"FAILED {msg}")
            continue
        result.done.append(slide)
        for note in summary["notes"]:
            log(f"note: {slide.name}: {note}")
        log(f"done {slide} → {folder} ({summary['tiles_this_run']} tiles, {summary['seconds']['total']:.1f} s)")
    return result
