"""A trained model as one self-contained file, and the predictor that images and slides run on.

The bundle stores architectures by name (rebuilt from the registry, no pickled code), the weights,
and what a user of the output needs: class names, palette, background index, tile size, MPP.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tissueseg.engine.trainer import save_atomic

BUNDLE_FORMAT = "tissueseg-model/1"


@dataclass
class SegmenterSpec:
    """How to rebuild a DeepLabV3+ segmenter from the registry."""

    backbone: str
    num_classes: int
    output_stride: int | None = 16
    decoder_channels: int = 256


@dataclass
class ClassifierSpec:
    """How to rebuild the MLPS stage-1 classifier used as the test-time gate."""

    backbone: str
    num_classes: int
    output_stride: int | None = 16
    gate_threshold: float = 0.1


@dataclass
class ModelMeta:
    method: str
    classes: list[str]
    palette: list[tuple[int, int, int]]
    label_to_mask: list[int]  # mask index of each network output class
    background_index: int | None = None
    white_background: dict | None = None  # {"threshold": 200, "min_size": 50} when detection is on
    tile_size: int = 224
    mpp: float | None = None  # microns per pixel of the training images, when known
    extra: dict = field(default_factory=dict)


def build_segmenter(spec: SegmenterSpec, pretrained: bool | str = False) -> nn.Module:
    """DeepLabV3+ on a registry encoder (``pretrained`` initialises the encoder for training)."""
    from tissueseg.models.deeplab import DeepLabV3Plus
    from tissueseg.models.encoder import build_encoder

    return DeepLabV3Plus(build_encoder(spec.backbone, pretrained, spec.output_stride), spec.num_classes,
                         channels=spec.decoder_channels)


def build_gate_classifier(spec: ClassifierSpec, pretrained: bool | str = False) -> nn.Module:
    """The MLPS stage-1 classifier on a registry encoder."""
    from tissueseg.methods.mlps import PDAClassifier
    from tissueseg.models.encoder import build_encoder

    return PDAClassifier(build_encoder(spec.backbone, pretrained, spec.output_stride), spec.num_classes)


class TissuePredictor(nn.Module):
    """Float [0, 1] RGB tiles (N, 3, H, W) → class probabilities (N, len(classes), H, W) in mask indices.

    Applies the classification gate when the model has one and marks detected white background.
    """

    def __init__(self, segmenter: nn.Module, meta: ModelMeta, classifier: nn.Module | None = None,
                 gate_threshold: float = 0.1):
        super().__init__()
        self.segmenter = segmenter.eval()
        self.classifier = classifier.eval() if classifier is not None else None
        self.meta = meta
        self.gate_threshold = gate_threshold
        self.register_buffer("to_mask", torch.tensor(meta.label_to_mask), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.meta.classes)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = self.segmenter(images).float().softmax(1)
        if self.classifier is not None:
            keep = torch.sigmoid(self.classifier(images).float()) > self.gate_threshold
            probs = probs * keep[:, :, None, None]
        out = torch.zeros(images.shape[0], self.num_classes, *images.shape[-2:], device=images.device)
        out.index_add_(1, self.to_mask, probs)
        if self.meta.white_background is not None and self.meta.background_index is not None:
            from tissueseg.methods.mlps import white_background

            rgb = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
            wb = self.meta.white_background
            white = torch.from_numpy(np.stack([white_background(im, wb["threshold"], wb["min_size"])
                                               for im in rgb])).to(images.device)
            out = out.masked_fill(white[:, None], 0.0)
            out[:, self.meta.background_index].masked_fill_(white, 1.0)
        return out


def save_bundle(path: str | os.PathLike, segmenter: nn.Module, segmenter_spec: SegmenterSpec, meta: ModelMeta,
                classifier: nn.Module | None = None, classifier_spec: ClassifierSpec | None = None) -> Path:
    """Write the model file (atomically)."""
    path = Path(path)
    save_atomic({"format": BUNDLE_FORMAT, "meta": asdict(meta), "segmenter_spec": asdict(segmenter_spec),
                 "segmenter": segmenter.state_dict(),
                 "classifier_spec": asdict(classifier_spec) if classifier_spec else None,
                 "classifier": classifier.state_dict() if classifier is not None else None}, path)
    return path


def load_predictor(path: str | os.PathLike, device: str | torch.device = "cpu") -> TissuePredictor:
    """Rebuild a :class:`TissuePredictor` from a model file written by :func:`save_bundle`."""
    path = Path(path)
    try:
        bundle = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: model file not found (fix: pass the model.pt a training run wrote)") from exc
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt or foreign file
        raise ValueError(f"{path}: not a readable tissueseg model file ({exc})") from exc
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: not a tissueseg model file (expected format {BUNDLE_FORMAT}; "
                         f"fix: pass the model.pt in a run's output folder)")
    segmenter = build_segmenter(SegmenterSpec(**bundle["segmenter_spec"]))
    segmenter.load_state_dict(bundle["segmenter"])
    classifier, threshold = None, 0.1
    if bundle.get("classifier_spec"):
        spec = ClassifierSpec(**bundle["classifier_spec"])
        classifier = build_gate_classifier(spec)
        classifier.load_state_dict(bundle["classifier"])
        threshold = spec.gate_threshold
    meta = ModelMeta(**bundle["meta"])
    meta.palette = [tuple(c) for c in meta.palette]
    return TissuePredictor(segmenter, meta, classifier, threshold).to(device)
