"""Tile grid, seamless blending of overlapping tile predictions, and the Dataset DataLoader workers read tiles with.

Memory stays flat in the slide size: the working image is cut into square *chunks* (about 1024 px,
a multiple of the tile stride). Tiles are assigned to the chunk holding their top-left corner and
processed chunk by chunk in raster order; each chunk accumulates weighted probabilities on a
small canvas (the chunk plus the overlap its tiles reach beyond it). When the chunk's own tiles
are done it is complete (every other tile touching it belongs to an earlier chunk) and the parts of
the canvas that spill into the right, lower and lower-right neighbours are saved to disk and added
to those neighbours when their turn comes. Only one canvas is ever in memory.

Blending weights taper linearly from ~0 at a tile's edge to 1 over the overlap, and the blended
value is the weighted mean, so a constant prediction blends to exactly that constant and tile
borders leave no seams.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tissueseg.data.io import atomic_path
from tissueseg.models.inference import window_starts

Chunk = tuple[int, int]


def blend_window(tile: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """(tile, tile) float32 weights: linear ramps over ``overlap`` px at every edge, 1 inside, never 0."""
    if overlap <= 0:
        return np.ones((tile, tile), dtype=np.float32)
    i = np.arange(tile, dtype=np.float64)
    ramp = np.minimum(np.minimum(i + 0.5, tile - i - 0.5) / overlap, 1.0)
    w1 = np.clip(ramp, floor, 1.0)
    return np.outer(w1, w1).astype(np.float32)


def chunk_size_for(tile: int, overlap: int, target: int = 1024) -> int:
    """A chunk side ≥ ``tile`` and ≈ ``target`` that is a multiple of the stride (so spills are only
    ``overlap`` px wide)."""
    stride = tile - overlap
    return stride * math.ceil(max(target, tile) / stride)


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` px with ``overlap`` px overlap covering a ``width`` × ``height`` image.

    Tile starts are multiples of the stride, the last one flush with the image end
    (:func:`tissueseg.models.inference.window_starts`); an image smaller than a tile gets one tile
    (the reader pads it with white).
    """

    width: int
    height: int
    tile: int
    overlap: int
    chunk: int

    def __post_init__(self):
        if not 0 <= self.overlap < self.tile:
            raise ValueError(f"overlap {self.overlap} must be ≥ 0 and smaller than the tile size {self.tile}")
        if self.chunk < self.tile:
            raise ValueError(f"chunk size {self.chunk} must be at least the tile size {self.tile}")

    @classmethod
    def create(cls, width: int, height: int, tile: int, overlap: int, chunk_target: int = 1024) -> "TileGrid":
        return cls(width, height, tile, overlap, chunk_size_for(tile, overlap, chunk_target))

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def xs(self) -> list[int]:
        return window_starts(self.width, self.tile, self.stride)

    @property
    def ys(self) -> list[int]:
        return window_starts(self.height, self.tile, self.stride)

    @property
    def chunks_shape(self) -> tuple[int, int]:
        """(rows, columns) of chunks."""
        return math.ceil(self.height / self.chunk), math.ceil(self.width / self.chunk)

    def chunks(self) -> Iterator[Chunk]:
        """All chunks in raster order."""
        rows, cols = self.chunks_shape
        for i in range(rows):
            for j in range(cols):
                yield i, j

    def chunk_bounds(self, chunk: Chunk) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of a chunk in working pixels."""
        i, j = chunk
        return (i * self.chunk, min((i + 1) * self.chunk, self.height),
                j * self.chunk, min((j + 1) * self.chunk, self.width))

    def chunk_of(self, y: int, x: int) -> Chunk:
        return y // self.chunk, x // self.chunk

    def tiles(self) -> np.ndarray:
        """(N, 2) int64 tile starts (y, x) in chunk order (chunks raster, tiles raster inside)."""
        ys, xs = np.asarray(self.ys, dtype=np.int64), np.asarray(self.xs, dtype=np.int64)
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        starts = np.stack([yy.ravel(), xx.ravel()], axis=1)
        return order_by_chunk(starts, self)


def order_by_chunk(starts: np.ndarray, grid: TileGrid) -> np.ndarray:
    """Sort tile starts (y, x) by (chunk row, chunk column, y, x)."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1, 2)
    if len(starts) == 0:
        return starts
    cy, cx = starts[:, 0] // grid.chunk, starts[:, 1] // grid.chunk
    order = np.lexsort((starts[:, 1], starts[:, 0], cx, cy))
    return starts[order]


