"""PLIMSeg: pathology language–image matching for weakly supervised segmentation (Ding et al., BSPC 2026).

A frozen vision–language matcher (a pathology CLIP — QuiltNet, PLIP, CONCH — or, when none is at
hand, a matcher trained on the image-level labels) scores masked views of each training patch
against text prompts, and three matching losses constrain the stage-1 CAMs. No official PLIMSeg
code is public; the losses follow CLIMS (Xie et al., CVPR 2022, code CVI-SZU/CLIMS), by the same
group, which the paper builds on. For a positive class k with activation map P_k = σ(CAM_k),
image I, class text t_k, background prompts b_j and s = cosine similarity of the CLIP embeddings
(for the label-trained matcher: its matching probability, see :class:`LabelTrainedMatcher`):

- object–text matching        L_OTM = −log s(f(P_k ⊙ I), t_k)
- background–text matching    L_BTM = −log(1 − s(f((1 − P_k) ⊙ I), t_k))
- co-occurring background suppression  L_CBS = −Σ_j log(1 − s(f(P_k ⊙ I), b_j))
- area regulariser            L_area = mean(P_k)

with CLIMS's weights 10, 24, 1 and 0.2 and s clamped to [1e−4, 1 − 1e−4] as in its code. Ours: the
multi-label classification loss of MLPS stage 1 is kept (weight 1) so the classifier still serves
as the test-time gate and for Grad-CAM. Pseudo masks and stage 2 are MLPS's own code
(:mod:`tissueseg.methods.mlps`): one-layer CAM masks (the PLIMSeg row) or multi-layer Grad-CAM of
the PLIMSeg classifier with multi-layer pseudo-supervision (the PLIMSeg + MLPS stage 2 row).
"""

from __future__ import annotations

import hashlib
import math
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from tissueseg.config import MatcherConfig, PLIMSegConfig, WSSSConfig
from tissueseg.data.prompts import PromptBank, build_prompt_bank
from tissueseg.data.transforms import build_train_transforms
from tissueseg.engine import distributed as dist_utils
from tissueseg.engine.data import SegmentationSamples
from tissueseg.engine.evaluate import evaluate_split
from tissueseg.engine.run import RunContext
from tissueseg.engine.trainer import TrainConfig, Trainer, load_best
from tissueseg.methods import mlps
from tissueseg.methods.base import Method, ResultRow, wsss_stages
from tissueseg.models.bundle import MatcherSpec, create_model
from tissueseg.models.classifier import PDAClassifier
from tissueseg.models.matcher import LabelTrainedMatcher

SIMILARITY_CLAMP = 1e-4  # CLIMS clamps cosine similarities to [1e-4, 1 - 1e-4] before the logs


