"""The MLPS stage-1 network (Han et al., MedIA 2022): a patch classifier whose CAMs make pseudo masks and
whose class probabilities gate the segmenter at test time (a classification head, in smp's terms).

Progressive Dropout Attention (PDA, paper Eq. 1–3) is part of its forward pass while training; the
schedule of γ and the losses are the recipe's (:mod:`tissueseg.methods.mlps`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def class_activation_maps(features: torch.Tensor, classifier_weight: torch.Tensor) -> torch.Tensor:
    """CAM M_k = ReLU(W_k · F): the classifier's 1×1 conv applied to the feature map, (N, K, h, w)."""
    return F.relu(F.conv2d(features, classifier_weight))


def progressive_dropout_attention(features: torch.Tensor, classifier_weight: torch.Tensor,
                                  gamma: float) -> torch.Tensor:
    """PDA (paper Eq. 1–3; official ``Attention_Module``).

    Per class, β_k = γ·max(M_k); CAM values above β_k are dropped (set to 0) so the most
    discriminative regions stop dominating; the attention map A is the mean of the dropped CAMs over
    classes, and the features are multiplied by A before pooling.
    """
    cams = class_activation_maps(features, classifier_weight)
    beta = gamma * cams.amax(dim=(2, 3), keepdim=True)
    dropped = torch.where(cams > beta, torch.zeros_like(cams), cams)
    return features * dropped.mean(dim=1, keepdim=True)


class PDAClassifier(nn.Module):
    """Backbone → (PDA) → Dropout2d → global average pooling → 1×1 conv classifier (no bias).

    ``gamma`` is set per epoch by the training recipe; ``None`` trains a plain CAM classifier.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(backbone.feature_channels[-1], num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        self.gamma: float | None = None

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and all backbone maps (shallow → deep); PDA is applied only while training."""
        feats = self.backbone(x)
        top = feats[-1]
        if self.training and self.gamma is not None:
            top = progressive_dropout_attention(top, self.classifier.weight, self.gamma)
        pooled = F.adaptive_avg_pool2d(self.dropout(top), 1)
        return self.classifier(pooled).flatten(1), feats

    def forward(self, x: torch.Tensor, with_cams: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits; with ``with_cams`` also the raw CAM head output W·F of the deepest map (N, K, h, w)."""
        logits, feats = self.forward_features(x)
        if with_cams:
            return logits, F.conv2d(feats[-1], self.classifier.weight)
        return logits

    def parameter_groups(self, head_lr_mult: float = 10.0) -> list[dict]:
        """Backbone at the base LR, the from-scratch classifier ×``head_lr_mult`` (official code: ×10)."""
        return [{"params": list(self.backbone.parameters()), "lr_mult": 1.0},
                {"params": list(self.classifier.parameters()), "lr_mult": head_lr_mult}]

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """Plain CAM of the deepest layer (the one-layer baseline), (N, K, h, w)."""
        return class_activation_maps(self.backbone(x)[-1], self.classifier.weight)
