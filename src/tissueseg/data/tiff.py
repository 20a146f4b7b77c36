"""Tiled pyramidal TIFF writing (OpenSlide generic-tiff, QuPath, tifffile): slide class maps and synthetic slides."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tissueseg.data.io import atomic_path

TileFn = Callable[[int, int, int, int, int], np.ndarray]  # (level, y, x, h, w) → (h, w[, 3]) array


def pyramid_levels(width: int, height: int, tile: int = 256) -> list[tuple[int, int]]:
    """(width, height) of each level, halving until the image fits one tile."""
    levels = [(width, height)]
    while max(levels[-1]) > tile:
        w, h = levels[-1]
        levels.append((math.ceil(w / 2), math.ceil(h / 2)))
    return levels


def write_pyramidal_tiff(path: str | os.PathLike, tile_fn: TileFn, width: int, height: int, *,
                         samples: int = 1, mpp: float | None = None, tile: int = 256,
                         colormap: np.ndarray | None = None, compression: str = "zlib", level: int = 6,
                         fill: int = 0) -> Path:
    """Write a tiled pyramidal TIFF that OpenSlide (generic-tiff), QuPath and tifffile open.

    Levels are separate main IFDs (level 0 first, then reduced-resolution IFDs, halving each
    time), tiled ``tile`` × ``tile``, with X/YResolution in pixels per centimetre from ``mpp``
    (OpenSlide reports it as ``openslide.mpp-x``). ``tile_fn(level, y, x, h, w)`` returns the pixels
    of a level's window (``samples`` = 1: 2-D; 3: RGB); it is called once per tile, so the image
    never has to be in memory. ``colormap`` (3, 256) makes a palette image (class maps). Atomic.
    """
    import tifffile

    levels = pyramid_levels(width, height, tile)
    shape_extra = () if samples == 1 else (samples,)
    bigtiff = width * height * samples > 2**31

    def tiles(level: int, lw: int, lh: int) -> Iterator[np.ndarray]:
        for y in range(0, lh, tile):
            for x in range(0, lw, tile):
                h, w = min(tile, lh - y), min(tile, lw - x)
                data = np.asarray(tile_fn(level, y, x, h, w), dtype=np.uint8)
                if (h, w) != (tile, tile):
                    full = np.full((tile, tile, *shape_extra), fill, dtype=np.uint8)
                    full[:h, :w] = data
                    data = full
                yield data

    photometric = "palette" if colormap is not None else ("rgb" if samples == 3 else "minisblack")
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            for index, (lw, lh) in enumerate(levels):
                kwargs = {}
                if mpp:  # pixels per centimetre of this level
                    kwargs.update(resolution=(1e4 / (mpp * width / lw), 1e4 / (mpp * height / lh)),
                                  resolutionunit="CENTIMETER")
                tw.write(tiles(index, lw, lh), shape=(lh, lw, *shape_extra), dtype=np.uint8, tile=(tile, tile),
                         photometric=photometric, colormap=colormap, compression=compression,
                         compressionargs={"level": level_arg(compression, level)}, subfiletype=1 if index else 0,
                         metadata=None, software="tissueseg", **kwargs)
    return Path(path)


def level_arg(compression: str, level: int) -> int | None:
    return level if compression in ("zlib", "deflate", "adobe_deflate") else None
