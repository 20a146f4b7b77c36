"""Streaming confusion-matrix metrics for semantic segmentation.

Three conventions are supported:

``"plain"``
    Every class counts; means are ``nanmean`` over classes whose union is
    non-empty (a class absent from both prediction and ground truth is NaN and
    skipped), as in the ``Evaluator`` of ChuHan89/WSSS-Tissue
    (``tool/metrics.py``).
``"mlps"``
    MLPS / LUAD-HistoSeg / BCSS-WSSS evaluation of ChuHan89/WSSS-Tissue
    (``tool/iouutils.py::scores`` and ``3_train_stage2.py::validation``): the
    prediction is overwritten with the background index wherever the ground
    truth is background (``pred[gt == 4] = 4``), the background/background cell
    is zeroed (``hist[4, 4] = 0``) and IoU, mIoU, FwIoU, Dice and mDice are taken
    over the tissue classes only. Pixel accuracy is ``trace / sum`` of that
    zeroed matrix, so it *excludes* background ground-truth pixels, while a
    tissue pixel predicted as background still counts as an error.
``"unisemalign"``
    thailevann/UniSemAlign ``evaluate.py`` (CorrMatch ``intersectionAndUnion``):
    intersections and unions are summed over the data set,
    ``iou = I / (U + eps)`` and ``dice = 2I / (U + I + eps)`` so a class absent
    from both maps scores 0 and *is* included in the plain ``np.mean`` over all
    classes (background and foreground); ``mjaccard`` equals ``miou``. The
    foreground scores (``Jaccard_fg`` / ``Dice_fg``, class 1 of a binary task in
    the official code) are generalised to the mean over every class except
    ``background_index``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    ArrayLike = np.ndarray | torch.Tensor
else:
    ArrayLike = Any

Convention = Literal["plain", "mlps", "unisemalign"]
_CONVENTIONS = ("plain", "mlps", "unisemalign")


def _as_numpy(array: ArrayLike) -> np.ndarray:
    """Return ``array`` as a numpy array (torch tensors are detached to CPU)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def confusion_matrix(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Pixel confusion matrix of a label map against its ground truth.

    Parameters
    ----------
    pred, target : array_like of int
        Predicted and ground-truth class indices, numpy arrays or torch tensors
        of identical (any) shape.
    num_classes : int
        Number of classes ``K``.
    ignore_index : int, optional
        Ground-truth value whose pixels are skipped (e.g. 255 = unlabelled).

    Returns
    -------
    np.ndarray of int64, shape (K, K)
        ``matrix[t, p]`` counts pixels of ground-truth class ``t`` predicted as
        ``p`` (rows = ground truth), computed with one ``np.bincount`` as in
        ``_generate_matrix`` of ChuHan89/WSSS-Tissue ``tool/metrics.py``.

    Raises
    ------
    ValueError
        If the shapes differ, or a counted value lies outside ``[0, K)``.
    """
    pred = _as_numpy(pred)
    target = _as_numpy(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    pred = pred.ravel().astype(np.int64)
    target = target.ravel().astype(np.int64)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    for name, values in (("pred", pred), ("target", target)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} has values outside [0, {num_classes})")
    counts = np.bincount(target * num_classes + pred, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def _divide(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """Element-wise ``num / den`` with ``empty`` where ``den == 0``."""
    out = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """``np.nanmean`` that returns NaN without a warning on an all-NaN input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values.size else float("nan")


def scores_from_confusion(
    matrix: np.ndarray,
    convention: Convention = "plain",
    background_index: int | None = None,
) -> dict[str, Any]:
    """Segmentation scores from a confusion matrix (rows = ground truth).

    Parameters
    ----------
    matrix : np.ndarray, shape (K, K)
        Confusion matrix as returned by :func:`confusion_matrix`.
    convention : {"plain", "mlps", "unisemalign"}
        Which official evaluation to reproduce (see the module docstring).
    background_index : int, optional
        Background class. Must be ``None`` for ``"plain"``; for ``"mlps"`` it is
        the excluded class (default ``K - 1``, index 4 of LUAD-HistoSeg and
        BCSS-WSSS); for ``"unisemalign"`` it is the class left out of
        ``dice_fg`` / ``jaccard_fg`` (default 0).

    Returns
    -------
    dict
        ``iou`` and ``dice`` (lists of length K, NaN for a class with empty
        union under ``"plain"``/``"mlps"`` and for the excluded background under
        ``"mlps"``), ``miou``, ``fwiou``, ``pixel_accuracy``, ``mdice``; for
        ``"unisemalign"`` also ``mjaccard``, ``dice_fg`` and ``jaccard_fg``.
        An empty matrix gives NaN scores.

    Notes
    -----
    ``fwiou = sum_c freq_c * iou_c`` over classes with ``freq_c > 0``, where
    ``freq_c`` is the ground-truth share of class ``c`` (WSSS-Tissue
    ``Frequency_Weighted_Intersection_over_Union``). Under ``"mlps"`` the whole
    background row is zeroed, which equals forcing ``pred[gt == bg] = bg`` and
    then ``hist[bg, bg] = 0``, so an already forced matrix is left unchanged
    apart from that cell.
    """
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
    num_classes = matrix.shape[0]
    background_index = _default_background(convention, background_index, num_classes)
    matrix = np.asarray(matrix, dtype=np.float64).copy()
    evaluated = np.ones(num_classes, dtype=bool)
    if convention == "mlps":
        matrix[background_index, :] = 0
        evaluated[background_index] = False

    tp = np.diag(matrix)
    gt_count = matrix.sum(axis=1)
    pred_count = matrix.sum(axis=0)
    union = gt_count + pred_count - tp
    total = matrix.sum()
    empty = 0.0 if convention == "unisemalign" else np.nan
    iou = _divide(tp, union, empty)
    dice = _divide(2 * tp, gt_count + pred_count, empty)
    iou[~evaluated] = np.nan
    dice[~evaluated] = np.nan

    freq = gt_count / max(total, 1.0)
    weighted = evaluated & (freq > 0)
    scores: dict[str, Any] = {
        "iou": iou.tolist(),
        "miou": _nanmean(iou[evaluated]),
        "fwiou": float((freq[weighted] * iou[weighted]).sum()) if total else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "dice": dice.tolist(),
        "mdice": _nanmean(dice[evaluated]),
    }
    if convention == "unisemalign":
        foreground = np.arange(num_classes) != background_index
        scores["mjaccard"] = scores["miou"]
        scores["jaccard_fg"] = _nanmean(iou[foreground])
        scores["dice_fg"] = _nanmean(dice[foreground])
    return scores


def localisation_scores(matrix: np.ndarray, background_index: int) -> dict[str, float]:
    """Foreground-vs-background IoU of a confusion matrix: every non-background class merged into one.

    Scores where tissue is found regardless of which class it is called, so localisation and class
    confusion can be read apart (a lesion pixel predicted as another lesion class counts as correct).

    Parameters
    ----------
    matrix : np.ndarray, shape (K, K)
        Confusion matrix, rows = ground truth (:func:`confusion_matrix`).
    background_index : int
        The background class.

    Returns
    -------
    dict
        ``foreground_iou``, ``background_iou`` and their mean ``miou``; NaN where a union is empty.
        ``background_iou`` equals the background class's own IoU (merging the other classes leaves its
        row and column sums unchanged); ``foreground_iou`` is what is new.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if not 0 <= background_index < matrix.shape[0]:
        raise ValueError(f"background_index must be in [0, {matrix.shape[0]})")
    is_bg = np.arange(matrix.shape[0]) == background_index
    binary = np.array([[matrix[np.ix_(g, p)].sum() for p in (~is_bg, is_bg)] for g in (~is_bg, is_bg)])
    tp = np.diag(binary)
    iou = _divide(tp, binary.sum(0) + binary.sum(1) - tp, np.nan)
    return {"foreground_iou": float(iou[0]), "background_iou": float(iou[1]), "miou": _nanmean(iou)}


def _default_background(
    convention: str, background_index: int | None, num_classes: int
) -> int | None:
    """Resolve the convention-dependent default background index."""
    if convention == "plain":
        if background_index is not None:
            raise ValueError('background_index is unused by the "plain" convention')
        return None
    if background_index is None:
        return num_classes - 1 if convention == "mlps" else 0
    if not 0 <= background_index < num_classes:
        raise ValueError(f"background_index must be in [0, {num_classes})")
    return background_index


class ConfusionMeter:
    """Accumulate a confusion matrix over batches and score it.

    The ``(K, K)`` int64 :attr:`matrix` is the only state, so distributed runs
    can all-reduce (sum) it, or combine meters with :meth:`merge`.

    Parameters
    ----------
    num_classes : int
        Number of classes ``K`` (for ``"mlps"`` the tissue classes plus the
        background index, e.g. 5 for LUAD-HistoSeg).
    convention : {"plain", "mlps", "unisemalign"}
        Evaluation protocol; see :func:`scores_from_confusion`.
    background_index : int, optional
        See :func:`scores_from_confusion` (defaults: ``K - 1`` for ``"mlps"``,
        0 for ``"unisemalign"``).
    ignore_index : int, optional
        Ground-truth value whose pixels are skipped (default 255).
    """

    def __init__(
        self,
        num_classes: int,
        convention: Convention = "plain",
        background_index: int | None = None,
        ignore_index: int | None = 255,
    ) -> None:
        if convention not in _CONVENTIONS:
            raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
        self.num_classes = num_classes
        self.convention = convention
        self.background_index = _default_background(convention, background_index, num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Zero the accumulated matrix."""
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch of label maps (any matching shapes, numpy or torch).

        Under ``"mlps"`` the prediction is first set to the background index
        wherever the ground truth is background (``pred[gt == 4] = 4`` of
        WSSS-Tissue ``3_train_stage2.py``).
        """
        pred = _as_numpy(pred)
        target = _as_numpy(target)
        if self.convention == "mlps":
            pred = np.where(target == self.background_index, self.background_index, pred)
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def merge(self, other: ConfusionMeter) -> None:
        """Add the counts of a meter with the same configuration."""
        same = (other.num_classes, other.convention, other.background_index)
        if same != (self.num_classes, self.convention, self.background_index):
            raise ValueError("cannot merge meters with different configurations")
        self.matrix += other.matrix

    def compute(self) -> dict[str, Any]:
        """Scores of the accumulated matrix; see :func:`scores_from_confusion`."""
        return scores_from_confusion(self.matrix, self.convention, self.background_index)
