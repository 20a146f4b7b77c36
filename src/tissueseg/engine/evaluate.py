"""Scoring class maps against ground truth over a split, with overlays, for every method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tissueseg.data.io import write_png
from tissueseg.data.sample import DatasetInfo, Record, Sample, TissueDataset
from tissueseg.engine import distributed as dist_utils
from tissueseg.engine.data import batches_by_size, images_to_tensor
from tissueseg.metrics.confusion import ConfusionMeter, localisation_scores
from tissueseg.viz import prediction_panel

PredictFn = Callable[[torch.Tensor], torch.Tensor]  # float images (N,3,H,W) → mask-index maps (N,H,W)


def meter_for(info: DatasetInfo) -> ConfusionMeter:
    """The dataset's scoring convention: MLPS when a class index is excluded from scoring (LUAD-HistoSeg's
    white background), else plain over all classes; an ignore value outside the classes (255) is skipped."""
    k = len(info.classes)
    if info.ignore_index is not None and 0 <= info.ignore_index < k:
        return ConfusionMeter(k, convention="mlps", background_index=info.ignore_index)
    return ConfusionMeter(k, convention="plain", ignore_index=info.ignore_index)


def summarize_scores(meter: ConfusionMeter, info: DatasetInfo) -> dict:
    """mIoU, FwIoU, accuracy, mDice, per-class IoU keyed by class name and the confusion matrix (rows =
    ground truth; summed over runs it pools their scores), JSON-ready; where the
    background is a scored class, also ``localisation`` (foreground vs background IoU,
    :func:`~tissueseg.metrics.confusion.localisation_scores`)."""
    scores = meter.compute()
    iou = np.asarray(scores["iou"], dtype=float)
    summary = {"miou": float(scores["miou"]), "fwiou": float(scores["fwiou"]),
               "pixel_accuracy": float(scores["pixel_accuracy"]), "mdice": float(scores["mdice"]),
               "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(info.classes, iou)},
               "confusion": meter.matrix.tolist()}
    if info.background_index is not None and meter.convention == "plain":
        summary["localisation"] = localisation_scores(meter.matrix, info.background_index)
    return summary


@torch.no_grad()
def score_records(predict: PredictFn, dataset: TissueDataset, records: Sequence[Record], device: torch.device,
                  meter: ConfusionMeter, batch_size: int = 8, truth: Callable[[np.ndarray], np.ndarray] | None = None,
                  names: Sequence[str] | None = None, palette: Sequence[tuple[int, int, int]] | None = None,
                  overlay_dir: Path | None = None, n_overlays: int = 0,
                  on_scored: Callable[[Sample, np.ndarray, np.ndarray], None] | None = None) -> ConfusionMeter:
    """Predict every record (sharded over DDP ranks) into ``meter``, all-reduced over ranks; every method's
    evaluation loop.

    ``truth`` maps a sample's mask onto the predicted classes (default: as stored); ``names`` and
    ``palette`` colour the first ``n_overlays`` overlays (default: the dataset's); ``on_scored(sample,
    prediction, truth)`` sees every scored pair (e.g. for object metrics, all-reduced by the caller).
    """
    info = dataset.info
    names = info.classes if names is None else names
    palette = info.palette if palette is None else palette
    shard = list(records)[dist_utils.rank()::dist_utils.world_size()]
    written = 0
    for _, samples in batches_by_size(dataset, shard, batch_size):
        maps = predict(images_to_tensor(samples, device)).cpu().numpy()
        for sample, pred in zip(samples, maps):
            gt = None if sample.mask is None else (sample.mask if truth is None else truth(sample.mask))
            if gt is not None:
                meter.update(pred, gt)
                if on_scored is not None:
                    on_scored(sample, pred, gt)
            if overlay_dir is not None and written < n_overlays and dist_utils.is_main_process():
                panel = prediction_panel(sample.image, pred, names, palette, gt)
                write_png(overlay_dir / f"{Path(sample.path).stem}.png", panel)
                written += 1
    meter.matrix = dist_utils.all_reduce_sum(torch.from_numpy(meter.matrix)).numpy()
    return meter


def evaluate_split(predict: PredictFn, dataset: TissueDataset, records: Sequence[Record], device: torch.device,
                   batch_size: int = 8, overlay_dir: Path | None = None, n_overlays: int = 0) -> dict:
    """Scores of ``predict`` over ``records`` in the dataset's convention (:func:`meter_for`, :func:`summarize_scores`)."""
    meter = score_records(predict, dataset, records, device, meter_for(dataset.info), batch_size,
                          overlay_dir=overlay_dir, n_overlays=n_overlays)
    return summarize_scores(meter, dataset.info)
