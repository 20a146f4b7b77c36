"""ResNet-38d (Wu et al., "Wider or Deeper", model A1) at output stride 8, as used by SEAM and MLPS.

A wide pre-activation ResNet: three stride-2 stages after a stride-1 stem, then dilated stages
(dilation 2, then 4 in two bottleneck blocks with dropout). Module names follow the PyTorch port
of the MXNet ImageNet weights (``conv1a``, ``b2``, ``b2_1``, ... ``b7``, ``bn7``), so a converted
``ilsvrc-cls_rna-a1_cls1000_ep-0001`` state dict loads as is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models import adapt_input_conv
from torch import nn

from tissueseg.models.registry import IMAGENET_NORMALIZATION, Backbone, Pretrained, register_backbone
from tissueseg.models.weights import WeightsNotFoundError, load_state_dict_file, resolve_local_weights

# Basic-block stages: (name, blocks, in, mid, out, stride, first-block dilation, dilation).
_BASIC_STAGES = (
    ("b2", 3, 64, 128, 128, 2, 1, 1),
    ("b3", 3, 128, 256, 256, 2, 1, 1),
    ("b4", 6, 256, 512, 512, 2, 1, 1),
    ("b5", 3, 512, 512, 1024, 1, 1, 2),
)
# Bottleneck stages: (name, in, out, dilation, dropout).
_BOTTLENECK_STAGES = (("b6", 1024, 2048, 4, 0.3), ("b7", 2048, 4096, 4, 0.5))
FEATURE_CHANNELS = (128, 256, 512, 1024, 2048, 4096)
REDUCTIONS = (2, 4, 8, 8, 8, 8)


class ResBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU, 3x3 conv, BN-ReLU, 3x3 conv, plus shortcut."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1,
                 first_dilation: int = 1, dilation: int = 1):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, mid_ch, 3, stride, first_dilation, first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_ch)
        self.conv_branch2b1 = nn.Conv2d(mid_ch, out_ch, 3, 1, dilation, dilation, bias=False)
        same_shape = in_ch == out_ch and stride == 1
        self.conv_branch1 = None if same_shape else nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the block output and its pre-activation input ``relu(bn(x))``."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(pre))))
        return shortcut + y, pre


class ResBlockBottleneck(nn.Module):
    """Pre-activation bottleneck (1x1 to out/4, dilated 3x3 to out/2, 1x1 to out) with dropout."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int, dropout: float):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_ch)
        self.conv_branch2a = nn.Conv2d(in_ch, out_ch // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_ch // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_ch // 4, out_ch // 2, 3, 1, dilation, dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_ch // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_ch // 2, out_ch, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the block output and its pre-activation input ``relu(bn(x))``."""
        pre = F.relu(self.bn_branch2a(x))
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return self.conv_branch1(pre) + y, pre


class ResNet38d(Backbone):
    """ResNet-38d feature backbone, output stride 8.

    Features are the activated stage outputs (the next block's ``relu(bn(x))``; ``relu(bn7(x))``
    last): 128, 256, 512, 1024, 2048, 4096 channels at strides 2, 4, 8, 8, 8, 8. SEAM/MLPS call
    levels 2, 3 and 5 ``conv4``, ``conv5`` and ``conv6``.

    Parameters
    ----------
    out_indices
        Feature levels to return (default: all six); computation stops after the deepest.
    in_chans
        Input channels.
    """

    def __init__(self, out_indices: Sequence[int] | None = None, in_chans: int = 3):
        super().__init__()
        self.out_indices = list(range(len(FEATURE_CHANNELS)) if out_indices is None else out_indices)
        if not self.out_indices or not all(0 <= i < len(FEATURE_CHANNELS) for i in self.out_indices):
            raise ValueError(f"resnet38d out_indices must be in 0..{len(FEATURE_CHANNELS) - 1}, got {out_indices}")
        self.feature_channels = [FEATURE_CHANNELS[i] for i in self.out_indices]
        self.reductions = [REDUCTIONS[i] for i in self.out_indices]
        self.normalization = dict(IMAGENET_NORMALIZATION)
        self.conv1a = nn.Conv2d(in_chans, 64, 3, padding=1, bias=False)
        self.stages: list[list[str]] = []
        for name, blocks, in_ch, mid_ch, out_ch, stride, first_dilation, dilation in _BASIC_STAGES:
            self.add_module(name, ResBlock(in_ch, mid_ch, out_ch, stride, first_dilation, dilation))
            for i in range(1, blocks):
                self.add_module(f"{name}_{i}", ResBlock(out_ch, mid_ch, out_ch, 1, dilation, dilation))
            self.stages.append([name] + [f"{name}_{i}" for i in range(1, blocks)])
        for name, in_ch, out_ch, dilation, dropout in _BOTTLENECK_STAGES:
            self.add_module(name, ResBlockBottleneck(in_ch, out_ch, dilation, dropout))
            self.stages.append([name])
        self.bn7 = nn.BatchNorm2d(FEATURE_CHANNELS[-1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv1a(x)
        feats: list[torch.Tensor] = []
        deepest = max(self.out_indices)
        for stage, names in enumerate(self.stages):
            for block, name in enumerate(names):
                x, pre = self.get_submodule(name)(x)
                if stage > 0 and block == 0:
                    feats.append(pre)  # the previous stage's activated output
                    if len(feats) > deepest:
                        return [feats[i] for i in self.out_indices]
        feats.append(F.relu(self.bn7(x)))
        return [feats[i] for i in self.out_indices]

    def load_converted_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a converted MXNet ImageNet (or SEAM/MLPS-trained) state dict.

        Keys outside the backbone (e.g. a classifier ``fc8``) are ignored; every backbone key but
        BatchNorm's ``num_batches_tracked`` must be present. A 3-channel ``conv1a`` is adapted to
        ``in_chans``.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"not ResNet-38d weights: {len(missing)} backbone keys missing, e.g. {missing[:5]}")
        weights = {k: state_dict[k] for k in own if k in state_dict}
        in_chans = self.conv1a.in_channels
        if weights["conv1a.weight"].shape[1] != in_chans:
            weights["conv1a.weight"] = adapt_input_conv(in_chans, weights["conv1a.weight"])
        self.load_state_dict(weights, strict=False)


@register_backbone
def resnet38d(
    pretrained: Pretrained = None,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    in_chans: int = 3,
) -> Backbone:
    """ResNet-38d at output stride 8; ``pretrained`` must be a local converted-weights source."""
    if output_stride not in (None, 8):
        raise ValueError(f"resnet38d has output stride 8 (dilated last stages), got output_stride={output_stride}")
    if pretrained is True:
        raise WeightsNotFoundError(
            "resnet38d has no packaged weights; pass pretrained=<path> to the MXNet ImageNet weights "
            "ilsvrc-cls_rna-a1_cls1000_ep-0001 converted to a PyTorch state dict (as in SEAM / WSSS-Tissue)")
    model = ResNet38d(out_indices, in_chans)
    if pretrained:
        model.load_converted_weights(load_state_dict_file(resolve_local_weights(pretrained)))
    return model
