"""Encoders that take [0, 1] RGB: a registry backbone behind its own input normalisation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class NormalizedEncoder(nn.Module):
    """Normalise [0, 1] RGB with the backbone's mean/std, then return its feature maps (shallow → deep)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.feature_channels = list(backbone.feature_channels)
        self.reductions = list(backbone.reductions)
        norm = backbone.normalization
        self.register_buffer("mean", torch.tensor(norm["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm["std"]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone((x - self.mean) / self.std)


def build_encoder(name: str, pretrained: bool | str | Path | None = False,
                  output_stride: int | None = None) -> NormalizedEncoder:
    """``create_backbone(name, pretrained, output_stride)`` wrapped so it accepts [0, 1] RGB input."""
    from tissueseg.models.registry import create_backbone

    return NormalizedEncoder(create_backbone(name, pretrained=pretrained or None, output_stride=output_stride))
