"""Tissue detection on a low-resolution thumbnail so that tiles of bare glass are never read or predicted.

H&E tissue is coloured, glass is grey/white: Otsu's threshold on the HSV saturation separates them.
The threshold is clamped to a plausible range so that an image that is all tissue (or all glass)
is not split in two by Otsu; small holes are filled and specks removed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of an (H, W, 3) uint8 image; black pixels (pen, scanner edges) count as 0."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # channel-wise: a reduction over the last axis is slow
    hi = np.maximum(np.maximum(r, g), b).astype(np.float32)
    lo = np.minimum(np.minimum(r, g), b).astype(np.float32)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0).astype(np.float32)


def saturation_threshold(sat: np.ndarray, min_threshold: float = 0.04, max_threshold: float = 0.15) -> float:
    """Otsu's threshold of a saturation image clamped to [min_threshold, max_threshold] (the tissue/glass cut
    :func:`detect_tissue` uses; apply it to full-resolution tiles to measure their tissue)."""
    if sat.size == 0 or float(sat.max() - sat.min()) < 1e-3:
        return min_threshold
    return float(np.clip(threshold_otsu(sat), min_threshold, max_threshold))


def detect_tissue(thumbnail: np.ndarray, min_threshold: float = 0.04, max_threshold: float = 0.15,
                  hole_size: int = 64, min_object_size: int = 16, dilate: int = 1) -> np.ndarray:
    """Boolean tissue mask of a thumbnail (H, W, 3) uint8.

    Parameters
    ----------
    min_threshold, max_threshold : Otsu's saturation threshold is clamped to this range
        (glass is < 0.04, stained tissue > 0.15 on every scanner we know).
    hole_size : holes smaller than this (thumbnail pixels) are filled.
    min_object_size : specks smaller than this are dropped.
    dilate : grow the mask by this many thumbnail pixels so tissue edges are never cut.
    """
    sat = saturation(thumbnail)
    if sat.size == 0:
        return np.zeros(sat.shape, dtype=bool)
    mask = sat > saturation_threshold(sat, min_threshold, max_threshold)
    if min_object_size > 1:
        mask = remove_small_objects(mask, max_size=min_object_size - 1)
    if hole_size > 1:
        mask = remove_small_holes(mask, max_size=hole_size - 1)
    if dilate > 0 and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=dilate)
    return mask


class TissueIndex:
    """Answers "is there tissue in this level-0 box?" in O(1) from a thumbnail mask (summed-area table)."""

    def __init__(self, mask: np.ndarray, downsample: float):
        self.mask = np.asarray(mask, dtype=bool)
        self.downsample = float(downsample)
        self._sat = np.pad(self.mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def counts(self, x, y, w, h) -> np.ndarray:
        """Tissue pixels of the mask overlapping level-0 boxes (x, y, w, h) (arrays or scalars)."""
        mh, mw = self.mask.shape
        d = self.downsample
        x0 = np.clip(np.floor(np.asarray(x, dtype=np.float64) / d), 0, mw).astype(np.int64)
        y0 = np.clip(np.floor(np.asarray(y, dtype=np.float64) / d), 0, mh).astype(np.int64)
        x1 = np.clip(np.ceil((np.asarray(x, dtype=np.float64) + w) / d), 0, mw).astype(np.int64)
        y1 = np.clip(np.ceil((np.asarray(y, dtype=np.float64) + h) / d), 0, mh).astype(np.int64)
        x1, y1 = np.maximum(x1, x0), np.maximum(y1, y0)
        s = self._sat
        return s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]

    def count(self, x: float, y: float, w: float, h: float) -> int:
        """Tissue pixels of the mask that overlap the level-0 box (x, y, w, h)."""
        return int(self.counts(x, y, w, h))

    def any(self, x: float, y: float, w: float, h: float) -> bool:
        return self.count(x, y, w, h) > 0

    def pixel_mask(self, x: float, y: float, w: int, h: int, scale: float) -> np.ndarray:
        """The mask sampled on a (h, w) grid whose pixels are ``scale`` level-0 px wide, starting at (x, y)."""
        mh, mw = self.mask.shape
        cols = np.clip(((x + (np.arange(w) + 0.5) * scale) / self.downsample).astype(np.int64), 0, mw - 1)
        rows = np.clip(((y + (np.arange(h) + 0.5) * scale) / self.downsample).astype(np.int64), 0, mh - 1)
        return self.mask[rows[:, None], cols[None, :]]