class Matcher(Protocol):
    """What the losses need of a matcher: normalised embeddings of images and prompts, their similarity
    s ∈ [−1, 1] or (0, 1) (a CLIP's cosine; the label-trained matcher's matching probability), a name."""

    name: str

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor: ...

    def similarity(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor: ...


# --- The matching losses (CLIMS Eq. 2–5) -----------------------------------------------------------

def _clamped(similarity: torch.Tensor) -> torch.Tensor:
    return similarity.float().clamp(SIMILARITY_CLAMP, 1 - SIMILARITY_CLAMP)


def object_text_matching_loss(similarity: torch.Tensor) -> torch.Tensor:
    """L_OTM = −log s(f(P_k ⊙ I), t_k), averaged over (image, positive class) pairs."""
    return -torch.log(_clamped(similarity)).mean()


def background_text_matching_loss(similarity: torch.Tensor) -> torch.Tensor:
    """L_BTM = −log(1 − s(f((1 − P_k) ⊙ I), t_k)), averaged over pairs."""
    return -torch.log(1 - _clamped(similarity)).mean()


def background_suppression_loss(similarity: torch.Tensor) -> torch.Tensor:
    """L_CBS = −Σ_j log(1 − s(f(P_k ⊙ I), b_j)); ``similarity`` is (pairs, background prompts)."""
    return -torch.log(1 - _clamped(similarity)).sum(dim=1).mean()


def active_loss_weights(cfg: PLIMSegConfig) -> dict[str, float]:
    """Weights of the switched-on losses (``plimseg.losses``), e.g. ``{"otm": 10, "btm": 24, ...}``."""
    weights = {"otm": cfg.otm_weight, "btm": cfg.btm_weight, "cbs": cfg.cbs_weight, "area": cfg.area_weight}
    return {name: weights[name] for name in cfg.losses if weights[name] > 0}


def matching_losses(matcher: Matcher, images: torch.Tensor, cam_logits: torch.Tensor, labels: torch.Tensor,
                    class_text: torch.Tensor, background_text: torch.Tensor,
                    weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """The weighted PLIM losses of one batch.

    Parameters
    ----------
    matcher : frozen; gradients reach the CAMs through its input, never its weights.
    images : (N, 3, H, W) RGB in [0, 1].
    cam_logits : (N, K, h, w) raw CAM head output; P = σ(CAM) upsampled to H × W.
    labels : (N, K) patch-level labels; every positive (image, class) pair is one term.
    class_text : (K, D) normalised class embeddings; background_text : (B, D) normalised.
    weights : the active losses and their weights (:func:`active_loss_weights`).
    """
    activation = torch.sigmoid(F.interpolate(cam_logits.float(), size=images.shape[-2:], mode="bilinear",
                                             align_corners=False))
    image_idx, class_idx = torch.nonzero(labels > 0, as_tuple=True)
    if image_idx.numel() == 0:
        return {name: cam_logits.sum() * 0.0 for name in weights}
    object_map = activation[image_idx, class_idx].unsqueeze(1)  # (M, 1, H, W)
    crops = images[image_idx].to(object_map.dtype)
    views = [object_map * crops] if {"otm", "cbs"} & set(weights) else []
    if "btm" in weights:
        views.append((1 - object_map) * crops)
    embeddings = matcher.encode_image(torch.cat(views)).float() if views else None
    losses: dict[str, torch.Tensor] = {}
    pairs = torch.arange(len(class_idx), device=class_idx.device)

    def similarity(views: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:  # in fp32, also under bf16 autocast
        with torch.autocast(views.device.type, enabled=False):
            return matcher.similarity(views.float(), texts.float())

    def class_similarity(view: torch.Tensor) -> torch.Tensor:  # s(view_m, t_{k_m}) for each pair m
        return similarity(view, class_text)[pairs, class_idx]

    if "otm" in weights:
        losses["otm"] = weights["otm"] * object_text_matching_loss(class_similarity(embeddings[:len(pairs)]))
    if "btm" in weights:
        losses["btm"] = weights["btm"] * background_text_matching_loss(class_similarity(embeddings[-len(pairs):]))
    if "cbs" in weights:
        losses["cbs"] = weights["cbs"] * background_suppression_loss(
            similarity(embeddings[:len(pairs)], background_text))
    if "area" in weights:
        losses["area"] = weights["area"] * object_map.mean()
    return losses


# --- Prompts and text embeddings ---------------------------------------------------------------------

def prompt_bank(run: RunContext) -> PromptBank:
    p = run.config.plimseg.prompts
    return build_prompt_bank(run.info.label_classes, p.classes, p.templates, p.background)


def prompt_rows(bank: PromptBank) -> list[list[str]]:
    """The prompts of each class, then of each background description (templates applied)."""
    return ([bank.class_prompts(k) for k in range(len(bank.classes))]
            + [[t.format(b) for t in bank.templates] for b in bank.background])


@torch.no_grad()
def prompt_embeddings(matcher: Matcher, bank: PromptBank) -> tuple[torch.Tensor, torch.Tensor]:
    """Class embeddings (K, D): each the normalised mean over its templates × descriptions (prompt
    ensembling, Radford et al. 2021); background embeddings (B, D): one per background description."""
    def ensemble(prompts: list[str]) -> torch.Tensor:
        return F.normalize(matcher.encode_text(prompts).float().mean(0), dim=-1)

    classes = torch.stack([ensemble(bank.class_prompts(k)) for k in range(len(bank.classes))])
    background = torch.stack([ensemble([t.format(b) for t in bank.templates]) for b in bank.background])
    return classes, background


# --- The matcher ---------------------------------------------------------------------------------------

def check_settings(run: RunContext, name: str, settings: dict) -> None:
    """Refuse to resume checkpoint ``name`` if it was trained with other settings; record them on first use.

    Resuming is by checkpoint name, so a changed matcher, prompt or loss would otherwise reuse a
    stale model silently.
    """
    path = run.out_dir / "checkpoints" / f"{name}_settings.json"
    settings = json.loads(json.dumps(settings, default=str, sort_keys=True))
    if path.exists():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"{path}: this run folder's {name} was trained with other settings "
                             f"({', '.join(changed)} changed) (fix: use a new out_dir, or delete "
                             f"{path.parent}/{name}_* to retrain it)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    run.save_json(path, settings)


def _prompts_digest(bank: PromptBank) -> str:
    return hashlib.sha1(json.dumps(prompt_rows(bank)).encode()).hexdigest()[:12]


def matcher_settings(run: RunContext) -> dict:
    """What identifies the matcher of this run (compared on resume)."""
    m = run.config.plimseg.matcher
    if m.kind != "label_trained":
        return {"kind": m.kind, "weights": m.weights, "model_name": m.model_name}
    return {"kind": m.kind, "backbone": m.backbone, "pretrained": matcher_pretrained(run.config), "text": m.text,
            "prompts": _prompts_digest(prompt_bank(run))}

def build_matcher(run: RunContext) -> Matcher:
    """The frozen matcher of this run: a pathology CLIP from local weights, or the label-trained one."""
    m = run.config.plimseg.matcher
    if m.kind == "label_trained":
        check_settings(run, "matcher", matcher_settings(run))
        matcher: nn.Module = train_matcher(run)
    else:
        from tissueseg.models.vlm import load_vlm

        matcher = load_vlm(m.kind, m.weights, m.model_name)
    matcher = matcher.to(run.device).eval()
    for p in matcher.parameters():
        p.requires_grad_(False)
    return matcher


def _text_embeddings(run: RunContext, m: MatcherConfig, prompts: list[str]) -> tuple[torch.Tensor | None, str]:
    """Fixed all-MiniLM-L6-v2 embeddings of the prompts (cached in the run folder), or None for learnable."""
    from tissueseg.models.text import minilm_model_dir, sentence_transformers_available

    if m.text == "learnable" or (m.text == "auto" and not (minilm_model_dir() and sentence_transformers_available())):
        return None, "learnable text embeddings"
    from tissueseg.models.text import encode_sentences

    cache = run.out_dir / "checkpoints" / "matcher_text.pt" if dist_utils.is_main_process() else None
    return encode_sentences(prompts, cache_file=cache), "all-MiniLM-L6-v2 text (frozen)"


def matcher_training_batch(images: torch.Tensor, labels: torch.Tensor, n_background: int
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Add a black and a white view to a batch: targets 1 for the background prompts, 0 for every class.

    Ours: masked-out regions of P_k ⊙ I are black, so the matcher must learn that an empty view is
    background and not any class — what makes its similarities meaningful to L_OTM and L_CBS.
    """
    blank = torch.stack([torch.zeros_like(images[0]), torch.ones_like(images[0])])
    targets = torch.cat([F.pad(labels.float(), (0, n_background)),
                         F.pad(torch.ones(2, n_background, device=labels.device), (labels.shape[1], 0))])
    return torch.cat([images, blank]), targets


def positive_rate(records: Sequence, n_rows: int) -> float | None:
    """Share of positive (image, row) targets the matcher trains on, from the records' image labels,
    clipped to [0.01, 0.99]; None when no record has labels. Background rows are positive only for
    the two blank views, so they count as negatives here."""
    labels = [r.labels for r in records if r.labels is not None]
    if not labels:
        return None
    return min(max(sum(map(sum, labels)) / (len(labels) * n_rows), 0.01), 0.99)


def train_matcher(run: RunContext, name: str = "matcher") -> LabelTrainedMatcher:
    """Train (or, when its checkpoint is complete, reload) the label-trained matcher.

    Sigmoid-contrastive training: logits exp(t)·cos(f(I), t_k) + b against fixed text embeddings of
    the class prompts (mean over templates) and of the background prompts, BCE with the image-level
    labels. Selected by macro F1 on the validation patches.
    """
    cfg: WSSSConfig = run.config
    m = cfg.plimseg.matcher
    bank = prompt_bank(run)
    rows = prompt_rows(bank)
    text, text_name = _text_embeddings(run, m, [p for row in rows for p in row])
    matcher = create_model(MatcherSpec(m.backbone, rows, text_name, text), matcher_pretrained(cfg))
    prior = positive_rate(run.splits["train"], len(rows))
    if prior is not None:  # start at the label prior, not at "nothing matches" (which kept val F1 at 0)
        matcher.logit_bias.data.fill_(math.log(prior / (1 - prior)))
    head = [p for n, p in matcher.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": list(matcher.encoder.parameters()), "lr_mult": 1.0},
              {"params": head, "lr_mult": m.head_lr_mult}]
    train_config = TrainConfig.of(cfg, m)
    trainer = Trainer(matcher, train_config, run.out_dir, param_groups=groups, name=name, console=run.console)
    train_set = SegmentationSamples(run.dataset, run.splits["train"], build_train_transforms(cfg.data.crop_size),
                                    run.space)

    def step(net: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        images, targets = matcher_training_batch(batch["image"], batch["labels"], len(bank.background))
        return {"loss": F.binary_cross_entropy_with_logits(net(images).float(), targets)}

    def evaluate(net: nn.Module) -> dict[str, float]:  # the class rows' logits; background rows ignored
        return {"val_f1": mlps.classification_f1(net, run, run.splits["val"])}

    trainer.fit(train_set, step, evaluate=evaluate, select="val_f1")
    dist_utils.barrier()  # every rank loads the best matcher rank 0 wrote
    return load_best(matcher, trainer.best_path, trainer.device)


def matcher_pretrained(cfg: WSSSConfig) -> bool | str:
    """The label-trained matcher's init: its own setting, else the run backbone's when that applies to it
    (a weights *file* for a different backbone does not: then the matcher's packaged/local weights)."""
    m = cfg.plimseg.matcher
    if m.pretrained is not None:
        return m.pretrained
    inherited = cfg.backbone.pretrained
    return inherited if isinstance(inherited, bool) or cfg.backbone.name == m.backbone else True


# --- Stage 1 with the matching losses ------------------------------------------------------------------

CLASSIFIER = "plim_classifier"


def plim_cam_losses(run: RunContext, matcher: Matcher) -> mlps.CamLossFn:
    """The weighted matching losses of this run's prompts and loss weights, on stage 1's CAMs."""
    class_text, background_text = (t.to(run.device) for t in prompt_embeddings(matcher, prompt_bank(run)))
    weights = active_loss_weights(run.config.plimseg)

    def cam_losses(images: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return matching_losses(matcher, images, cams, labels, class_text, background_text, weights)
    return cam_losses


def train_plim_classifier(run: RunContext, matcher: Matcher) -> PDAClassifier:
    """PLIMSeg stage 1: classification loss + the weighted matching losses on the CAMs.

    From the backbone's init, or (``plimseg.init_classifier``) from a trained stage-1 classifier at a
    lower learning rate, as CLIMS trains its CAM network on from a trained one. The losses run inside
    the engine's bf16 autocast on GPU, matcher included.
    """
    p = run.config.plimseg
    start = {"init_classifier": str(p.init_classifier), "init_lr_scale": p.init_lr_scale} if p.init_classifier else {}
    check_settings(run, CLASSIFIER, {"matcher": matcher_settings(run), "matcher_name": matcher.name,
                                     "prompts": _prompts_digest(prompt_bank(run)), "losses": active_loss_weights(p),
                                     "pda": p.pda, "classification_weight": p.classification_weight, **start})
    return mlps.train_classifier(run, pda=p.pda, name=CLASSIFIER, cam_losses=plim_cam_losses(run, matcher),
                                 classification_weight=p.classification_weight, init=p.init_classifier,
                                 lr_scale=p.init_lr_scale if p.init_classifier else 1.0)


def train_stage(run: RunContext) -> PDAClassifier:
    """``wsss train-cls`` for PLIMSeg: the matcher (trained or loaded), then stage 1."""
    return train_plim_classifier(run, build_matcher(run))


def load_plim_classifier(run: RunContext) -> PDAClassifier:
    return mlps.load_classifier(run, CLASSIFIER)


def matcher_name(run: RunContext) -> str | None:
    """The matcher the run's PLIMSeg classifier was trained with (from its settings record)."""
    path = run.out_dir / "checkpoints" / f"{CLASSIFIER}_settings.json"
    return json.loads(path.read_text()).get("matcher_name") if path.exists() else None


def pseudo_mask_folder(variant: str) -> str:
    return f"plimseg_{variant}_masks"


def pseudo_masks_stage(run: RunContext, variant: str | None = None) -> dict:
    """Pseudo masks of the PLIMSeg classifier: one-layer CAM (``cam``) or multi-layer Grad-CAM (``mlps``)."""
    variant = variant or run.config.plimseg.stage2
    classifier = load_plim_classifier(run)
    layers = [-1] if variant == "cam" else run.config.pseudo_masks.layers
    cams = mlps.plain_cam(classifier) if variant == "cam" else mlps.grad_cam_layers(classifier, layers)
    report = mlps.make_pseudo_masks(run, cams, pseudo_mask_folder(variant), len(layers))
    report["matcher"] = matcher_name(run)
    run.save_json(run.out_dir / pseudo_mask_folder(variant) / "report.json", report)
    return report


def _stage2_layers(run: RunContext, variant: str) -> list[float]:
    return [1.0] if variant == "cam" else list(run.config.segmenter.layer_weights)


def train_segmenter_stage(run: RunContext, variant: str | None = None) -> nn.Module:
    """Stage 2 (MLPS's code) on the PLIMSeg pseudo masks, gated by the PLIMSeg classifier."""
    variant = variant or run.config.plimseg.stage2
    folder = pseudo_mask_folder(variant)
    if not (run.out_dir / folder / "report.json").exists():
        raise FileNotFoundError(f"{run.out_dir / folder}: no PLIMSeg pseudo masks in this run folder "
                                f"(fix: run `tissueseg wsss pseudo-masks CONFIG.yaml` first)")
    weights = _stage2_layers(run, variant)
    return mlps.train_segmenter(run, mlps.pseudo_mask_reader(run, folder, len(weights)), weights,
                                f"plimseg_{variant}_segmenter", load_plim_classifier(run))


def evaluate_stage(run: RunContext, variant: str | None = None, n_overlays: int = 8) -> dict:
    """Test-split scores of a trained PLIMSeg variant; the configured one is exported as ``model.pt``."""
    variant = variant or run.config.plimseg.stage2
    classifier = load_plim_classifier(run)
    segmenter = mlps.load_stage(run, mlps.build_segmenter(run.config, run.space.num_classes),
                                f"plimseg_{variant}_segmenter", "train-seg")
    if variant == run.config.plimseg.stage2:
        mlps.export_model(run, segmenter, classifier, method="plimseg")
    scores = evaluate_split(mlps.segmenter_predictor(run, segmenter, classifier), run.dataset, run.splits["test"],
                            run.device, overlay_dir=run.out_dir / "overlays" / f"plimseg_{variant}",
                            n_overlays=n_overlays)
    return {**scores, "matcher": matcher_name(run)}


def run_variant(run: RunContext, variant: str) -> dict:
    """Pseudo masks, stage 2 and test scores of one variant (``cam`` or ``mlps``) of the trained classifier."""
    report = pseudo_masks_stage(run, variant)
    train_segmenter_stage(run, variant)
    return {f"plimseg_{variant}_pseudo_masks": report, f"plimseg_{variant}": {"test": evaluate_stage(run, variant)}}


def run_plimseg(run: RunContext, references: bool = False) -> dict:
    """Matcher → stage 1 with the matching losses → pseudo masks → stage 2 → gated test scores.

    ``references`` adds the other pseudo-mask variant (so both the PLIMSeg and the PLIMSeg + MLPS
    stage 2 rows), the CAM baseline and the fully supervised model. Resumes from the run folder;
    results (with the matcher's name) go to ``metrics.json``.
    """
    matcher = build_matcher(run)
    results: dict = {"matcher": matcher.name}
    train_plim_classifier(run, matcher)
    main = run.config.plimseg.stage2
    for variant in [main] + ([v for v in ("cam", "mlps") if v != main] if references else []):
        results.update(run_variant(run, variant))
    if references:
        results.update(mlps.reference_results(run))
    run.save_json(run.out_dir / "metrics.json", results)
    return results


def share_matcher(source: Path, out: Path) -> None:
    """Copy the trained matcher of run folder ``source`` into run folder ``out`` (where it is missing), so a
    variant run reuses it instead of training its own; its settings record still guards the resume."""
    import shutil

    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in ("matcher_best.pt", "matcher_last.pt", "matcher_text.pt", "matcher_settings.json"):
        if (source / "checkpoints" / name).exists() and not (out / "checkpoints" / name).exists():
            shutil.copy(source / "checkpoints" / name, out / "checkpoints" / name)


def loss_ablations(config: WSSSConfig, console=None, losses: Sequence[str] | None = None) -> dict:
    """Stage 1 and one-layer CAM pseudo masks with each matching loss (default: every one in use)
    switched off in turn.

    Each ablation runs in ``<out_dir>/no_<loss>`` and reuses the matcher of the main run in
    ``out_dir`` (its checkpoints are copied, so it is not retrained); returns the pseudo-mask reports.
    """
    base = Path(config.out_dir)
    unknown = set(losses or ()) - set(config.plimseg.losses)
    if unknown:
        raise ValueError(f"cannot ablate {', '.join(sorted(unknown))}: not among the run's losses "
                         f"({', '.join(config.plimseg.losses)})")
    results = {}
    for loss in losses or config.plimseg.losses:
        out = base / f"no_{loss}"
        share_matcher(base, out)
        kept = [x for x in config.plimseg.losses if x != loss]
        ablation = config.model_copy(update={"out_dir": out,
                                             "plimseg": config.plimseg.model_copy(update={"losses": kept})})
        run = RunContext.open(ablation, console=console)
        train_plim_classifier(run, build_matcher(run))
        results[f"no_{loss}"] = pseudo_masks_stage(run, "cam")
    return results


METHOD = Method(
    "plimseg", "wsss", run_plimseg,
    stages=wsss_stages(train_stage, pseudo_masks_stage, train_segmenter_stage, evaluate_stage),
    rows=(ResultRow("plimseg_cam", "PLIMSeg (stage 2, gated)", 30, pseudo_masks="PLIMSeg"),
          ResultRow("plimseg_mlps", "PLIMSeg + MLPS stage 2 (gated)", 40, pseudo_masks="PLIMSeg Grad-CAM")),
    evaluate_key=lambda run: f"plimseg_{run.config.plimseg.stage2}",
    caption=lambda results: f"PLIMSeg matcher: {results['matcher']}" if "matcher" in results else None)
