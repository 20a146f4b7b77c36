"""MLPS: Multi-Layer Pseudo-Supervision (Han et al., Medical Image Analysis 2022; code ChuHan89/WSSS-Tissue).

Stage 1 trains a patch classifier with Progressive Dropout Attention (PDA, Sec. 3.1); multi-layer
Grad-CAM turns it into pseudo masks, with white background detected from the image (Sec. 3.2);
stage 2 trains DeepLabV3+ on the pseudo masks of three depths (Sec. 3.3) and is gated at test time
by the stage-1 classification (Sec. 3.4). Only what the paper defines lives here; the training
loop, data plumbing and evaluation are in :mod:`tissueseg.engine`.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tissueseg.config import WSSSConfig
from tissueseg.data.background import white_background
from tissueseg.data.io import read_label_image, write_png
from tissueseg.data.transforms import build_train_transforms
from tissueseg.engine.data import IGNORE, SegmentationSamples, batches_by_size, images_to_tensor
from tissueseg.engine.evaluate import PredictFn, evaluate_split, meter_for, summarize_scores
from tissueseg.engine.losses import masked_cross_entropy
from tissueseg.engine.run import RunContext
from tissueseg.engine.trainer import StepFn, TrainConfig, Trainer, load_best
from tissueseg.methods.base import Method, ResultRow, wsss_stages
from tissueseg.models.bundle import ClassifierSpec, ModelMeta, SegmenterSpec, create_model, save_bundle
from tissueseg.models.classifier import PDAClassifier
from tissueseg.models.deeplab import DeepLabV3Plus
from tissueseg.models.device import autocast
from tissueseg.models.inference import predict_probabilities, sliding_window

# --- Stage 1: classification with Progressive Dropout Attention (the network: tissueseg.models.classifier) --

def pda_gamma(epoch: int, start_epoch: int = 3, decay: float = 0.985, floor: float = 0.65,
              origin: int | None = None) -> float | None:
    """γ for ``epoch`` (0-based): None (PDA off) before ``start_epoch``, then decay^(epoch − origin), ≥ ``floor``.

    The paper decays by 0.985 per epoch; the official code uses 0.98 and counts from epoch 0
    (``origin=0``); ``origin=None`` counts from ``start_epoch`` (γ = 1 at the first PDA epoch).
    """
    if epoch < start_epoch:
        return None
    return max(floor, decay ** (epoch - (start_epoch if origin is None else origin)))


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss on patch-level labels (paper Eq. 4)."""
    return F.multilabel_soft_margin_loss(logits.float(), labels.float())


# --- Pseudo masks ----------------------------------------------------------------------------------

