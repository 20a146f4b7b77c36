"""Helpers for the slide tests: small synthetic pyramidal slides and a pixel-wise 'model' (all CPU, seconds)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tissueseg.models.bundle import ModelMeta
from tissueseg.slides.outputs import write_pyramidal_tiff

CLASSES = ["tumour", "stroma", "lymphocytes", "necrosis", "background"]
PALETTE = [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0), (255, 255, 255)]


def tissue_pattern(yy: np.ndarray, xx: np.ndarray, width: int, height: int) -> np.ndarray:
    """H&E-like RGB at level-0 coordinates: two stained ellipses on glass (right third is glass)."""
    inside = np.zeros(yy.shape, dtype=bool)
    for cy, cx, ry, rx in ((0.35, 0.25, 0.25, 0.2), (0.7, 0.45, 0.22, 0.18)):
        inside |= ((yy / height - cy) / ry) ** 2 + ((xx / width - cx) / rx) ** 2 < 1
    tex = np.sin(xx / 7.0) * np.cos(yy / 9.0)
    rgb = np.empty(yy.shape + (3,), dtype=np.float32)
    rgb[..., 0] = np.where(inside, 190 + 30 * tex, 238)
    rgb[..., 1] = np.where(inside, 90 + 40 * tex, 236)
    rgb[..., 2] = np.where(inside, 170 + 20 * tex, 240)
    return rgb.clip(0, 255).astype(np.uint8)


def write_synthetic_slide(path: Path, width: int, height: int, mpp: float | None = 0.5, tile: int = 256,
                          pattern=tissue_pattern) -> Path:
    """A tiled pyramidal RGB TIFF (levels as main IFDs, resolution tags) that OpenSlide opens."""

    def tile_fn(level, y, x, h, w):
        step = 2 ** level
        yy, xx = np.meshgrid((y + np.arange(h)) * step, (x + np.arange(w)) * step, indexing="ij")
        return pattern(yy, xx, width, height)

    return write_pyramidal_tiff(path, tile_fn, width, height, samples=3, mpp=mpp, tile=tile, fill=255)


class PixelPredictor(nn.Module):
    """A 'model' whose probabilities are a fixed smooth function of each pixel's colour (no context),
    so tiling and blending must reproduce the whole-image result exactly."""

    def __init__(self, num_classes: int = 5, tile_size: int = 64, background_index: int | None = 4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.mix = nn.Conv2d(3, num_classes, 1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.randn(num_classes, 3, 1, 1, generator=g) * 8)
            self.mix.bias.copy_(torch.randn(num_classes, generator=g))
        self.meta = ModelMeta(method="test", classes=CLASSES[:num_classes], palette=PALETTE[:num_classes],
                              label_to_mask=list(range(num_classes)), background_index=background_index,
                              window=tile_size)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mix(images).softmax(1)


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
