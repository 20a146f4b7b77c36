"""Backbones: ``create_backbone(name, pretrained=...)`` returns multi-scale feature extractors.

Registered: ``efficientnet_lite0`` (default; offline ImageNet weights from the
``tissueseg[pretrained]`` extra) and ``resnet38d`` (output stride 8); any other timm model name
is passed through with ``features_only=True``. Weights come only from local sources.
"""

from tissueseg.models import efficientnet_lite, resnet38d  # noqa: F401  (register the backbones)
from tissueseg.models import vit  # noqa: F401  (register the ViT token-map backbones)
from tissueseg.models.efficientnet_lite import load_efficientnet_lite0_imagenet
from tissueseg.models.registry import DEFAULT_BACKBONE, Backbone, create_backbone, list_backbones
from tissueseg.models.weights import WeightsNotFoundError, resolve_local_weights

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "WeightsNotFoundError",
    "create_backbone",
    "list_backbones",
    "load_efficientnet_lite0_imagenet",
    "resolve_local_weights",
]
