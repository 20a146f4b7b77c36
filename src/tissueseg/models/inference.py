"""Dense prediction shared by every method's evaluation and by slide tiling: softmax scores, flip
test-time augmentation and sliding windows with averaged overlaps for images larger than the window."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Logits = Callable[[torch.Tensor], torch.Tensor]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``length``; the last window is flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


@torch.no_grad()
def sliding_window(scores_fn: Logits, images: torch.Tensor, window: int | None = None,
                   stride: int | None = None) -> torch.Tensor:
    """``scores_fn`` (N, K, h, w) on windows of ``window`` px, ``stride`` apart (default ``window·2/3``),
    averaged where windows overlap; the whole image at once when it fits a window (or ``window`` is None)."""
    h, w = images.shape[-2:]
    if window is None or (h <= window and w <= window):
        return scores_fn(images)
    stride = stride or max(1, window * 2 // 3)
    total = None
    count = torch.zeros(1, 1, h, w, device=images.device)
    for top in window_starts(h, window, stride):
        for left in window_starts(w, window, stride):
            tile = images[..., top:top + window, left:left + window]
            p = scores_fn(tile)
            if total is None:
                total = torch.zeros(images.shape[0], p.shape[1], h, w, device=images.device)
            total[..., top:top + tile.shape[-2], left:left + tile.shape[-1]] += p
            count[..., top:top + tile.shape[-2], left:left + tile.shape[-1]] += 1
    return total / count


@torch.no_grad()
def predict_probabilities(logits_fn: Logits, images: torch.Tensor, window: int | None = None,
                          stride: int | None = None, flip: bool = False) -> torch.Tensor:
    """Softmax class scores (N, K, H, W) for float images (N, 3, H, W), by :func:`sliding_window` when the
    image is larger than ``window``; ``flip`` averages the horizontally flipped prediction (MLPS /
    UniSemAlign optional TTA)."""
    def scores(x: torch.Tensor) -> torch.Tensor:
        p = logits_fn(x).float().softmax(1)
        if flip:
            p = (p + logits_fn(x.flip(-1)).float().softmax(1).flip(-1)) / 2
        return p
    return sliding_window(scores, images, window, stride)


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, K, h, w) scores to ``size``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
