"""A plain reference CAM (Zhou et al. 2016) in a few lines of timm, for the weakly supervised benchmarks.

What a user would write in an afternoon: a timm backbone, global average pooling, a 1×1 classifier,
multi-label BCE on the patch tags, Adam, random flips; at test time the CAM of every class the
classifier calls present (probability > 0.5, else the most probable class) and the argmax over them.
Trained on the same tagged crops as the project's rows and scored on the same images by the caller.
"""

from __future__ import annotations

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn


class ReferenceCAM(nn.Module):
    def __init__(self, num_classes: int, backbone: str = "resnet18", pretrained: bool = False):
        super().__init__()
        self.features = timm.create_model(backbone, pretrained=pretrained, num_classes=0, global_pool="")
        self.classifier = nn.Conv2d(self.features.num_features, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cams = self.classifier(self.features((x - 0.5) / 0.25))
        return cams.mean((2, 3)), cams


def train_reference_cam(images: list[np.ndarray], tags: np.ndarray, steps: int = 300, batch_size: int = 16,
                        lr: float = 1e-3, seed: int = 0, backbone: str = "resnet18") -> ReferenceCAM:
    """``images``: equal-sized (H, W, 3) uint8 crops; ``tags``: (N, K) 0/1 patch labels."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ReferenceCAM(tags.shape[1], backbone)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_all = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    y_all = torch.from_numpy(tags).float()
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(x_all), size=min(batch_size, len(x_all)), replace=False))
        x = x_all[idx]
        if rng.random() < 0.5:
            x = x.flip(3)
        if rng.random() < 0.5:
            x = x.flip(2)
        loss = F.binary_cross_entropy_with_logits(model(x)[0], y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict_reference_cam(model: ReferenceCAM, image: np.ndarray) -> np.ndarray:
    """(H, W) class index: argmax of the max-normalised CAMs of the classes predicted present."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    logits, cams = model(x)
    cams = F.interpolate(F.relu(cams), size=image.shape[:2], mode="bilinear", align_corners=False)[0]
    probs = torch.sigmoid(logits[0])
    present = probs > 0.5
    present[probs.argmax()] = True
    cams = cams / cams.amax((1, 2), keepdim=True).clamp_min(1e-5)
    cams[~present] = -1
    return cams.argmax(0).numpy()
