"""Backbone registry: ``create_backbone(name, pretrained=...)`` for named models and any timm model."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from tissueseg.models.weights import (
    PASS_A_PATH,
    WeightsNotFoundError,
    find_in_hf_cache,
    hf_cache_dir,
    resolve_local_weights,
)

Pretrained = bool | str | os.PathLike | None
DEFAULT_BACKBONE = "efficientnet_lite0"
IMAGENET_NORMALIZATION = {"mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD}

_BACKBONES: dict[str, Callable[..., Backbone]] = {}


class Backbone(nn.Module):
    """Multi-scale feature extractor; ``forward(x)`` returns feature maps, shallow to deep.

    Attributes
    ----------
    feature_channels
        Channels of each returned map.
    reductions
        Input-to-map stride of each returned map.
    normalization
        ``{"mean": (r, g, b), "std": (r, g, b)}`` to apply to [0, 1] RGB input.
    """

    feature_channels: list[int]
    reductions: list[int]
    normalization: dict[str, tuple[float, ...]]


class TimmBackbone(Backbone):
    """A timm ``features_only`` model as a :class:`Backbone`.

    Parameters
    ----------
    model
        Model built with ``features_only=True``.
    normalization
        Input normalisation; defaults to the model's ``pretrained_cfg`` mean/std.
    """

    def __init__(self, model: nn.Module, normalization: dict[str, tuple[float, ...]] | None = None):
        super().__init__()
        self.model = model
        self.feature_channels = list(model.feature_info.channels())
        self.reductions = list(model.feature_info.reduction())
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.normalization = dict(normalization) if normalization else {
            "mean": tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
            "std": tuple(cfg.get("std", IMAGENET_DEFAULT_STD)),
        }

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))


def register_backbone(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
    """Register a backbone factory under its function name (decorator)."""
    _BACKBONES[fn.__name__] = fn
    return fn


def list_backbones(pattern: str = "*", include_timm: bool = False) -> list[str]:
    """Names accepted by :func:`create_backbone` that match a glob ``pattern``.

    Registered names come first; ``include_timm`` appends timm's model names.
    """
    names = sorted(fnmatch.filter(_BACKBONES, pattern))
    if include_timm:
        names += [n for n in timm.list_models(pattern) if n not in _BACKBONES]
    return names


def timm_features(
    arch: str,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    in_chans: int = 3,
    weights_file: Path | None = None,
) -> nn.Module:
    """Build a timm ``features_only`` model, loading ``weights_file`` (timm keys) when given."""
    kwargs: dict = {"features_only": True, "in_chans": in_chans}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    if output_stride is not None:
        kwargs["output_stride"] = output_stride
    if weights_file is not None:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights_file)})
    return timm.create_model(arch, **kwargs)


def _timm_weights_file(name: str, pretrained: Pretrained) -> Path | None:
    if not pretrained:
        return None
    if pretrained is not True:
        return resolve_local_weights(pretrained)
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = cfg.hf_hub_id if cfg else None
    found = find_in_hf_cache(hub_id, [cfg.hf_hub_filename] if cfg.hf_hub_filename else None) if hub_id else None
    if found is None:
        where = f"'{hub_id}' is not in the Hugging Face cache {hf_cache_dir()}" if hub_id else "timm lists no hub repo"
        raise WeightsNotFoundError(
            f"pretrained=True for '{name}': no local weights ({where}), and tissueseg never downloads; {PASS_A_PATH}")
    return found


def create_backbone(
    name: str,
    pretrained: Pretrained = None,
    out_indices: Sequence[int] | None = None,
    output_stride: int | None = None,
    in_chans: int = 3,
) -> Backbone:
    """Create a multi-scale feature backbone.

    Parameters
    ----------
    name
        A registered name (see :func:`list_backbones`) or any timm model name supporting
        ``features_only`` (a pretrained tag such as ``resnet18.a1_in1k`` is allowed).
    pretrained
        ``None``/``False``: random init. ``True``: the model's local default (registered models
        say which; timm models: their weights in the local Hugging Face cache). A path: a weights
        file, a folder holding one, or a Hugging Face cache folder. Nothing is ever downloaded.
    out_indices
        Which feature levels to return (default: all).
    output_stride
        Stride of the deepest map (dilation beyond it); ``None`` keeps the model's default.
    in_chans
        Input channels; pretrained first-conv weights are adapted when not 3.

    Returns
    -------
    Backbone
        ``forward(x)`` gives ``len(feature_channels)`` maps, shallow to deep.

    Raises
    ------
    WeightsNotFoundError
        If ``pretrained`` asks for weights that are not available locally.
    ValueError
        If ``name`` is neither registered nor a timm model.
    """
    kwargs = {"out_indices": out_indices, "output_stride": output_stride, "in_chans": in_chans}
    if name in _BACKBONES:
        return _BACKBONES[name](pretrained=pretrained, **kwargs)
    if not timm.is_model(name):
        raise ValueError(f"unknown backbone '{name}': not registered ({', '.join(_BACKBONES)}) nor a timm model")
    return TimmBackbone(timm_features(name, weights_file=_timm_weights_file(name, pretrained), **kwargs))
