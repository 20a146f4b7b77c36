"""Evaluation metrics: streaming confusion-matrix scores and GlaS object metrics."""

from tissueseg.metrics.confusion import ConfusionMeter, confusion_matrix, localisation_scores, scores_from_confusion
from tissueseg.metrics.objects import (
    glas_object_metrics,
    instances_from_binary,
    object_dice,
    object_f1,
    object_hausdorff,
)

__all__ = [
    "ConfusionMeter",
    "confusion_matrix",
    "glas_object_metrics",
    "instances_from_binary",
    "localisation_scores",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "scores_from_confusion",
]
