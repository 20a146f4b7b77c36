"""UniSemAlign: text–prototype alignment for semi-supervised histopathology segmentation
(Le-Van Thai et al., CVPR 2026 workshops; official code thailevann/UniSemAlign, built on CorrMatch).

The model is DeepLabV3+ on a registry encoder (paper: frozen UNI ViT-L/16 read at blocks 2 and 9,
:mod:`tissueseg.models.vit`) with two class-level branches in a shared 256-d space: learnable
prototypes and class-name text embeddings (:mod:`tissueseg.models.text`), both scored against
projected pixel embeddings by cosine similarity and aligned to each other by an MSE. Labelled images
train the decoder, the prototype and the text scores with cross-entropy; unlabelled images train
weak-to-strong consistency (FixMatch/UniMatch style) with pseudo labels from the fused scores
S = S_dl + α·S_proto + β·S_text, a confidence threshold kept as an EMA, a KL term and a
feature-perturbation branch. Only what the paper defines lives in the first two parts of this file;
the recipe (data pairing, training rows, evaluation, export, demo) follows on the shared engine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from tissueseg.config import SemiConfig, UniSemAlignSettings
from tissueseg.data.sample import DatasetError, Problem, Record, Sample, TissueDataset
from tissueseg.data.transforms import apply_pair, build_train_transforms
from tissueseg.engine import distributed as dist_utils
from tissueseg.engine.data import IGNORE, LabelSpace
from tissueseg.engine.evaluate import score_records
from tissueseg.engine.losses import clamped_count, masked_cross_entropy
from tissueseg.engine.run import RunContext
from tissueseg.engine.trainer import JsonLog, StepFn, TrainConfig, Trainer, load_best, unwrap
from tissueseg.methods.base import Method, ResultRow
from tissueseg.metrics.confusion import ConfusionMeter
from tissueseg.metrics.objects import glas_object_metrics, instances_from_binary
from tissueseg.models.bundle import ModelMeta, SegmenterSpec, TextSpec, UniSemAlignSpec, create_model, save_bundle
from tissueseg.models.deeplab import DeepLabV3Plus
from tissueseg.models.device import autocast
from tissueseg.models.inference import predict_probabilities
from tissueseg.models.unisemalign import UniSemAlignNet  # noqa: F401  (the network, built by create_model)


# --- Paper part 1: prototype and text branches, alignment, fused scores ----------------------------

def cosine_logits(pixel_embeddings: torch.Tensor, class_embeddings: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """S[b, c, h, w] = scale · cos(v[b, :, h, w], e[c]): pixel embeddings (B, D, H, W) against (C, D) classes."""
    v = F.normalize(pixel_embeddings.float(), dim=1)
    e = F.normalize(class_embeddings.float(), dim=1)
    return scale * torch.einsum("bdhw,cd->bchw", v, e)


def alignment_loss(prototypes: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """L_align = MSE(normalise(P), normalise(T)), the mean over the C×D entries (official ``proto_text_align``)."""
    return F.mse_loss(F.normalize(prototypes.float(), dim=1), F.normalize(text_embeddings.float(), dim=1))


def fuse_scores(deeplab_logits: torch.Tensor, proto_logits: torch.Tensor | None = None,
                text_logits: torch.Tensor | None = None, alpha: float = 0.1, beta: float = 0.1) -> torch.Tensor:
    """S = S_dl + α·S_proto + β·S_text (absent branches contribute nothing); used for pseudo labels."""
    fused = deeplab_logits.float()
    if proto_logits is not None and alpha:
        fused = fused + alpha * proto_logits
    if text_logits is not None and beta:
        fused = fused + beta * text_logits
    return fused


def branch_logits(pixel: torch.Tensor | None, out: dict, size: tuple[int, int], scale: float = 1.0,
                  at: str = "input") -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Prototype and text cosine logits at ``size``.

    ``at="input"`` upsamples the pixel embeddings to ``size`` before the cosine (official code);
    ``"feature"`` scores at the embedding resolution and upsamples the logits (much cheaper on CPU).
    """
    if pixel is None:
        return None, None
    pixel = pixel.float()
    if at == "input":
        pixel = F.interpolate(pixel, size=size, mode="bilinear", align_corners=False)
    proto = cosine_logits(pixel, out["prototypes"], scale) if "prototypes" in out else None
    text = cosine_logits(pixel, out["text"], scale) if "text" in out else None
    if at != "input":
        proto, text = (None if t is None else F.interpolate(t, size=size, mode="bilinear", align_corners=False)
                       for t in (proto, text))
    return proto, text