def multi_layer_grad_cam(model: PDAClassifier, images: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
    """Grad-CAM (Selvaraju et al. 2017) of every class at several backbone depths.

    For layer l and class k: weights α = spatial mean of ∂y_k/∂A_l, CAM = ReLU(Σ_c α_c A_l,c),
    upsampled to the image size. Returns one (N, K, H, W) tensor per entry of ``layers``.
    Samples are independent in eval mode, so the batch is handled in one backward per class.
    """
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        images = images.detach().requires_grad_(False)
        logits, feats = model.forward_features(images)
        chosen = [feats[i] for i in layers]
        per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
        for k in range(logits.shape[1]):
            grads = torch.autograd.grad(logits[:, k].sum(), chosen, retain_graph=k < logits.shape[1] - 1)
            for slot, (feat, grad) in enumerate(zip(chosen, grads)):
                alpha = grad.float().mean(dim=(2, 3), keepdim=True)
                per_layer[slot].append(F.relu((alpha * feat.float()).sum(dim=1)))
    model.train(was_training)
    size = images.shape[-2:]
    return [F.interpolate(torch.stack(maps, 1).detach(), size=size, mode="bilinear", align_corners=False)
            for maps in per_layer]


def normalize_cams(cams: torch.Tensor, labels: torch.Tensor, mode: str = "global") -> torch.Tensor:
    """Keep only the classes in the patch label and scale CAMs to [0, 1].

    ``global`` (official code): one min–max over all kept classes of an image; ``per_class``: each
    class by its own maximum.
    """
    keep = labels[:, :, None, None].to(cams.dtype)
    cams = cams * keep
    if mode == "global":
        lo = cams.amin(dim=(1, 2, 3), keepdim=True)
        hi = cams.amax(dim=(1, 2, 3), keepdim=True)
        return (cams - lo) / (hi - lo).clamp_min(1e-5) * keep
    if mode == "per_class":
        return cams / cams.amax(dim=(2, 3), keepdim=True).clamp_min(1e-5)
    raise ValueError(f"unknown CAM normalisation {mode!r} (fix: use 'global' or 'per_class')")


def pseudo_mask(cams: torch.Tensor, labels: torch.Tensor, background: torch.Tensor | None,
                background_index: int | None) -> torch.Tensor:
    """Class map from normalised CAMs: argmax over the labelled classes; background where detected.

    Parameters
    ----------
    cams : (N, K, H, W) normalised CAMs.
    labels : (N, K) patch-level labels; classes outside the label can never win.
    background : (N, H, W) bool white-background mask, or None (BCSS-style data).
    background_index : index written for background pixels.
    """
    scores = cams.masked_fill(labels[:, :, None, None] <= 0, -1.0)
    mask = scores.argmax(dim=1)
    if background is not None and background_index is not None:
        mask = mask.masked_fill(background.to(mask.device), background_index)
    return mask


# --- Stage 2: multi-layer pseudo-supervision -------------------------------------------------------

LAYER_WEIGHTS = (0.2, 0.2, 0.6)


def multi_layer_pseudo_supervision_loss(logits: torch.Tensor, pseudo_masks: Sequence[torch.Tensor],
                                        weights: Sequence[float] = LAYER_WEIGHTS,
                                        ignore_index: int = -100) -> torch.Tensor:
    """L = Σ_l λ_l · CE(logits, PM_l) with λ = 0.2, 0.2, 0.6 shallow → deep (paper Eq. 7).

    Background pixels of the pseudo masks are ignored, as in the official code.
    """
    if len(pseudo_masks) != len(weights):
        raise ValueError(f"{len(pseudo_masks)} pseudo masks but {len(weights)} layer weights")
    logits = logits.float()
    return sum(w * masked_cross_entropy(logits, pm, ignore_index=ignore_index)
               for w, pm in zip(weights, pseudo_masks))


def classification_gate(probabilities: torch.Tensor, class_probabilities: torch.Tensor,
                        threshold: float = 0.1) -> torch.Tensor:
    """Zero class k's score map where the stage-1 probability of k is ≤ ``threshold`` (Sec. 3.4)."""
    keep = (class_probabilities > threshold).to(probabilities.dtype)
    return probabilities * keep[:, :, None, None]


# --- Training recipe (paper Sec. 4.2), on the shared engine -----------------------------------------

def classifier_spec(cfg: WSSSConfig, num_classes: int) -> ClassifierSpec:
    return ClassifierSpec(cfg.backbone.name, num_classes, cfg.backbone.output_stride, cfg.segmenter.gate_threshold)


def segmenter_spec(cfg: WSSSConfig, num_classes: int) -> SegmenterSpec:
    return SegmenterSpec(cfg.backbone.name, num_classes, cfg.backbone.output_stride, cfg.segmenter.decoder_channels)


def build_classifier(cfg: WSSSConfig, num_classes: int) -> PDAClassifier:
    """Stage-1 network on the configured registry encoder."""
    return create_model(classifier_spec(cfg, num_classes), cfg.backbone.pretrained)


def build_segmenter(cfg: WSSSConfig, num_classes: int) -> DeepLabV3Plus:
    """Stage-2 DeepLabV3+ on the configured registry encoder."""
    return create_model(segmenter_spec(cfg, num_classes), cfg.backbone.pretrained)


CamLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def classifier_samples(run: RunContext) -> SegmentationSamples:
    """Stage-1 training items: augmented crops of the training split with their image labels."""
    cfg = run.config
    return SegmentationSamples(run.dataset, run.splits["train"],
                               build_train_transforms(cfg.data.crop_size, scale=tuple(cfg.classifier.crop_scale)),
                               run.space)


def segmenter_samples(run: RunContext, masks: Callable[[int], list[np.ndarray]] | None) -> SegmentationSamples:
    """Stage-2 training items: augmented crops with ``masks(index)`` (pseudo masks), or the ground truth when None."""
    return SegmentationSamples(run.dataset, run.splits["train"], build_train_transforms(run.config.data.crop_size),
                               run.space, use_mask=masks is None, extra_masks=masks)


def classifier_step(cam_losses: CamLossFn | None = None, classification_weight: float = 1.0) -> StepFn:
    """Stage-1 step: L_cls on the image labels, plus ``cam_losses`` on the CAM head's output when given.

    The total is ``classification_weight``·L_cls + Σ terms (PLIMSeg's language–image matching).
    """
    def step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        if cam_losses is None:
            return {"loss": classification_loss(net(batch["image"]), batch["labels"])}
        logits, cams = net(batch["image"], with_cams=True)
        terms = cam_losses(batch["image"], cams, batch["labels"])
        cls = classification_loss(logits, batch["labels"])
        return {"loss": classification_weight * cls + sum(terms.values()), "cls": cls, **terms}
    return step


def train_classifier(run: RunContext, pda: bool = True, name: str = "classifier",
                     cam_losses: CamLossFn | None = None, classification_weight: float = 1.0,
                     init: Path | None = None, lr_scale: float = 1.0) -> PDAClassifier:
    """Stage 1: multi-label classification, with PDA from epoch E0 (``pda=False``: plain CAM baseline).

    ``cam_losses(images, cam_logits, labels)`` adds weighted loss terms on the CAM head's output
    (PLIMSeg's language–image matching); the total is ``classification_weight``·L_cls + Σ terms.
    ``init``: a trained classifier checkpoint of the same network to start from (instead of the
    backbone's init), trained on at ``classifier.lr × lr_scale``.
    """
    cfg = run.config
    c = cfg.classifier
    model = build_classifier(cfg, run.space.num_classes)
    if init is not None:
        load_classifier_weights(model, Path(init))
    trainer = Trainer(model, dataclasses.replace(TrainConfig.of(cfg, c), lr=c.lr * lr_scale), run.out_dir,
                      name=name, console=run.console, param_groups=model.parameter_groups(c.head_lr_mult))
    train_set = classifier_samples(run)
    epoch_now = {"epoch": 0}

    def set_gamma(net: nn.Module, epoch: int) -> None:
        net.gamma = pda_gamma(epoch, c.pda_start_epoch, c.pda_decay, c.pda_floor,
                              None if c.pda_decay_origin == "start" else 0) if pda else None
        epoch_now["epoch"] = epoch

    def evaluate(net: nn.Module) -> dict[str, float]:
        # "epochs_trained" grows every epoch, so selecting on it keeps the last epoch (official code)
        return {"val_f1": classification_f1(net, run, run.splits["val"]),
                "epochs_trained": float(epoch_now["epoch"] + 1)}

    select = "val_f1" if c.select == "val_f1" else "epochs_trained"
    trainer.fit(train_set, classifier_step(cam_losses, classification_weight), evaluate=evaluate, select=select,
                on_epoch_start=set_gamma)
    return load_best(model, trainer.best_path, trainer.device)


def load_classifier_weights(model: PDAClassifier, path: Path) -> None:
    """Load a stage-1 checkpoint (``<run>/checkpoints/<name>_best.pt``) into ``model``; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no classifier checkpoint to start from (fix: train stage 1 first, "
                                f"e.g. `tissueseg wsss train-cls CONFIG.yaml`, or point to its *_best.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)["model"]
        model.load_state_dict(state)
    except (KeyError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: not a stage-1 checkpoint of this classifier (backbone, output stride and "
                         f"classes must match the run's) ({str(exc).splitlines()[0]})") from exc


@torch.no_grad()
def classification_f1(model: nn.Module, run: RunContext, records: Sequence) -> float:
    """Macro F1 of patch-level predictions (probability > 0.5) against the labels (or mask-derived labels).

    ``model`` returns logits whose first K columns are the label classes (extra columns are ignored).
    """
    model.eval()
    tp = fp = fn = 0.0
    k = run.space.num_classes
    for _, samples in batches_by_size(run.dataset, records, 16):
        probs = torch.sigmoid(model(images_to_tensor(samples, run.device))[:, :k].float()).cpu()
        labels = torch.from_numpy(np.stack([run.space.sample_labels(s) for s in samples]))
        pred = (probs > 0.5).float()
        tp += (pred * labels).sum(0)
        fp += (pred * (1 - labels)).sum(0)
        fn += ((1 - pred) * labels).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    return float(f1.mean())


CamFn = Callable[[torch.Tensor], list[torch.Tensor]]


def grad_cam_layers(model: PDAClassifier, layers: Sequence[int]) -> CamFn:
    """Multi-layer Grad-CAM at ``layers`` (MLPS pseudo masks)."""
    return lambda images: multi_layer_grad_cam(model, images, layers)


def plain_cam(model: PDAClassifier) -> CamFn:
    """One-layer CAM of the deepest map, upsampled (the CAM baseline)."""
    def cams(images: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return [F.interpolate(model.cam(images), size=images.shape[-2:], mode="bilinear", align_corners=False)]
    return cams


def cams_to_masks(run: RunContext, cams: list[torch.Tensor], labels: torch.Tensor, images: torch.Tensor
                  ) -> list[torch.Tensor]:
    """Normalised CAMs → class maps in the dataset's mask indices, white background added when on."""
    mode = run.config.pseudo_masks.normalization
    return [finish_map(run, pseudo_mask(normalize_cams(c, labels, mode), labels, None, None), images) for c in cams]


def white_background_batch(run: RunContext, images: torch.Tensor) -> torch.Tensor:
    """:func:`white_background` for a float batch → (N, H, W) bool tensor on the images' device."""
    d = run.config.data
    rgb = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    masks = np.stack([white_background(im, d.white_threshold, d.min_background_size) for im in rgb])
    return torch.from_numpy(masks).to(images.device)


def make_pseudo_masks(run: RunContext, cam_fn: CamFn, folder: str, n_layers: int) -> dict:
    """Write one palette PNG per training patch and layer to ``out/<folder>/layer<l>/``; score them.

    Patches whose PNGs all exist are read back instead of recomputed, so an interrupted run resumes.
    Returns per-layer mIoU against ground truth where training masks exist (JSON report alongside).
    """
    info = run.info
    root = run.out_dir / folder
    meters = [meter_for(info) for _ in range(n_layers)]
    records = run.splits["train"]
    scored = 0
    with run.progress(f"pseudo masks ({folder})", len(records)) as advance:
        for _, samples in batches_by_size(run.dataset, records, 16):
            paths = [[root / f"layer{l}" / f"{Path(s.path).stem}.png" for l in range(n_layers)] for s in samples]
            if all(p.exists() for row in paths for p in row):
                maps = [np.stack([read_label_image(row[l]) for row in paths]) for l in range(n_layers)]
            else:
                images = images_to_tensor(samples, run.device)
                labels = torch.from_numpy(np.stack([run.space.sample_labels(s) for s in samples])).to(run.device)
                maps = [m.cpu().numpy() for m in cams_to_masks(run, cam_fn(images), labels, images)]
                for l in range(n_layers):
                    for row, pm in zip(paths, maps[l]):
                        write_png(row[l], pm, palette=info.palette)
            for l in range(n_layers):
                for s, pm in zip(samples, maps[l]):
                    if s.mask is not None:
                        meters[l].update(pm, s.mask)
            scored += sum(s.mask is not None for s in samples)
            advance(len(samples))
    report = {"folder": folder, "patches": len(records), "scored_against_ground_truth": scored,
              "layers": [summarize_scores(m, info) if scored else None for m in meters]}
    run.save_json(root / "report.json", report)
    return report


def pseudo_mask_reader(run: RunContext, folder: str, n_layers: int) -> Callable[[int], list[np.ndarray]]:
    """Index into the training records → that patch's pseudo masks (shallow → deep)."""
    root = run.out_dir / folder
    records = run.splits["train"]

    def read(index: int) -> list[np.ndarray]:
        stem = Path(records[index].image_path).stem
        return [read_label_image(root / f"layer{l}" / f"{stem}.png").astype(np.int64) for l in range(n_layers)]
    return read


def segmenter_step(weights: Sequence[float]) -> StepFn:
    """Stage-2 step: Σ λ_l CE against the masks of ``batch["masks"]`` (one per weight)."""
    def step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        logits = net(batch["image"])
        return {"loss": multi_layer_pseudo_supervision_loss(logits, list(batch["masks"].unbind(1)), weights,
                                                            ignore_index=IGNORE)}
    return step


def train_segmenter(run: RunContext, masks: Callable[[int], list[np.ndarray]] | None, weights: Sequence[float],
                    name: str, classifier: PDAClassifier | None) -> DeepLabV3Plus:
    """Stage 2: DeepLabV3+ on the pseudo masks (Σ λ_l CE), or on ground truth when ``masks`` is None."""
    cfg = run.config
    s = cfg.segmenter
    model = build_segmenter(cfg, run.space.num_classes)
    trainer = Trainer(model, TrainConfig.of(cfg, s), run.out_dir, name=name, console=run.console,
                      param_groups=model.parameter_groups(s.head_lr_mult))
    train_set = segmenter_samples(run, masks)

    def evaluate(net: nn.Module) -> dict[str, float]:
        scores = evaluate_split(segmenter_predictor(run, net, classifier), run.dataset, run.splits["val"],
                                run.device)
        return {"val_miou": scores["miou"]}

    trainer.fit(train_set, segmenter_step(weights), evaluate=evaluate, select="val_miou")
    return load_best(model, trainer.best_path, trainer.device)


def segmenter_predictor(run: RunContext, segmenter: nn.Module, classifier: PDAClassifier | None) -> PredictFn:
    """Stage-2 prediction: softmax (sliding window / flip TTA), classification gate, background detection.

    The gate classifies the whole image (a training-sized patch in the papers' data sets). Gating each
    window by its own classification was measured on WSSS4LUAD and lost 5–13 mIoU to this: a weak
    classifier drops true classes from single windows.
    """
    s = run.config.segmenter
    crop = run.config.data.crop_size

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        segmenter.eval()
        with autocast(run.device, run.config.amp):
            probs = predict_probabilities(segmenter, images, window=crop, flip=s.flip_tta)
            if classifier is not None:
                classifier.eval()
                class_probs = torch.sigmoid(classifier(images).float())
                probs = classification_gate(probs, class_probs, s.gate_threshold)
        return finish_map(run, probs.argmax(1), images)
    return predict


def cam_predictor(run: RunContext, classifier: PDAClassifier) -> PredictFn:
    """CAM baseline at test time: plain CAMs of the classes whose probability passes the gate, normalised
    as the pseudo masks are, on windows of the training crop size averaged where they overlap (the
    classifier only ever saw crops of that size; a class absent from a window scores 0 there)."""
    threshold = run.config.segmenter.gate_threshold
    mode = run.config.pseudo_masks.normalization
    crop = run.config.data.crop_size

    def scores(images: torch.Tensor) -> torch.Tensor:
        labels = (torch.sigmoid(classifier(images).float()) > threshold).float()
        (cams,) = plain_cam(classifier)(images)
        return normalize_cams(cams.float(), labels, mode) * labels[:, :, None, None]

    @torch.no_grad()
    def predict(images: torch.Tensor) -> torch.Tensor:
        classifier.eval()
        return finish_map(run, sliding_window(scores, images, window=crop).argmax(1), images)
    return predict


def finish_map(run: RunContext, label_map: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Label-space argmax → mask indices, with white background where detection is on."""
    mask = run.space.label_to_mask(label_map)
    if run.background_detection:
        mask = mask.masked_fill(white_background_batch(run, images), run.info.background_index)
    return mask


# --- Stages as the CLI runs them -------------------------------------------------------------------

PSEUDO_FOLDER = "pseudo_masks"
CAM_FOLDER = "cam_masks"


def load_stage(run: RunContext, model: nn.Module, name: str, command: str) -> nn.Module:
    """Load ``<name>_best.pt`` from the run folder, or say which command produces it."""
    return load_best(model, run.out_dir / "checkpoints" / f"{name}_best.pt", run.device, what=name,
                     fix=f"run `tissueseg wsss {command} CONFIG.yaml` first")


def load_classifier(run: RunContext, name: str = "classifier") -> PDAClassifier:
    return load_stage(run, build_classifier(run.config, run.space.num_classes), name, "train-cls")


def train_stage(run: RunContext) -> PDAClassifier:
    """``wsss train-cls``: stage 1, with PDA unless the config switches it off."""
    return train_classifier(run, pda=run.config.classifier.pda)


def pseudo_masks_stage(run: RunContext) -> dict:
    classifier = load_classifier(run)
    layers = run.config.pseudo_masks.layers
    return make_pseudo_masks(run, grad_cam_layers(classifier, layers), PSEUDO_FOLDER, len(layers))


def train_segmenter_stage(run: RunContext) -> DeepLabV3Plus:
    n_layers = len(run.config.pseudo_masks.layers)
    if not (run.out_dir / PSEUDO_FOLDER / "report.json").exists():
        raise FileNotFoundError(f"{run.out_dir / PSEUDO_FOLDER}: no pseudo masks in this run folder "
                                f"(fix: run `tissueseg wsss pseudo-masks CONFIG.yaml` first)")
    return train_segmenter(run, pseudo_mask_reader(run, PSEUDO_FOLDER, n_layers), run.config.segmenter.layer_weights,
                           "segmenter", load_classifier(run))


def evaluate_stage(run: RunContext, n_overlays: int = 8) -> dict:
    """Test-split scores of the trained MLPS model (gated by the stage-1 classifier); overlays written.

    Also exports ``model.pt``, the self-contained model that ``tissueseg predict`` runs.
    """
    classifier = load_classifier(run)
    segmenter = load_stage(run, build_segmenter(run.config, run.space.num_classes), "segmenter", "train-seg")
    export_model(run, segmenter, classifier)
    return evaluate_split(segmenter_predictor(run, segmenter, classifier), run.dataset, run.splits["test"],
                          run.device, overlay_dir=run.out_dir / "overlays" / "mlps", n_overlays=n_overlays)


def export_model(run: RunContext, segmenter: nn.Module, classifier: nn.Module, method: str = "mlps") -> Path:
    """Write ``out_dir/model.pt``: segmenter, gate classifier and what outputs need (classes, palette)."""
    d = run.config.data
    info = run.info
    meta = ModelMeta(method=method, classes=list(info.classes), palette=[tuple(c) for c in info.palette],
                     label_to_mask=[int(i) for i in run.space.to_mask], background_index=info.background_index,
                     white_background={"threshold": d.white_threshold, "min_size": d.min_background_size}
                     if run.background_detection else None, window=d.crop_size, train_crop=d.crop_size, mpp=d.mpp)
    return save_bundle(run.out_dir / "model.pt", segmenter, segmenter_spec(run.config, run.space.num_classes), meta,
                       classifier, classifier_spec(run.config, run.space.num_classes))


def has_training_masks(run: RunContext) -> bool:
    return all(r.mask_path is not None for r in run.splits["train"])


def run_mlps(run: RunContext, references: bool = True) -> dict:
    """The whole pipeline; with ``references``, also the CAM baseline and the fully supervised model.

    Every stage resumes from the run folder, so rerunning after an interruption continues where it stopped.
    Results go to ``metrics.json``.
    """
    results: dict = {}
    train_stage(run)
    results["mlps_pseudo_masks"] = pseudo_masks_stage(run)
    train_segmenter_stage(run)
    results["mlps"] = {"test": evaluate_stage(run)}
    if references:
        results.update(reference_results(run))
    run.save_json(run.out_dir / "metrics.json", results)
    return results


def reference_results(run: RunContext) -> dict:
    """The CAM baseline (plain CAM classifier, its pseudo masks and test scores) and, where every training
    patch has a mask, the fully supervised stage-2 model."""
    results: dict = {}
    cam_classifier = train_classifier(run, pda=False, name="cam_classifier")
    results["cam_pseudo_masks"] = make_pseudo_masks(run, plain_cam(cam_classifier), CAM_FOLDER, 1)
    results["cam"] = {"test": evaluate_split(cam_predictor(run, cam_classifier), run.dataset, run.splits["test"],
                                             run.device, overlay_dir=run.out_dir / "overlays" / "cam", n_overlays=8)}
    if has_training_masks(run):
        supervised = train_segmenter(run, None, [1.0], "supervised", None)
        results["supervised"] = {"test": evaluate_split(
            segmenter_predictor(run, supervised, None), run.dataset, run.splits["test"], run.device,
            overlay_dir=run.out_dir / "overlays" / "supervised", n_overlays=8)}
    return results


METHOD = Method(
    "mlps", "wsss", run_mlps,
    stages=wsss_stages(train_stage, pseudo_masks_stage, train_segmenter_stage, evaluate_stage),
    rows=(ResultRow("cam", "CAM baseline", 10, pseudo_masks="CAM baseline"),
          ResultRow("mlps", "MLPS (stage 2, gated)", 20, pseudo_masks="MLPS"),
          ResultRow("supervised", "fully supervised", 90, pseudo_masks="fully supervised")),
    evaluate_key=lambda run: "mlps")
