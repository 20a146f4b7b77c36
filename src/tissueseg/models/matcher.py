"""A label-trained language–image matcher: PLIMSeg's matcher when no pathology CLIP is at hand.

A small registry image encoder with a linear projection into the space of *fixed* text embeddings
of the prompts (all-MiniLM-L6-v2 from the ``text`` extra; learnable embeddings otherwise). It is
trained contrastively on the image-level labels (:func:`tissueseg.methods.plimseg.train_matcher`)
and then frozen. It offers the same ``encode_image`` / ``encode_text`` as the CLIP backends of
:mod:`tissueseg.models.vlm`, so the matching losses do not care which one they get.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tissueseg.models.encoder import NormalizedEncoder


class LabelTrainedMatcher(nn.Module):
    """Image encoder → global average pool → linear projection; text = a table of prompt embeddings.

    Parameters
    ----------
    encoder : a [0, 1]-RGB registry encoder (:func:`tissueseg.models.encoder.build_encoder`).
    rows : the prompts of each row the matcher is trained on (each class, then each background
        description); a row's embedding is the normalised mean of its prompts' embeddings.
    text_embeddings : (number of prompts, D) fixed sentence embeddings of the prompts in row order,
        or None for learnable ones of ``dim``.
    text_name : what produced the text embeddings (shown in reports).
    dim : embedding size when the text embeddings are learnable.
    """

    def __init__(self, encoder: NormalizedEncoder, rows: Sequence[Sequence[str]], text_embeddings: torch.Tensor | None,
                 text_name: str, backbone_name: str, dim: int = 256):
        super().__init__()
        self.encoder = encoder
        self.prompts = [p for row in rows for p in row]
        self._index = {p: i for i, p in enumerate(self.prompts)}
        self.rows = [list(row) for row in rows]
        if text_embeddings is None:
            self.text = nn.Parameter(torch.randn(len(self.prompts), dim) / math.sqrt(dim))
        else:
            self.register_buffer("text", text_embeddings.float().clone())
        out_dim = self.text.shape[1]
        self.project = nn.Linear(encoder.feature_channels[-1], out_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))
        self.name = f"label-trained matcher ({backbone_name} + {text_name})"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Training logits (N, rows) of [0, 1] RGB images against every row (through DDP's forward)."""
        return self.logits(self.encode_image(images), self.row_embeddings())

    def row_embeddings(self) -> torch.Tensor:
        """(rows, D): each row's normalised mean prompt embedding (differentiable when learnable)."""
        return torch.stack([F.normalize(self.encode_text(row).mean(0), dim=-1) for row in self.rows])

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N, D) of [0, 1] RGB images; differentiable in ``images``."""
        pooled = F.adaptive_avg_pool2d(self.encoder(images)[-1], 1).flatten(1)
        return F.normalize(self.project(pooled).float(), dim=-1)

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings (P, D) of prompts the matcher was built with."""
        missing = [p for p in prompts if p not in self._index]
        if missing:
            raise KeyError(f"the label-trained matcher has no embedding for {missing[:3]} (it knows only the prompts "
                           f"it was trained with; fix: retrain it after changing plimseg.prompts)")
        rows = torch.tensor([self._index[p] for p in prompts], device=self.text.device)
        return F.normalize(self.text[rows].float(), dim=-1)

    def similarity(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Matching probability σ(exp(t)·cos + b) of every image with every text, ``(N, P)``.

        What this matcher was trained to output; unlike a CLIP's cosine it is calibrated to (0, 1),
        so the matching losses' logs are not clamped flat (zero gradient) on views it rejects.
        """
        return torch.sigmoid(self.logits(image_embeddings, text_embeddings))

    def logits(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Sigmoid-contrastive logits exp(t)·cos + b (SigLIP, Zhai et al. 2023) for multi-label training."""
        return self.logit_scale.exp() * image_embeddings @ text_embeddings.t() + self.logit_bias