# --- Paper part 2: semi-supervised losses ----------------------------------------------------------

def batch_confidence(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Confidence of a batch (official ``ThreshController``): for every predicted class, the highest
    softmax confidence among the pixels predicted as it; the mean over those classes. NaN if no pixel.

    One scatter over the pixels, so it stays on the device (no host sync).
    """
    probs = logits.detach().float().softmax(1)
    conf, pred = probs.max(1)
    k = logits.shape[1]
    if valid is not None:
        pred = pred.masked_fill(~valid, k)  # a bin of its own, dropped below
    maxima = conf.new_full((k + 1,), -1.0).scatter_reduce(0, pred.flatten(), conf.flatten(), "amax")[:k]
    present = maxima >= 0
    return (maxima * present).sum() / present.sum()


def ema_threshold(threshold: torch.Tensor, logits: torch.Tensor, momentum: float = 0.999,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """T ← m·T + (1 − m)·batch_confidence (unchanged when the batch has no valid pixel)."""
    new = batch_confidence(logits, valid).to(threshold.device, threshold.dtype)
    return torch.where(new.isnan(), threshold, momentum * threshold + (1 - momentum) * new)


def cutmix_box(size: int, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
               ratio: tuple[float, float] = (0.3, 1 / 0.3), generator: torch.Generator | None = None) -> torch.Tensor:
    """(size, size) bool box of a random area fraction and aspect ratio, all False with probability 1 − p
    (CorrMatch/UniMatch ``obtain_cutmix_box``)."""
    box = torch.zeros(size, size, dtype=torch.bool)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    if float(torch.rand((), generator=generator)) > p:
        return box
    target = uniform(*area) * size * size
    for _ in range(100):
        r = uniform(*ratio)
        w, h = int(math.sqrt(target / r)), int(math.sqrt(target * r))
        x, y = (int(v) for v in torch.randint(0, size, (2,), generator=generator))
        if x + w <= size and y + h <= size:
            box[y:y + h, x:x + w] = True
            return box
    return box


def cutmix(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Paste each sample's box from its partner, the previous sample of the batch (roll by 1).

    ``x`` is (N, ...) with the two trailing dims spatial; ``box`` is (N, H, W) bool. Images, labels,
    confidences and probabilities mixed with the same box stay consistent.
    """
    partner = x.roll(1, dims=0)
    mask = box.view(box.shape[0], *([1] * (x.ndim - 3)), *box.shape[-2:])
    return torch.where(mask, partner, x)


def kl_consistency(strong_logits: torch.Tensor, weak_probs: torch.Tensor, keep: torch.Tensor,
                   n_valid: torch.Tensor | int) -> torch.Tensor:
    """Σ_pixels keep · KL(p_weak ‖ p_strong) / valid pixels (official KLDivLoss summed over classes)."""
    kl = F.kl_div(F.log_softmax(strong_logits.float(), dim=1), weak_probs, reduction="none").sum(1)
    return (kl * keep).sum() / clamped_count(n_valid)


def prediction_balanced_weights(label: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor, num_classes: int,
                                max_ratio: float = 5.0) -> torch.Tensor:
    """Pixel weights ``keep · r[label]`` with r_c = (share of class c among the valid pixels' pseudo labels) /
    (its share among the kept, confident ones), capped at ``max_ratio``.

    The kept pixels then count as if every class passed the confidence threshold as often as it is
    predicted, so a class the model is more confident about (not more often right about) does not take
    over the unlabelled loss; the total weight stays that of the kept pixels. One scatter, no host sync.
    """
    flat = label.flatten()
    predicted = torch.zeros(num_classes, device=label.device).scatter_add_(0, flat, valid.flatten().float())
    kept = torch.zeros(num_classes, device=label.device).scatter_add_(0, flat, keep.flatten().float())
    ratio = (predicted / predicted.sum().clamp_min(1)) / (kept / kept.sum().clamp_min(1)).clamp_min(1e-6)
    ratio = torch.where(kept > 0, ratio.clamp_max(max_ratio), torch.zeros_like(ratio))
    return keep.float() * ratio[label]


def labelled_losses(out: dict, mask: torch.Tensor, settings: UniSemAlignSettings) -> dict[str, torch.Tensor]:
    """CE of the decoder, the prototype and the text logits on the labels, and the alignment MSE."""
    losses = {"loss_x": F.cross_entropy(out["labelled"].float(), mask, ignore_index=IGNORE)}
    proto, text = branch_logits(out.get("labelled_pixel"), out, mask.shape[-2:], settings.logit_scale,
                                settings.branch_logits_at)
    if proto is not None:
        losses["loss_proto"] = F.cross_entropy(proto, mask, ignore_index=IGNORE)
    if text is not None:
        losses["loss_text"] = F.cross_entropy(text, mask, ignore_index=IGNORE)
    if settings.alignment == "mse" and "prototypes" in out and "text" in out:
        losses["loss_align"] = alignment_loss(out["prototypes"], out["text"])
    return losses


def fused_pseudo_labels(logits: torch.Tensor, pixel: torch.Tensor | None, out: dict,
                        settings: UniSemAlignSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, label) of the fused scores S_dl + α·S_proto + β·S_text (no gradient)."""
    with torch.no_grad():
        detached = {k: v.detach() for k, v in out.items() if k in ("prototypes", "text")}
        proto, text = branch_logits(None if pixel is None else pixel.detach(), detached, logits.shape[-2:],
                                    settings.logit_scale, settings.branch_logits_at)
        fused = fuse_scores(logits.detach(), proto, text, settings.alpha, settings.beta)
        return fused.softmax(1).max(1)


PAPER_RECIPE = {"sup_weight": 0.5, "strong_weight": 0.25, "kl_weight": 0.25, "fp_weight": 0.25, "ramp_up": 0.0,
                "threshold": "ema", "clean_bn_statistics": False, "warm_start": False}
"""Settings overrides that restore the paper's / official code's loss weights and EMA threshold."""


def sigmoid_ramp_up(progress: float, length: float) -> float:
    """exp(−5·(1 − t)²) for t = progress / length < 1, then 1 (Laine & Aila 2017); 1 when ``length`` is 0."""
    if length <= 0 or progress >= length:
        return 1.0
    t = max(progress, 0.0) / length
    return math.exp(-5.0 * (1.0 - t) ** 2)


def unisemalign_losses(out: dict, batch: dict, threshold: torch.Tensor, settings: UniSemAlignSettings,
                       progress: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All UniSemAlign losses of one step and the updated EMA threshold.

    Total = (w_sup·L_sup + r(t)·(w_s·L_strong + w_kl·L_kl + w_fp·L_fp) + L_proto + L_text + L_align) / 2
    with the weights of ``settings`` (paper: 0.5, 0.25, 0.25, 0.25 and no ramp) and r(t) the sigmoid
    ramp-up over the first ``settings.ramp_up`` of training (``progress`` ∈ [0, 1]). The strong view
    (CutMix of two unlabelled images) is supervised by the fused weak pseudo label mixed with the same
    box (paper); ``strong_target="strong"`` uses the strong view's own fused prediction instead
    (official code). Pixels count when their fused confidence reaches the threshold: fixed
    ``settings.confidence`` or the paper's EMA (``threshold="ema"``).
    """
    s = settings
    losses = labelled_losses(out, batch["mask"], s)
    box = batch["box"].bool()
    valid = batch.get("valid")
    valid = torch.ones_like(box) if valid is None else valid.bool()
    valid_mix = cutmix(valid, box)
    conf_w, label_w = fused_pseudo_labels(out["weak"], out.get("weak_pixel"), out, s)
    with torch.no_grad():
        threshold = ema_threshold(threshold, out["weak"], s.threshold_momentum, valid_mix)
        cut = threshold if s.threshold == "ema" else s.confidence
        conf_mix, label_mix = cutmix(conf_w, box), cutmix(label_w, box)
        probs_mix = cutmix(out["weak"].detach().float().softmax(1), box)
        keep_mix = (conf_mix >= cut) & valid_mix
        if s.strong_target == "strong":
            conf_s, target_s = fused_pseudo_labels(out["strong"], out.get("strong_pixel"), out, s)
            keep_s = (conf_s >= cut) & valid_mix
        else:
            target_s, keep_s = label_mix, keep_mix
        keep_w = (conf_w >= cut) & valid
        if s.pseudo_label_balance == "prediction":
            k = out["weak"].shape[1]
            keep_s = prediction_balanced_weights(target_s, keep_s, valid_mix, k)
            keep_mix = prediction_balanced_weights(label_mix, keep_mix, valid_mix, k)
            keep_w = prediction_balanced_weights(label_w, keep_w, valid, k)
    losses["loss_strong"] = masked_cross_entropy(out["strong"], target_s, keep_s, valid_mix.sum())
    losses["loss_kl"] = kl_consistency(out["strong"], probs_mix, keep_mix, valid_mix.sum())
    losses["loss_fp"] = masked_cross_entropy(out["weak_fp"], label_w, keep_w, valid.sum())
    ramp = sigmoid_ramp_up(progress, s.ramp_up)
    weights = {"loss_x": s.sup_weight, "loss_strong": ramp * s.strong_weight, "loss_kl": ramp * s.kl_weight,
               "loss_fp": ramp * s.fp_weight, "loss_proto": s.proto_weight, "loss_text": s.text_weight,
               "loss_align": s.align_weight}
    total = sum(weights[k] * v for k, v in losses.items()) / 2.0
    stats = {"threshold": threshold.detach().clone(),
             "mask_ratio": (keep_w > 0).float().sum().detach() / valid.sum().clamp_min(1)}
    return {"loss": total, **losses, **stats}, threshold


# --- Recipe: label space and data ------------------------------------------------------------------

def strong_augmentation() -> v2.Compose:
    """Strong photometric view (official): colour jitter (p 0.8), grayscale (p 0.2), Gaussian blur (p 0.5)."""
    return v2.Compose([v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8),
                       v2.RandomGrayscale(p=0.2),
                       v2.RandomApply([v2.GaussianBlur(kernel_size=13, sigma=(0.1, 2.0))], p=0.5)])


