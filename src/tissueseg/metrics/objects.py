"""GlaS object-level metrics on instance maps.

Definitions follow Sirinukunwattana et al., "Gland segmentation in colon
histology images: The GlaS challenge contest", Medical Image Analysis 35
(2017), section 3.2, as implemented by the official MATLAB evaluation
(``evaluation_v6``: ``F1score.m``, ``ObjectDice.m``, ``ObjectHausdorff.m``,
``Hausdorff.m``; read through its Python translation in
DIAGNijmegen/neural-odes-segmentation ``metrics.py``):

* the partner of an object is the object of the other map with the largest
  pixel overlap (background excluded; ties go to the smaller label, like
  MATLAB ``mode``);
* F1: a predicted object is a true positive when it covers *more than* 50 % of
  the area of its partner ground-truth object; other predicted objects are
  false positives, ground-truth objects without a true positive are false
  negatives;
* object Dice / Hausdorff: ``0.5 * (sum_i w_i M(S_i, G*(S_i)) +
  sum_j v_j M(G_j, S*(G_j)))`` with area weights ``w_i = |S_i| / sum |S|`` and
  ``v_j = |G_j| / sum |G|``. An object with no overlapping partner has Dice 0;
  for the Hausdorff its partner is the object of the other map at the smallest
  Hausdorff distance.

Hausdorff distances are Euclidean, in pixels, between the full pixel sets of
the two objects (as ``Hausdorff.m``, not between boundaries), computed with
``scipy.spatial.distance.directed_hausdorff`` in both directions; this equals
``skimage.metrics.hausdorff_distance`` on the two object masks.

Edge cases follow the official code: no objects in either map gives F1 = Dice
= 1 and Hausdorff = 0; objects in only one map give F1 = Dice = 0 and
Hausdorff = inf (``Hausdorff.m`` returns inf against an empty set). The
challenge scores each image and averages over images; ``object_f1`` also
returns the TP/FP/FN counts for callers who prefer to pool them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.spatial.distance import directed_hausdorff
from skimage.measure import label
from skimage.segmentation import relabel_sequential

from tissueseg.metrics.confusion import ArrayLike, _as_numpy


def instances_from_binary(mask: ArrayLike, min_size: int = 0) -> np.ndarray:
    """Label the connected components of a binary mask.

    Parameters
    ----------
    mask : array_like
        Foreground where non-zero.
    min_size : int
        Components with fewer pixels are removed.

    Returns
    -------
    np.ndarray of int64
        Instance map, 0 = background, objects numbered ``1..n`` in raster
        order, using full (8-connected in 2-D) connectivity like MATLAB
        ``bwlabel`` and ``skimage.measure.label``.
    """
    labels = label(_as_numpy(mask) > 0).astype(np.int64)
    keep = np.bincount(labels.ravel(), minlength=1) >= min_size
    keep[0] = False
    return (np.cumsum(keep) * keep)[labels]


class _Pairing(NamedTuple):
    """Overlap table of two instance maps relabelled to ``1..n``."""

    pred: np.ndarray
    gt: np.ndarray
    overlap: np.ndarray  # (n_pred, n_gt) pixel counts, background excluded
    pred_area: np.ndarray
    gt_area: np.ndarray


def _instances(instances: ArrayLike) -> np.ndarray:
    """Sequential instance map; boolean input is labelled into components."""
    instances = _as_numpy(instances)
    if instances.dtype == bool:
        return instances_from_binary(instances)
    if instances.size and instances.min() < 0:
        raise ValueError("instance labels must be non-negative")
    return relabel_sequential(instances.astype(np.int64))[0]


def _pair(pred_instances: ArrayLike, gt_instances: ArrayLike) -> _Pairing:
    """Relabel both maps and count their pairwise overlaps with one bincount."""
    pred = _instances(pred_instances)
    gt = _instances(gt_instances)
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} != gt shape {gt.shape}")
    n_pred, n_gt = int(pred.max(initial=0)), int(gt.max(initial=0))
    table = np.bincount(
        (pred * (n_gt + 1) + gt).ravel(), minlength=(n_pred + 1) * (n_gt + 1)
    ).reshape(n_pred + 1, n_gt + 1)
    return _Pairing(pred, gt, table[1:, 1:], table[1:].sum(axis=1), table[:, 1:].sum(axis=0))


def _f1(pairing: _Pairing) -> dict[str, float]:
    n_pred, n_gt = pairing.overlap.shape
    if n_pred == 0 or n_gt == 0:
        both_empty = float(n_pred == n_gt)
        return {
            "f1": both_empty,
            "precision": both_empty,
            "recall": both_empty,
            "tp": 0,
            "fp": n_pred,
            "fn": n_gt,
        }
    partner = pairing.overlap.argmax(axis=1)
    covered = pairing.overlap[np.arange(n_pred), partner] / pairing.gt_area[partner]
    tp = int((covered > 0.5).sum())
    precision, recall = tp / n_pred, tp / n_gt
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_gt - tp,
    }


def _dice(pairing: _Pairing) -> float:
    n_pred, n_gt = pairing.overlap.shape
    if n_pred == 0 or n_gt == 0:
        return float(n_pred == n_gt)

    def one_side(overlap: np.ndarray, area: np.ndarray, other_area: np.ndarray) -> float:
        # An object without overlap gets intersection 0, i.e. Dice 0.
        dice = 2 * overlap.max(axis=1) / (area + other_area[overlap.argmax(axis=1)])
        return float((area * dice).sum() / area.sum())

    return 0.5 * (
        one_side(pairing.overlap, pairing.pred_area, pairing.gt_area)
        + one_side(pairing.overlap.T, pairing.gt_area, pairing.pred_area)
    )


def _point_sets(instances: np.ndarray) -> list[np.ndarray]:
    """Pixel coordinates ``(n_i, ndim)`` of each object ``1..n``, in label order."""
    coords = np.argwhere(instances > 0)
    labels = instances[tuple(coords.T)]
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=int(instances.max(initial=0)) + 1)[1:]
    return np.split(coords[order].astype(np.float64), np.cumsum(counts)[:-1])


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance between two non-empty point sets."""
    return max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])


