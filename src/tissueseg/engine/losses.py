"""Losses more than one method trains with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None,
                         n_valid: torch.Tensor | int | None = None, ignore_index: int = -100) -> torch.Tensor:
    """Σ CE over the kept pixels / ``n_valid``; 0 (not NaN) when nothing counts, e.g. all-white patches.

    ``keep`` defaults to the pixels whose target is not ``ignore_index`` and ``n_valid`` to their
    number, which is the mean CE over labelled pixels (MLPS stage 2). UniSemAlign keeps the
    confident pseudo-labelled pixels and divides by all valid ones (the official unlabelled CE).
    """
    ce = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")
    if keep is None:
        keep = target != ignore_index
    if n_valid is None:
        n_valid = keep.sum()
    return (ce * keep).sum() / clamped_count(n_valid)


def clamped_count(n: torch.Tensor | int) -> torch.Tensor | float:
    """max(n, 1) as a divisor; a tensor stays on its device (no host sync)."""
    return n.clamp_min(1) if isinstance(n, torch.Tensor) else max(float(n), 1.0)