def weak_augmentation(crop_size: int, scale_of: str = "crop") -> v2.Compose:
    """Weak view: random scale and crop, flips and 90° rotations (geometric only). ``scale_of="crop"``: at the
    images' own pixel scale (zoom 1–1.41, as evaluation on whole images sees them; the crop's area is 0.5–1 of
    ``crop_size``²); ``"image"``: 0.5–1 of the image's area, resized to ``crop_size``."""
    return build_train_transforms(crop_size, scale=(0.5, 1.0), color_jitter=0.0, hed_sigma=0.0, scale_of=scale_of)


class SemiPairs(Dataset):
    """Items pairing a labelled crop with an unlabelled one, for the one-dataset Trainer.

    Item ``i`` holds labelled sample ``(i + offset) % n_labelled`` (``offset`` redrawn each epoch by
    :meth:`set_epoch`, so pairs change) and unlabelled sample ``i % n_unlabelled``: ``image`` and
    ``mask`` (weak view), and with unlabelled data ``weak``, ``strong`` (the weak crop with strong
    colour changes, geometrically aligned) and a CutMix ``box``. Without unlabelled records it is a
    labelled-only dataset (the supervised references).
    """

    def __init__(self, dataset: TissueDataset, labelled: Sequence[Record], unlabelled: Sequence[Record],
                 space: LabelSpace, crop_size: int, length: int | None = None, cutmix_prob: float = 0.5,
                 seed: int = 0, crop_scale_of: str = "crop"):
        if not labelled:
            raise ValueError("no labelled training image (fix: raise labelled_fraction / labelled_count)")
        self.dataset = dataset
        self.labelled = list(labelled)
        self.unlabelled = list(unlabelled)
        self.space = space
        self.crop_size = crop_size
        self.weak = weak_augmentation(crop_size, crop_scale_of)
        self.strong = strong_augmentation()
        self.cutmix_prob = cutmix_prob
        self.length = length or max(len(self.labelled), len(self.unlabelled))
        self.seed = seed
        self.offset = 0

    def set_epoch(self, epoch: int) -> None:
        self.offset = int(np.random.default_rng([self.seed, epoch]).integers(len(self.labelled)))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.labelled[(index + self.offset) % len(self.labelled)]
        sample = self.dataset.load(record)
        if sample.mask is None:
            raise DatasetError([Problem(record.image_path, "a labelled image has no mask",
                                        "add its mask, or leave it out of the labelled list")])
        image, mask = apply_pair(self.weak, sample.image, sample.mask)
        item = {"image": image.as_subclass(torch.Tensor),
                "mask": torch.from_numpy(self.space.mask_to_label(mask.as_subclass(torch.Tensor).numpy()))}
        if self.unlabelled:
            u = self.dataset.load(self.unlabelled[index % len(self.unlabelled)])
            weak, _ = apply_pair(self.weak, u.image)
            weak = weak.as_subclass(torch.Tensor)
            item["weak"] = weak
            item["strong"] = self.strong(weak.clone()).clamp(0, 1).contiguous()
            item["box"] = cutmix_box(self.crop_size, self.cutmix_prob)
        return item