class BlendAccumulator:
    """Weighted blending of tile probabilities, one chunk at a time, with spills to ``work_dir``.

    Use: ``begin(chunk, tiles)``, ``add(y, x, weighted)`` for each of the chunk's tiles (probabilities
    already multiplied by :attr:`window`), ``finish()`` → blended (K, h, w) probabilities and the
    weight sum, then ``release(chunk)`` once the caller has saved its result. Chunks must be handled
    in raster order; a rerun after a crash may repeat a chunk (its spills are rewritten identically).
    The canvas lives on ``device`` (the model's), so on a GPU only class maps and the thin spills
    cross to the host. ``buffers`` canvas buffers (the largest chunk plus a tile's reach) are allocated
    once and zeroed per chunk, in turn: allocating ~40 MB afresh per chunk cost more in page faults than
    the blending itself. With two, the views :meth:`finish` returns stay valid while the next chunk
    blends (until the :meth:`begin` after it), so a caller can finish one chunk on another thread.
    """

    def __init__(self, grid: TileGrid, num_classes: int, work_dir: str | os.PathLike, window: np.ndarray,
                 device: str | torch.device = "cpu", buffers: int = 1):
        self.grid = grid
        self.num_classes = num_classes
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self.window = torch.as_tensor(np.asarray(window, dtype=np.float32), device=self.device)
        self.chunk: Chunk | None = None
        self._canvas: torch.Tensor | None = None
        self._buffers: list[torch.Tensor | None] = [None] * max(1, buffers)
        self._turn = 0

    def _spill_path(self, target: Chunk, source: Chunk) -> Path:
        return self.work_dir / f"spill_{target[0]}_{target[1]}__{source[0]}_{source[1]}.npy"

    def _incoming(self, chunk: Chunk) -> list[Path]:
        i, j = chunk
        paths = [self._spill_path(chunk, src) for src in ((i - 1, j - 1), (i - 1, j), (i, j - 1))]
        return [p for p in paths if p.exists()]

    def begin(self, chunk: Chunk, tiles: np.ndarray | None = None) -> None:
        """Start ``chunk`` whose own tiles (starts (y, x)) are ``tiles``; incoming spills are added."""
        y0, y1, x0, x1 = self.grid.chunk_bounds(chunk)
        t = self.grid.tile
        ey, ex = y1, x1
        if tiles is not None and len(tiles):
            ey = max(ey, min(int(tiles[:, 0].max()) + t, self.grid.height))
            ex = max(ex, min(int(tiles[:, 1].max()) + t, self.grid.width))
        self.chunk = chunk
        self._turn = (self._turn + 1) % len(self._buffers)
        if self._buffers[self._turn] is None:
            side = self.grid.chunk + t  # a chunk's canvas reaches at most one tile beyond it
            self._buffers[self._turn] = torch.empty(
                (self.num_classes + 1, min(side, self.grid.height), min(side, self.grid.width)),
                dtype=torch.float32, device=self.device)
        self._canvas = self._buffers[self._turn][:, :ey - y0, :ex - x0]
        self._canvas.zero_()
        for path in self._incoming(chunk):
            spill = torch.from_numpy(np.load(path)).to(self.device)
            self._canvas[:, :spill.shape[1], :spill.shape[2]] += spill

    def add(self, y: int, x: int, weighted) -> None:
        """Add one tile's window-weighted probabilities (K, T, T) at working position (y, x)."""
        y0, _, x0, _ = self.grid.chunk_bounds(self.chunk)
        canvas = self._canvas
        ry, rx = y - y0, x - x0
        h, w = min(self.grid.tile, canvas.shape[1] - ry), min(self.grid.tile, canvas.shape[2] - rx)
        canvas[:-1, ry:ry + h, rx:rx + w] += torch.as_tensor(weighted, device=self.device)[:, :h, :w]
        canvas[-1, ry:ry + h, rx:rx + w] += self.window[:h, :w]

    def finish(self, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the spills; return the chunk's blended probabilities (K, h, w) and weights (h, w).

        ``normalize=False`` returns the weighted sums instead of their mean (the same argmax wherever the
        weight is positive, without a division pass); they and the weights are then views of the canvas,
        valid until its buffer's turn comes again (the next :meth:`begin`, or the one after it with two
        buffers)."""
        y0, y1, x0, x1 = self.grid.chunk_bounds(self.chunk)
        ch, cw = y1 - y0, x1 - x0
        canvas = self._canvas
        i, j = self.chunk
        for target, part in (((i, j + 1), canvas[:, :ch, cw:]), ((i + 1, j), canvas[:, ch:, :cw]),
                             ((i + 1, j + 1), canvas[:, ch:, cw:])):
            if part.shape[1] and part.shape[2] and bool(part[-1].any()):
                _save_npy(self._spill_path(target, self.chunk), part.cpu().numpy())
        weight = canvas[-1, :ch, :cw]
        self._canvas = None
        if not normalize:
            return canvas[:-1, :ch, :cw], weight
        return canvas[:-1, :ch, :cw] / weight.clamp_min(1e-12), weight.clone()

    def release(self, chunk: Chunk) -> None:
        """Delete the spills ``chunk`` consumed (call after its result is safely on disk)."""
        for path in self._incoming(chunk):
            path.unlink(missing_ok=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))


class SlideTileDataset(Dataset):
    """Tiles of a slide at the working resolution, read in DataLoader workers.

    Item ``i`` is ``(uint8 tensor (3, T, T), i)`` for tile start ``tiles[i] = (y, x)`` in working
    pixels; working pixel (y, x) is level-0 pixel (y·scale, x·scale). Each worker process opens its
    own reader (OpenSlide and file handles are not fork-safe); in-memory image readers are shared.
    """

    def __init__(self, path: str | os.PathLike, tiles: np.ndarray, tile: int, scale: float,
                 backend: str = "auto", reader=None):
        self.path = Path(path)
        self.tiles = np.asarray(tiles, dtype=np.int64).reshape(-1, 2)
        self.tile = int(tile)
        self.scale = float(scale)
        self.backend = backend
        self._reader = reader
        self._pid = os.getpid() if reader is not None else None

    def __len__(self) -> int:
        return len(self.tiles)

    def reader(self):
        from tissueseg.slides.readers import ImageReader, open_slide

        if self._reader is None or (self._pid != os.getpid() and not isinstance(self._reader, ImageReader)):
            self._reader = open_slide(self.path, self.backend)
            self._pid = os.getpid()
        return self._reader

    def __getstate__(self):
        state = dict(self.__dict__)
        from tissueseg.slides.readers import ImageReader

        if not isinstance(state.get("_reader"), ImageReader):
            state["_reader"] = None
        return state

    def read(self, i: int) -> np.ndarray:
        y, x = (int(v) for v in self.tiles[i])
        s, t = self.scale, self.tile
        return self.reader().read_scaled((x * s, y * s, t * s, t * s), (t, t))

    def __getitem__(self, i: int):
        return torch.from_numpy(np.ascontiguousarray(self.read(i).transpose(2, 0, 1))), i


def collate_tiles(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack tiles with NumPy (single-threaded: torch's parallel copy kernels are slower for small uint8 tiles)."""
    images = np.stack([t.numpy() for t, _ in items])
    return torch.from_numpy(images), torch.tensor([i for _, i in items], dtype=torch.int64)
