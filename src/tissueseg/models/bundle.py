"""Every network from its spec, and a trained model as one self-contained file.

:func:`create_model` is the one way to build a network: training recipes, the bundle loader and the
benchmarks all call it with a spec. The bundle (``model.pt``) stores architectures as specs (rebuilt
from the registry, no pickled code), the weights, and what a user of the output needs: class names,
palette, background index, window, MPP; :func:`load_predictor` turns it into a
:class:`TissuePredictor`, the deployable model that images and slides run on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tissueseg.data.background import white_background
from tissueseg.data.io import save_atomic

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
class MatcherSpec:
    """How to build PLIMSeg's label-trained language–image matcher (:class:`~tissueseg.models.matcher.LabelTrainedMatcher`)."""

    backbone: str
    rows: Sequence[Sequence[str]]  # the prompts of each class, then of each background description
    text_name: str  # what produced ``text_embeddings``
    text_embeddings: torch.Tensor | None = None  # fixed sentence embeddings of the prompts, or None: learnable


@dataclass
class TextSpec:
    """How to build UniSemAlign's class-name text branch (arguments of :func:`tissueseg.models.text.build_text_encoder`)."""

    class_names: list[str]
    encoder: str = "auto"
    clip_model: str = "ViT-B-16"
    clip_weights: str | None = None
    n_ctx: int = 4
    learnable_context: bool = True
    prompt_template: str = "{}"
    minilm_path: str | None = None
    cache_file: Path | None = None


@dataclass
class UniSemAlignSpec:
    """How to build a :class:`~tissueseg.models.unisemalign.UniSemAlignNet` around a DeepLabV3+."""

    segmenter: SegmenterSpec
    text: TextSpec | None = None
    prototypes: bool = True
    embed_dim: int = 256
    fp_dropout: float = 0.5
    threshold_init: float = 0.7
    clean_bn_statistics: bool = True


ModelSpec = SegmenterSpec | ClassifierSpec | MatcherSpec | UniSemAlignSpec


@dataclass
class ModelMeta:
    """What a bundle says about its model's outputs and inputs."""

    method: str
    classes: list[str]
    palette: list[tuple[int, int, int]]
    label_to_mask: list[int]  # mask index of each network output class
    background_index: int | None = None
    white_background: dict | None = None  # {"threshold": 200, "min_size": 50} when detection is on
    window: int = 224  # side of the windows the model was scored with (WSSS: the training crop; semi-supervised:
    #                    evaluation.window); the default slide tile. Older bundles call it ``tile_size``.
    train_crop: int | None = None  # side of the training crops, when known
    mpp: float | None = None  # microns per pixel of the training images, when known
    extra: dict = field(default_factory=dict)


def create_model(spec: ModelSpec, pretrained: bool | str = False) -> nn.Module:
    """The network of ``spec`` on a registry encoder (``pretrained`` initialises the encoder for training).

    :class:`SegmenterSpec` → DeepLabV3+; :class:`ClassifierSpec` → the MLPS gate classifier;
    :class:`MatcherSpec` → the label-trained matcher; :class:`UniSemAlignSpec` → UniSemAlignNet.
    """
    from tissueseg.models.encoder import build_encoder

    if isinstance(spec, SegmenterSpec):
        from tissueseg.models.deeplab import DeepLabV3Plus

        return DeepLabV3Plus(build_encoder(spec.backbone, pretrained, spec.output_stride), spec.num_classes,
                             channels=spec.decoder_channels)
    if isinstance(spec, ClassifierSpec):
        from tissueseg.models.classifier import PDAClassifier

        return PDAClassifier(build_encoder(spec.backbone, pretrained, spec.output_stride), spec.num_classes)
    if isinstance(spec, MatcherSpec):
        from tissueseg.models.matcher import LabelTrainedMatcher

        return LabelTrainedMatcher(build_encoder(spec.backbone, pretrained), spec.rows, spec.text_embeddings,
                                   spec.text_name, spec.backbone)
    if isinstance(spec, UniSemAlignSpec):
        from tissueseg.models.text import TextBranch, build_text_encoder
        from tissueseg.models.unisemalign import UniSemAlignNet

        segmenter = create_model(spec.segmenter, pretrained)
        text = None
        if spec.text is not None:
            t = spec.text
            text = TextBranch(build_text_encoder(t.class_names, t.encoder, spec.embed_dim, t.clip_model,
                                                 t.clip_weights, t.n_ctx, t.learnable_context, t.prompt_template,
                                                 t.minilm_path, cache_file=t.cache_file), spec.embed_dim)
        return UniSemAlignNet(segmenter, spec.segmenter.num_classes, text, spec.prototypes, spec.embed_dim,
                              spec.fp_dropout, spec.threshold_init, spec.clean_bn_statistics)
    raise TypeError(f"no network for {type(spec).__name__} (fix: pass one of {ModelSpec})")


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
    segmenter = create_model(SegmenterSpec(**bundle["segmenter_spec"]))
    segmenter.load_state_dict(bundle["segmenter"])
    classifier, threshold = None, 0.1
    if bundle.get("classifier_spec"):
        spec = ClassifierSpec(**bundle["classifier_spec"])
        classifier = create_model(spec)
        classifier.load_state_dict(bundle["classifier"])
        threshold = spec.gate_threshold
    meta = meta_from_dict(bundle["meta"])
    return TissuePredictor(segmenter, meta, classifier, threshold).to(device)


def meta_from_dict(raw: dict) -> ModelMeta:
    """:class:`ModelMeta` from a bundle's ``meta``; bundles written before the rename store ``window`` as
    ``tile_size``."""
    raw = dict(raw)
    if "tile_size" in raw:
        raw.setdefault("window", raw.pop("tile_size"))
    meta = ModelMeta(**raw)
    meta.palette = [tuple(c) for c in meta.palette]
    return meta