def labelled_records(run: RunContext) -> tuple[list[Record], list[Record]]:
    """(labelled, unlabelled) training records: a seeded choice of whole cases, or the dataset's own list."""
    from tissueseg.data.splits import labelled_split

    cfg: SemiConfig = run.config
    train = run.splits["train"]
    with_mask = [r for r in train if r.mask_path is not None]
    # images of a split named "unlabelled" (the unannotated tiles of `tissueseg data tiles`) from training cases
    # join the unlabelled pool
    cases = {r.case_id for r in train}
    without = [r for r in train if r.mask_path is None] + [
        r for r in run.dataset.records if r.split == "unlabelled" and r.mask_path is None and r.case_id in cases]
    if cfg.labelled_fraction is not None or cfg.labelled_count is not None:
        if not with_mask:
            raise DatasetError([Problem(Path(cfg.data.path), "no training image has a mask to label",
                                        "add masks for the images to label")])
        count = None if cfg.labelled_count is None else min(cfg.labelled_count, len(with_mask))
        labelled, rest = labelled_split(with_mask, fraction=cfg.labelled_fraction, n_labelled=count, seed=cfg.seed)
        return labelled, rest + without
    if any("labelled" in r.extra for r in train):
        labelled = [r for r in with_mask if r.extra.get("labelled")]
        return labelled, [r for r in train if r not in labelled]
    raise ValueError(f"{cfg.data.path}: no labelled subset: the dataset has no splits/labelled.txt "
                     f"(fix: set labelled_fraction or labelled_count in the config)")