def _object_hausdorff(pairing: _Pairing) -> float:
    n_pred, n_gt = pairing.overlap.shape
    if n_pred == 0 or n_gt == 0:
        return 0.0 if n_pred == n_gt else float("inf")
    pred_points = _point_sets(pairing.pred)
    gt_points = _point_sets(pairing.gt)

    def one_side(
        overlap: np.ndarray,
        area: np.ndarray,
        points: list[np.ndarray],
        other_points: list[np.ndarray],
    ) -> float:
        partner = overlap.argmax(axis=1)
        dist = np.empty(len(points))
        for i, p in enumerate(points):
            if overlap[i, partner[i]] > 0:
                dist[i] = _hausdorff(p, other_points[partner[i]])
            else:
                dist[i] = min(_hausdorff(p, q) for q in other_points)
        return float((area * dist).sum() / area.sum())

    return 0.5 * (
        one_side(pairing.overlap, pairing.pred_area, pred_points, gt_points)
        + one_side(pairing.overlap.T, pairing.gt_area, gt_points, pred_points)
    )


def object_f1(pred_instances: ArrayLike, gt_instances: ArrayLike) -> dict[str, float]:
    """GlaS object-level detection F1 of one image.

    Parameters
    ----------
    pred_instances, gt_instances : array_like of int or bool
        Instance maps (0 = background); boolean masks are first labelled into
        connected components with :func:`instances_from_binary`.

    Returns
    -------
    dict
        ``f1``, ``precision``, ``recall`` and the integer counts ``tp``, ``fp``,
        ``fn`` (TP: predicted object covering > 50 % of its max-overlap ground
        truth object, GlaS ``F1score.m``).
    """
    return _f1(_pair(pred_instances, gt_instances))


def object_dice(pred_instances: ArrayLike, gt_instances: ArrayLike) -> float:
    """Area-weighted GlaS object Dice of one image (``ObjectDice.m``).

    See the module docstring for the definition and edge cases.
    """
    return _dice(_pair(pred_instances, gt_instances))


def object_hausdorff(pred_instances: ArrayLike, gt_instances: ArrayLike) -> float:
    """Area-weighted GlaS object Hausdorff distance of one image, in pixels.

    Unmatched objects are paired with the nearest object of the other map in
    Hausdorff distance (``ObjectHausdorff.m``); see the module docstring.
    """
    return _object_hausdorff(_pair(pred_instances, gt_instances))


def glas_object_metrics(pred_instances: ArrayLike, gt_instances: ArrayLike) -> dict[str, float]:
    """All GlaS object metrics of one image from a single overlap table.

    Returns
    -------
    dict
        The keys of :func:`object_f1` plus ``object_dice`` and
        ``object_hausdorff``.
    """
    pairing = _pair(pred_instances, gt_instances)
    return {
        **_f1(pairing),
        "object_dice": _dice(pairing),
        "object_hausdorff": _object_hausdorff(pairing),
    }
