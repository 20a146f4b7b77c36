"""Scoring class maps against ground truth over a split, with overlays, for every method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tissueseg.data.io import write_png
from tissueseg.data.sample import DatasetInfo, Record, TissueDataset
from tissueseg.engine import distributed as dist_utils
from tissueseg.engine.data import batches_by_size, images_to_tensor
from tissueseg.metrics.confusion import ConfusionMeter
from tissueseg.viz import prediction_panel

PredictFn = Callable[[torch.Tensor], torch.Tensor]  # float images (N,3,H,W) → mask-index maps (N,H,W)


def meter_for(info: DatasetInfo) -> ConfusionMeter:
    """The dataset's scoring convention: MLPS when a class index is excluded from scoring (LUAD-HistoSeg's
    white background), else plain over all classes; an ignore value outside the classes (255) is skipped."""
    k = len(info.classes)
    if info.ignore_index is not None and 0 <= info.ignore_index < k:
        return ConfusionMeter(k, convention="mlps", background_index=info.ignore_index)
    return ConfusionMeter(k, convention="plain", ignore_index=info.ignore_index)


def summarize_scores(scores: dict, info: DatasetInfo) -> dict:
    """mIoU, FwIoU, accuracy, mDice and per-class IoU keyed by class name (JSON-ready)."""
    iou = np.asarray(scores["iou"], dtype=float)
    return {"miou": float(scores["miou"]), "fwiou": float(scores["fwiou"]),
            "pixel_accuracy": float(scores["pixel_accuracy"]), "mdice": float(scores["mdice"]),
            "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(info.classes, iou)}}


@torch.no_grad()
def evaluate_split(predict: PredictFn, dataset: TissueDataset, records: Sequence[Record], device: torch.device,
                   batch_size: int = 8, overlay_dir: Path | None = None, n_overlays: int = 0) -> dict:
    """Predict every record (sharded over DDP ranks), accumulate the confusion matrix and score it."""
    info = dataset.info
    meter = meter_for(info)
    shard = list(records)[dist_utils.rank()::dist_utils.world_size()]
    written = 0
    for _, samples in batches_by_size(dataset, shard, batch_size):
        maps = predict(images_to_tensor(samples, device)).cpu().numpy()
        for sample, pred in zip(samples, maps):
            if sample.mask is not None:
                meter.update(pred, sample.mask)
            if overlay_dir is not None and written < n_overlays and dist_utils.is_main_process():
                panel = prediction_panel(sample.image, pred, info.classes, info.palette, sample.mask)
                write_png(overlay_dir / f"{Path(sample.path).stem}.png", panel)
                written += 1
    matrix = dist_utils.all_reduce_sum(torch.from_numpy(meter.matrix))
    meter.matrix = matrix.numpy()
    return summarize_scores(meter.compute(), info)