# --- Recipe: rows, networks, training ----------------------------------------------------------------

ROWS = ("supervised", "consistency", "unisemalign", "fully_supervised")
ROW_TITLES = {"supervised": "supervised only", "consistency": "consistency only",
              "unisemalign": "UniSemAlign", "fully_supervised": "fully supervised"}


def segmenter_spec(cfg: SemiConfig, num_classes: int) -> SegmenterSpec:
    return SegmenterSpec(cfg.backbone.name, num_classes, cfg.backbone.output_stride, cfg.train.decoder_channels)


def freeze_encoder(segmenter: DeepLabV3Plus) -> None:
    """Freeze the encoder (paper: frozen UNI). ViT token backbones keep their projections trainable."""
    backbone = segmenter.encoder.backbone
    if hasattr(backbone, "set_frozen"):
        backbone.set_frozen(True)
    else:
        for p in segmenter.encoder.parameters():
            p.requires_grad = False


def keep_frozen_in_eval(segmenter: DeepLabV3Plus, frozen: bool) -> None:
    """A frozen CNN encoder keeps its BatchNorm statistics (eval mode) while the rest trains."""
    if frozen and not hasattr(segmenter.encoder.backbone, "set_frozen"):
        segmenter.encoder.eval()


def class_names_for_text(cfg: SemiConfig, space: LabelSpace) -> list[str]:
    names = cfg.text.class_names or space.names
    if len(names) != space.num_classes:
        raise ValueError(f"text.class_names has {len(names)} names but the model predicts {space.num_classes} "
                         f"classes ({', '.join(space.names)})")
    return list(names)


def text_spec(cfg: SemiConfig, space: LabelSpace, out_dir: Path | None) -> TextSpec:
    t = cfg.text
    return TextSpec(class_names_for_text(cfg, space), t.encoder, t.clip_model, t.clip_weights, t.n_ctx,
                    t.learnable_context, t.prompt_template, t.minilm_path,
                    cache_file=None if out_dir is None else out_dir / "text_embeddings.pt")


def build_network(cfg: SemiConfig, space: LabelSpace, row: str, settings: UniSemAlignSettings | None = None,
                  out_dir: Path | None = None) -> nn.Module:
    """The row's network: a DeepLabV3+ (references) or a :class:`UniSemAlignNet` around one."""
    spec = segmenter_spec(cfg, space.num_classes)
    if row not in ("supervised", "fully_supervised"):
        s = settings or cfg.unisemalign
        use_branches = row == "unisemalign"
        spec = UniSemAlignSpec(spec, text_spec(cfg, space, out_dir) if use_branches and s.text else None,
                               use_branches and s.prototypes, s.embed_dim, s.fp_dropout, s.threshold_init,
                               s.clean_bn_statistics)
    model = create_model(spec, cfg.backbone.pretrained)
    segmenter_of(model).decoder.aspp.set_dropout(cfg.train.aspp_dropout)
    if cfg.backbone.freeze:
        freeze_encoder(segmenter_of(model))
    return model


