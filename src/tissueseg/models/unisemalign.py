"""The UniSemAlign network (Le-Van Thai et al., CVPRW 2026): DeepLabV3+ with a pixel projection, learnable
class prototypes and a class-name text branch in one shared space. Its losses, pseudo labels and
training recipe are in :mod:`tissueseg.methods.unisemalign`; only the DeepLabV3+ part is exported.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from tissueseg.models.deeplab import DeepLabV3Plus, frozen_bn_statistics
from tissueseg.models.text import TextBranch


class UniSemAlignNet(nn.Module):
    """DeepLabV3+ (``segmenter``) + pixel projection, prototypes and text branch.

    ``net(images)`` gives ``{"out": logits}`` (plus ``pixel`` embeddings when a branch is on);
    ``net(labelled, weak, strong)`` runs one semi-supervised step's forward (one call, DDP-safe):
    the labelled and weak images in one batch, the weak ones also through the feature-perturbation
    branch (Dropout2d on both encoder maps), the strong ones in a second pass.

    Parameters
    ----------
    segmenter : the DeepLabV3+ (what is exported and evaluated).
    num_classes : C.
    text : the text branch (class embeddings in the shared space), or None.
    prototypes : learn C×D prototypes.
    embed_dim : D (paper 256).
    fp_dropout : feature-perturbation Dropout2d rate (paper 0.5).
    threshold_init : initial pseudo-label confidence threshold (kept in a buffer, checkpointed).
    clean_bn_statistics : BatchNorm running statistics (what evaluation uses) come from the clean
        labelled and weak images only; the strong and feature-perturbed passes normalise with their
        own batch statistics without updating them (ours; official: every pass updates them).
    """

    def __init__(self, segmenter: DeepLabV3Plus, num_classes: int, text: TextBranch | None = None,
                 prototypes: bool = True, embed_dim: int = 256, fp_dropout: float = 0.5,
                 threshold_init: float = 0.7, clean_bn_statistics: bool = True):
        super().__init__()
        self.segmenter = segmenter
        self.clean_bn_statistics = clean_bn_statistics
        self.num_classes = num_classes
        self.text = text
        self.prototypes = (nn.Parameter(torch.randn(num_classes, embed_dim) / math.sqrt(embed_dim))
                           if prototypes else None)
        high = segmenter.encoder.feature_channels[-1]
        # official ``proj``: 3×3 conv + BN + ReLU + Dropout2d(0.1) on the high-level encoder map
        self.project = (nn.Sequential(nn.Conv2d(high, embed_dim, 3, padding=1), nn.BatchNorm2d(embed_dim),
                                      nn.ReLU(inplace=True), nn.Dropout2d(0.1))
                        if prototypes or text is not None else None)
        self.fp_dropout = nn.Dropout2d(fp_dropout)
        self.register_buffer("threshold", torch.tensor(float(threshold_init)))
        self.teacher: DeepLabV3Plus | None = None

    def start_teacher(self) -> None:
        """Keep a frozen copy of the segmenter (checkpointed with the net) for :meth:`update_teacher`."""
        self.teacher = copy.deepcopy(self.segmenter)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """Mean teacher (Tarvainen & Valpola 2017): θ' ← m·θ' + (1 − m)·θ for every floating-point
        weight and BatchNorm statistic; integer buffers are copied. The teacher stays in eval mode."""
        self.teacher.eval()
        for t, s in zip(self.teacher.state_dict().values(), self.segmenter.state_dict().values()):
            if t.dtype.is_floating_point:
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
            else:
                t.copy_(s)

    def _decode(self, low: torch.Tensor, high: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        seg = self.segmenter
        return F.interpolate(seg.head(seg.decoder(low, high)), size=size, mode="bilinear", align_corners=False)

    def _single_pass(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits at the input size and (with a branch on) pixel embeddings of one batch."""
        seg = self.segmenter
        feats = seg.encoder(images)
        logits = self._decode(feats[seg.low_level_index], feats[-1], images.shape[-2:])
        return logits, self.project(feats[-1]) if self.project is not None else None

    def _branches(self, out: dict) -> None:
        if self.prototypes is not None:
            out["prototypes"] = self.prototypes
        if self.text is not None:
            out["text"] = self.text()

    def forward(self, images: torch.Tensor, weak: torch.Tensor | None = None,
                strong: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        seg = self.segmenter
        size = images.shape[-2:]
        out: dict[str, torch.Tensor] = {}
        if weak is None:
            out["out"], pixel = self._single_pass(images)
            if pixel is not None:
                out["pixel"] = pixel
            self._branches(out)
            return out
        n_l, n_u = images.shape[0], weak.shape[0]
        feats = seg.encoder(torch.cat([images, weak]))
        low, high = feats[seg.low_level_index], feats[-1]
        if self.clean_bn_statistics:
            out["labelled"], out["weak"] = self._decode(low, high, size).split([n_l, n_u])
            with frozen_bn_statistics(seg.decoder):
                out["weak_fp"] = self._decode(self.fp_dropout(low[n_l:]), self.fp_dropout(high[n_l:]), size)
        else:
            low = torch.cat([low, self.fp_dropout(low[n_l:])])
            high_all = torch.cat([high, self.fp_dropout(high[n_l:])])
            out["labelled"], out["weak"], out["weak_fp"] = self._decode(low, high_all, size).split([n_l, n_u, n_u])
        if self.project is not None:
            out["labelled_pixel"], out["weak_pixel"] = self.project(high).split([n_l, n_u])
        if strong is not None:
            with frozen_bn_statistics(self if self.clean_bn_statistics else None):
                out["strong"], pixel = self._single_pass(strong)
            if pixel is not None:
                out["strong_pixel"] = pixel
        self._branches(out)
        return out
