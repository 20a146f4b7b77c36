"""DeepLabV3+ decoder (Chen et al., ECCV 2018) on any registry backbone.

Encoder, decoder and head are separate parts (segmentation_models_pytorch spirit): the encoder is a
:func:`tissueseg.models.create_backbone` feature extractor, :class:`DeepLabV3PlusDecoder` fuses its
shallow (low-level) and deepest (high-level) maps, and a 1×1 conv head gives class logits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def frozen_bn_statistics(module: nn.Module | None) -> Iterator[None]:
    """Inside, the BatchNorm layers of ``module`` (None: nothing) still normalise with batch statistics in
    training mode but leave their running statistics unchanged (momentum 0)."""
    norms = [] if module is None else [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1 conv, three dilated 3×3 convs and image pooling, fused by 1×1."""

    def __init__(self, in_ch: int, out_ch: int = 256, rates: Sequence[int] = (12, 24, 36), dropout: float = 0.5):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(in_ch, out_ch)] +
                                      [conv_bn_relu(in_ch, out_ch, 3, r) for r in rates])
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1, bias=False),
                                        nn.ReLU(inplace=True))
        self.project = nn.Sequential(conv_bn_relu(out_ch * (len(rates) + 2), out_ch), nn.Dropout(dropout))

    def set_dropout(self, p: float) -> None:
        """Change the dropout rate after the fusing 1×1 conv (no parameters change, so bundles still load)."""
        self.project[-1].p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the high-level map, upsampled and fused with a 48-channel projection of the low-level map.

    Returns the 256-channel decoder feature at the low-level map's resolution.
    """

    def __init__(self, low_ch: int, high_ch: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36)):
        super().__init__()
        self.aspp = ASPP(high_ch, channels, rates)
        self.reduce_low = conv_bn_relu(low_ch, 48)
        self.fuse = nn.Sequential(conv_bn_relu(channels + 48, channels, 3), conv_bn_relu(channels, channels, 3))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([high, self.reduce_low(low)], dim=1))


class DeepLabV3Plus(nn.Module):
    """Encoder + DeepLabV3+ decoder + 1×1 classification head; logits at the input resolution.

    Parameters
    ----------
    encoder : backbone returning a list of feature maps (shallow → deep) with ``feature_channels``.
    num_classes : number of output classes.
    channels : decoder width (256 in the paper; smaller for CPU demos).
    low_level_index : which encoder map feeds the decoder's skip (default: the first with stride ≥ 4).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, low_level_index: int | None = None,
                 rates: Sequence[int] = (12, 24, 36), channels: int = 256):
        super().__init__()
        self.encoder = encoder
        feature_channels = list(encoder.feature_channels)
        reductions = list(getattr(encoder, "reductions", [4] * len(feature_channels)))
        if low_level_index is None:
            low_level_index = next((i for i, r in enumerate(reductions) if r >= 4), 0)
        self.low_level_index = low_level_index
        self.decoder = DeepLabV3PlusDecoder(feature_channels[low_level_index], feature_channels[-1], channels, rates)
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Encoder maps and the decoder feature (before the head)."""
        feats = self.encoder(x)
        return feats, self.decoder(feats[self.low_level_index], feats[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, decoded = self.forward_features(x)
        return F.interpolate(self.head(decoded), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def parameter_groups(self, head_lr_mult: float = 10.0) -> list[dict]:
        """Encoder at the base LR, decoder and head ×``head_lr_mult`` (DeepLab / UniSemAlign recipe)."""
        head = list(self.decoder.parameters()) + list(self.head.parameters())
        return [{"params": [p for p in self.encoder.parameters() if p.requires_grad], "lr_mult": 1.0},
                {"params": head, "lr_mult": head_lr_mult}]