def segmenter_of(model: nn.Module) -> DeepLabV3Plus:
    return getattr(model, "segmenter", model)


def parameter_groups(model: nn.Module, head_lr_mult: float) -> list[dict]:
    """Encoder at the base LR; everything else (decoder, head, projection, prototypes, text) ×``head_lr_mult``."""
    encoder = {id(p) for p in segmenter_of(model).encoder.parameters()}
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for _, p in trainable if id(p) in encoder], "lr_mult": 1.0},
            {"params": [p for _, p in trainable if id(p) not in encoder], "lr_mult": head_lr_mult}]


def semi_space(run: RunContext) -> LabelSpace:
    """Every class of the dataset (or background vs foreground with ``binary``): what the rows predict."""
    return LabelSpace.every_class(run.info, run.config.binary)


def semi_step(settings: UniSemAlignSettings, frozen: bool, progress: Callable[[], float]) -> StepFn:
    """One UniSemAlign step: weak/strong/feature-perturbed passes, every loss, and the EMA threshold update;
    with a teacher on the net, its weak-view logits make the pseudo labels (a mean teacher is updated first).

    ``progress()`` is the fraction of training done (for the ramp-up); ``frozen`` keeps a frozen
    encoder's BatchNorm in eval mode.
    """
    def step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        inner = unwrap(net)
        keep_frozen_in_eval(inner.segmenter, frozen)
        if inner.teacher is not None and settings.teacher == "mean":
            inner.update_teacher(settings.teacher_momentum)
        strong = cutmix(batch["strong"], batch["box"].bool())
        out = net(batch["image"], batch["weak"], strong)
        if inner.teacher is not None:  # the weak logits only make targets: the teacher's replace them
            inner.teacher.eval()  # whatever mode net.train() left it in
            with torch.no_grad():
                out["weak"] = inner.teacher(batch["weak"])
        losses, threshold = unisemalign_losses(out, batch, inner.threshold, settings, progress())
        inner.threshold.copy_(threshold)
        return losses
    return step


def train_row(run: RunContext, row: str, name: str | None = None,
              settings: UniSemAlignSettings | None = None) -> DeepLabV3Plus:
    """Train one row (resuming from ``out_dir/checkpoints/<name>_last.pt``); returns its best segmenter.

    ``supervised`` / ``fully_supervised``: DeepLabV3+ with CE on the labelled / all training masks
    (as many iterations as the semi-supervised rows). ``consistency``: the weak/strong pipeline
    without prototype and text branches. ``unisemalign``: everything (``settings`` for ablations). With
    ``settings.warm_start`` both start from the ``supervised`` row's best weights (trained first if missing);
    with ``settings.teacher`` "mean" / "validated" their pseudo labels come from a mean teacher of the segmenter
    or from its best weights on validation so far.
    """
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r} (fix: one of {', '.join(ROWS)})")
    cfg: SemiConfig = run.config
    name = name or row
    settings = settings or cfg.unisemalign
    space = semi_space(run)
    labelled, unlabelled = labelled_records(run)
    run.save_json(run.out_dir / "labelled_split.json", {"labelled": [str(r.image_path) for r in labelled],
                                                     "unlabelled": [str(r.image_path) for r in unlabelled]})
    length = max(len(labelled), len(unlabelled))
    if row == "fully_supervised":
        labelled = [r for r in labelled + unlabelled if r.mask_path is not None]
        unlabelled, length = [], max(length, len(labelled))
    elif row == "supervised":
        unlabelled = []
    elif not unlabelled:
        raise ValueError(f"row '{row}' needs unlabelled images but every training image is labelled "
                         f"(fix: lower labelled_fraction / labelled_count)")
    train_set = SemiPairs(run.dataset, labelled, unlabelled, space, cfg.data.crop_size, length,
                          settings.cutmix_prob, cfg.seed, settings.crop_scale_of)
    model = build_network(cfg, space, row, settings, run.out_dir)
    warm = settings.warm_start and row in ("consistency", "unisemalign")
    if warm:
        supervised = run.out_dir / "checkpoints" / "supervised_best.pt"
        if not supervised.exists():
            train_row(run, "supervised")
        load_best(segmenter_of(model), supervised, run.device)
    if row in ("consistency", "unisemalign") and settings.teacher != "student":
        model.start_teacher()
    log = JsonLog(run.out_dir / "log.jsonl")
    text = getattr(model, "text", None)
    log.write("row", stage=name, row=row, labelled=len(labelled), unlabelled=len(unlabelled), warm_start=warm,
              text_encoder=text.name if text is not None else None,
              prototypes=getattr(model, "prototypes", None) is not None)
    if text is not None and dist_utils.is_main_process():
        run.console.print(f"[{name}] text encoder: {text.name}")
    trainer = Trainer(model, TrainConfig.of(cfg, cfg.train), run.out_dir, name=name, console=run.console,
                      param_groups=parameter_groups(model, cfg.train.head_lr_mult))
    frozen = cfg.backbone.freeze
    epoch_now = {"epoch": 0}

    def on_epoch_start(net: nn.Module, epoch: int) -> None:
        train_set.set_epoch(epoch)
        epoch_now["epoch"] = epoch

    def supervised_step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        keep_frozen_in_eval(segmenter_of(unwrap(net)), frozen)
        return {"loss": F.cross_entropy(net(batch["image"]).float(), batch["mask"], ignore_index=IGNORE)}

    def validate(net: nn.Module) -> dict[str, float]:
        scores = evaluate_segmenter(run, segmenter_of(net), run.splits["val"], objects=False)
        return {f"val_{k}": float(scores[k]) for k in ("mdice", "mjaccard", "dice_fg", "jaccard_fg")}

    select = f"val_{cfg.evaluation.select}"

    def evaluate(net: nn.Module) -> dict[str, float]:
        t = cfg.train
        epoch = epoch_now["epoch"]
        if (epoch + 1) % max(t.eval_every, 1) and epoch + 1 < t.epochs:
            return {}
        metrics = validate(net)
        if getattr(net, "teacher", None) is not None and settings.teacher == "validated" and (
                trainer.best is None or metrics[select] > trainer.best):
            net.update_teacher(0.0)  # the new best weights make the pseudo labels from now on
        return metrics

    step = supervised_step if row in ("supervised", "fully_supervised") else \
        semi_step(settings, frozen, lambda: trainer.progress)
    trainer.fit(train_set, step, evaluate=evaluate, select=select,
                on_epoch_start=on_epoch_start, evaluate_start=validate if warm else None)
    return load_row(run, trainer.best_path)


def load_row(run: RunContext, path: Path) -> DeepLabV3Plus:
    """The DeepLabV3+ of a row's checkpoint (``segmenter.`` keys of a UniSemAlignNet, or a bare one)."""
    segmenter = create_model(segmenter_spec(run.config, semi_space(run).num_classes))
    return load_best(segmenter, path, run.device, submodule="segmenter",
                     fix="run `tissueseg semi train CONFIG.yaml` first")


# --- Recipe: evaluation, export ----------------------------------------------------------------------

def object_metrics_enabled(run: RunContext, space: LabelSpace) -> bool:
    flag = run.config.evaluation.object_metrics
    if flag is None:
        flag = run.info.format in ("glas", "crag")
    return bool(flag) and space.num_classes == 2 and space.background is not None


@torch.no_grad()
def evaluate_segmenter(run: RunContext, segmenter: nn.Module, records: Sequence[Record], objects: bool | None = None,
                       overlay_dir: Path | None = None, n_overlays: int = 0, batch_size: int = 4) -> dict[str, Any]:
    """Sliding-window prediction (averaged softmax) on full images, scored in the UniSemAlign convention.

    Returns mDice / mJaccard over all classes (background included, official ``evaluate.py``),
    foreground-only Dice / Jaccard (every class but background), per-class scores and, for binary
    gland tasks, GlaS object-level F1, object Dice and object Hausdorff (mean over images).
    """
    cfg: SemiConfig = run.config
    e = cfg.evaluation
    space = semi_space(run)
    objects = object_metrics_enabled(run, space) if objects is None else objects and space.num_classes == 2
    meter = ConfusionMeter(space.num_classes, convention="unisemalign",
                           background_index=space.background if space.background is not None else 0,
                           ignore_index=IGNORE)
    object_sums = torch.zeros(4, dtype=torch.float64)  # f1, dice, hausdorff, images
    segmenter.eval()

    def predict(images: torch.Tensor) -> torch.Tensor:
        with autocast(run.device, cfg.amp):
            probs = predict_probabilities(segmenter, images, window=e.window, stride=e.stride, flip=e.flip)
        return probs.argmax(1)

    def add_objects(sample: Sample, pred: np.ndarray, gt: np.ndarray) -> None:
        nonlocal object_sums
        gt_instances = sample.instances if sample.instances is not None else instances_from_binary(gt == 1)
        m = glas_object_metrics(instances_from_binary(pred == 1, e.object_min_size), gt_instances)
        object_sums += torch.tensor([m["f1"], m["object_dice"], m["object_hausdorff"], 1.0], dtype=torch.float64)

    score_records(predict, run.dataset, records, run.device, meter, batch_size, truth=space.mask_to_label,
                  names=space.names, palette=space.palette, overlay_dir=overlay_dir, n_overlays=n_overlays,
                  on_scored=add_objects if objects else None)
    s = meter.compute()
    result: dict[str, Any] = {
        "mdice": s["mdice"], "mjaccard": s["mjaccard"], "dice_fg": s["dice_fg"], "jaccard_fg": s["jaccard_fg"],
        "pixel_accuracy": s["pixel_accuracy"], "images": len(records),
        "dice": dict(zip(space.names, s["dice"])), "iou": dict(zip(space.names, s["iou"]))}
    if objects:
        object_sums = dist_utils.all_reduce_sum(object_sums)
        n = max(float(object_sums[3]), 1.0)
        result.update(object_f1=float(object_sums[0]) / n, object_dice=float(object_sums[1]) / n,
                      object_hausdorff=float(object_sums[2]) / n)
    return result


def export_model(run: RunContext, segmenter: nn.Module, path: Path | None = None, method: str = "unisemalign") -> Path:
    """Write ``model.pt`` (the DeepLabV3+ part; the fused heads only shape training and pseudo labels)."""
    cfg: SemiConfig = run.config
    space = semi_space(run)
    meta = ModelMeta(method=method, classes=list(space.names), palette=[tuple(c) for c in space.palette],
                     label_to_mask=list(range(space.num_classes)), background_index=space.background,
                     window=cfg.evaluation.window, train_crop=cfg.data.crop_size, mpp=cfg.data.mpp,
                     extra={"binary": cfg.binary, "inference": "DeepLabV3+ logits (fused heads are training-only)"})
    return save_bundle(path or run.out_dir / "model.pt", segmenter, segmenter_spec(cfg, space.num_classes), meta)


def trained_rows(run: RunContext) -> list[str]:
    return [row for row in ROWS if (run.out_dir / "checkpoints" / f"{row}_best.pt").exists()]


def evaluate_rows(run: RunContext, rows: Sequence[str] | None = None, n_overlays: int | None = None) -> dict:
    """Test scores of every trained row (default: all found in the run folder); exports the configured method."""
    cfg: SemiConfig = run.config
    rows = list(rows) if rows is not None else trained_rows(run)
    if not rows:
        raise FileNotFoundError(f"{run.out_dir / 'checkpoints'}: no trained row in this run folder "
                                f"(fix: run `tissueseg semi train CONFIG.yaml` first)")
    results = _read_json(run.out_dir / "metrics.json")
    n_overlays = cfg.evaluation.overlays if n_overlays is None else n_overlays
    for row in rows:
        segmenter = load_row(run, run.out_dir / "checkpoints" / f"{row}_best.pt")
        if row == cfg.method:
            export_model(run, segmenter, method=row)
        entry = results.get(row, {})
        entry["test"] = evaluate_segmenter(run, segmenter, run.splits["test"],
                                           overlay_dir=run.out_dir / "overlays" / row, n_overlays=n_overlays)
        results[row] = entry
    run.save_json(run.out_dir / "metrics.json", results)
    return results


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        return {}


def run_semi(run: RunContext, rows: Sequence[str] | None = None, evaluate: bool = True) -> dict:
    """Train ``rows`` (default: the configured method) one after the other, then score them on the test split.

    Every row resumes from the run folder; results (with training time) go to ``metrics.json``.
    """
    rows = list(rows) if rows is not None else [run.config.method]
    results = _read_json(run.out_dir / "metrics.json")
    for row in rows:
        start = time.perf_counter()
        train_row(run, row)
        entry = results.get(row, {})
        entry.setdefault("train_seconds", round(time.perf_counter() - start, 1))
        results[row] = entry
        run.save_json(run.out_dir / "metrics.json", results)
    return evaluate_rows(run, rows) if evaluate else results


METHOD = Method(
    "unisemalign", "semi", lambda run, references=False: run_semi(run, [r for r in ROWS if references
                                                                          or r == run.config.method]),
    stages={"train": lambda run, rows=None: run_semi(run, rows, evaluate=False), "evaluate": evaluate_rows},
    rows=tuple(ResultRow(row, ROW_TITLES[row], 10 * (i + 1), note_labelled=row == "supervised")
               for i, row in enumerate(ROWS)),
    evaluate_key=lambda run: run.config.method)
