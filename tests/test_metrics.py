"""Hand-computed checks of tissueseg.metrics (confusion conventions and GlaS objects)."""

import math
import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import hausdorff_distance

from tissueseg.metrics import (
    ConfusionMeter,
    confusion_matrix,
    glas_object_metrics,
    instances_from_binary,
    localisation_scores,
    object_dice,
    object_f1,
    object_hausdorff,
    scores_from_confusion,
)

# ---------------------------------------------------------------------------
# Pixel metrics. 3x4 maps, K = 3, 255 = unlabelled.
TARGET = np.array([[0, 0, 1, 1], [0, 2, 1, 1], [2, 2, 2, 255]])
PRED = np.array([[0, 1, 1, 1], [0, 2, 2, 1], [2, 0, 2, 0]])
# (t, p) pairs, the 255 pixel skipped:
#   row 0: (0,0) (0,1) (1,1) (1,1)   row 1: (0,0) (2,2) (1,2) (1,1)
#   row 2: (2,2) (2,0) (2,2)
# -> cm = [[2,1,0],[0,3,1],[1,0,3]], 11 pixels.
CM = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 3]])


def test_confusion_matrix_rows_are_ground_truth_and_ignore_is_skipped():
    cm = confusion_matrix(PRED, TARGET, 3, ignore_index=255)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)


def test_confusion_matrix_accepts_torch_and_batches():
    batch_pred = torch.from_numpy(np.stack([PRED, PRED]))
    batch_target = torch.from_numpy(np.stack([TARGET, TARGET]))
    np.testing.assert_array_equal(
        confusion_matrix(batch_pred, batch_target, 3, ignore_index=255), 2 * CM
    )


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED[:2], TARGET, 3, ignore_index=255)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(PRED + 1, TARGET, 3, ignore_index=255)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(PRED, TARGET, 3)  # 255 counted without ignore_index


def test_plain_scores_hand_computed():
    meter = ConfusionMeter(3)
    meter.update(PRED, TARGET)
    s = meter.compute()
    # tp = [2,3,3], gt rows = [3,4,4], pred cols = [3,4,4]
    # IoU = 2/(3+3-2), 3/(4+4-3), 3/(4+4-3) = 0.5, 0.6, 0.6
    assert s["iou"] == pytest.approx([0.5, 0.6, 0.6])
    assert s["miou"] == pytest.approx(1.7 / 3)
    # FwIoU = (3*0.5 + 4*0.6 + 4*0.6) / 11 = 6.3 / 11
    assert s["fwiou"] == pytest.approx(6.3 / 11)
    assert s["pixel_accuracy"] == pytest.approx(8 / 11)
    # Dice = 2tp/(row+col) = 4/6, 6/8, 6/8
    assert s["dice"] == pytest.approx([2 / 3, 0.75, 0.75])
    assert s["mdice"] == pytest.approx((2 / 3 + 1.5) / 3)
    assert "mjaccard" not in s


def test_plain_absent_class_is_nan_and_skipped_but_false_positive_class_counts():
    # K = 4: class 3 never appears in pred or target -> NaN, left out of means.
    meter = ConfusionMeter(4)
    meter.update(PRED, TARGET)
    s = meter.compute()
    assert math.isnan(s["iou"][3]) and math.isnan(s["dice"][3])
    assert s["miou"] == pytest.approx(1.7 / 3)
    assert s["mdice"] == pytest.approx((2 / 3 + 1.5) / 3)
    # Predict class 3 on one class-0 pixel: IoU_3 = 0/(0+1-0) = 0 enters the mean;
    # IoU_0 = 1/(3+2-1) = 0.25 -> mIoU = (0.25 + 0.6 + 0.6 + 0) / 4.
    pred = PRED.copy()
    pred[0, 0] = 3
    meter.reset()
    meter.update(pred, TARGET)
    s = meter.compute()
    assert s["iou"] == pytest.approx([0.25, 0.6, 0.6, 0.0])
    assert s["miou"] == pytest.approx(1.45 / 4)


def test_empty_meter_gives_nan_without_warnings():
    meter = ConfusionMeter(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = meter.compute()
    assert math.isnan(s["miou"]) and math.isnan(s["pixel_accuracy"]) and math.isnan(s["fwiou"])


def test_streaming_merge_and_reset_match_one_shot():
    whole = ConfusionMeter(3)
    whole.update(PRED, TARGET)
    a, b = ConfusionMeter(3), ConfusionMeter(3)
    a.update(PRED[:1], TARGET[:1])
    b.update(torch.from_numpy(PRED[1:]), torch.from_numpy(TARGET[1:]))
    a.merge(b)
    np.testing.assert_array_equal(a.matrix, whole.matrix)
    assert a.compute() == whole.compute()
    with pytest.raises(ValueError):
        a.merge(ConfusionMeter(3, convention="unisemalign"))
    a.reset()
    assert a.matrix.sum() == 0 and a.matrix.shape == (3, 3)


# ---------------------------------------------------------------------------
# MLPS / LUAD-HistoSeg: tissue 0..3, background index 4.
MLPS_TARGET = np.array([[0, 0, 1, 4], [1, 1, 4, 4], [3, 3, 3, 255]])
MLPS_PRED = np.array([[0, 1, 1, 0], [1, 4, 2, 4], [3, 3, 0, 1]])
# pred[gt == 4] = 4, then (t, p): (0,0) (0,1) (1,1) (4,4) | (1,1) (1,4) (4,4) (4,4)
#   | (3,3) (3,3) (3,0) -> rows 0: [1,1,0,0,0], 1: [0,2,0,0,1], 2: 0,
#   3: [1,0,0,2,0], 4: [0,0,0,0,3]; hist[4,4] = 0 leaves 8 pixels.


def test_mlps_forces_background_and_excludes_it():
    meter = ConfusionMeter(5, convention="mlps")
    assert meter.background_index == 4
    meter.update(MLPS_PRED, MLPS_TARGET)
    # The stored matrix is the official hist before hist[4,4] = 0.
    assert meter.matrix[4, 4] == 3 and meter.matrix[4, :4].sum() == 0
    s = meter.compute()
    # tp = [1,2,0,2], rows = [2,3,0,3], cols = [2,3,0,2] (+1 tissue->bg in col 4)
    # IoU = 1/3, 2/4, 0/0 (NaN), 2/(3+2-2); background reported as NaN.
    assert s["iou"][:4] == pytest.approx([1 / 3, 0.5, float("nan"), 2 / 3], nan_ok=True)
    assert math.isnan(s["iou"][4])
    assert s["miou"] == pytest.approx(0.5)  # nanmean(1/3, 1/2, 2/3)
    # FwIoU = 2/8 * 1/3 + 3/8 * 1/2 + 3/8 * 2/3 = 25/48
    assert s["fwiou"] == pytest.approx(25 / 48)
    # Accuracy without background pixels; the tissue->bg pixel is an error: 5/8.
    assert s["pixel_accuracy"] == pytest.approx(5 / 8)
    # Dice = 2/4, 4/6, NaN, 4/5 -> mDice over the three defined tissue classes.
    assert s["dice"][:4] == pytest.approx([0.5, 2 / 3, float("nan"), 0.8], nan_ok=True)
    assert s["mdice"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


def test_mlps_scores_equal_forced_counts_on_unforced_matrix():
    # Zeroing the background row == forcing pred on background ground truth.
    raw = confusion_matrix(MLPS_PRED, MLPS_TARGET, 5, ignore_index=255)
    assert raw[4, :4].sum() == 2  # two background pixels predicted as tissue
    assert scores_from_confusion(raw, "mlps")["fwiou"] == pytest.approx(25 / 48)
    # ... while "plain" on the same pixels keeps background (tp_4 = 1).
    assert scores_from_confusion(raw)["pixel_accuracy"] == pytest.approx(6 / 11)


def test_background_index_validation():
    with pytest.raises(ValueError):
        ConfusionMeter(3, convention="plain", background_index=0)
    with pytest.raises(ValueError):
        ConfusionMeter(3, convention="mlps", background_index=3)
    with pytest.raises(ValueError):
        ConfusionMeter(3, convention="official")


# ---------------------------------------------------------------------------
# UniSemAlign (binary GlaS/CRAG, background 0).
UNI_TARGET = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 255]])
UNI_PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]])
# cm = [[5,1],[1,4]] over 11 labelled pixels.


def test_localisation_merges_every_non_background_class():
    # CM with background 0: bg→bg 2, bg→fg 1, fg→bg 1 (the (2, 0) pixel), fg→fg 3+1+0+3 = 7
    # (the (1, 2) pixel is a class confusion, so it counts as found foreground).
    scores = localisation_scores(CM, background_index=0)
    assert scores["foreground_iou"] == pytest.approx(7 / 9)
    assert scores["background_iou"] == pytest.approx(2 / 4)
    assert scores["miou"] == pytest.approx((7 / 9 + 1 / 2) / 2)
    # background 2: bg→bg 3, bg→fg 1, fg→bg 1 (the (1, 2) pixel), fg→fg 2+1+0+3 = 6
    scores = localisation_scores(CM, background_index=2)
    assert scores["foreground_iou"] == pytest.approx(6 / 8)
    assert scores["background_iou"] == pytest.approx(3 / 5)
    # background IoU is the background class's own IoU
    assert scores["background_iou"] == pytest.approx(scores_from_confusion(CM)["iou"][2])
    with pytest.raises(ValueError, match="background_index"):
        localisation_scores(CM, background_index=3)


def test_localisation_of_a_map_without_background_is_nan_for_background():
    scores = localisation_scores(np.array([[0, 0], [0, 4]]), background_index=0)
    assert scores["foreground_iou"] == 1.0 and math.isnan(scores["background_iou"])
    assert scores["miou"] == 1.0


def test_unisemalign_binary_hand_computed():
    meter = ConfusionMeter(2, convention="unisemalign")
    meter.update(UNI_PRED, UNI_TARGET)
    np.testing.assert_array_equal(meter.matrix, [[5, 1], [1, 4]])
    s = meter.compute()
    # IoU_0 = 5/(6+6-5) = 5/7, IoU_1 = 4/(5+5-4) = 2/3
    assert s["iou"] == pytest.approx([5 / 7, 2 / 3])
    assert s["mjaccard"] == pytest.approx((5 / 7 + 2 / 3) / 2)  # 29/42
    assert s["miou"] == s["mjaccard"]
    # Dice_0 = 10/12, Dice_1 = 8/10
    assert s["mdice"] == pytest.approx((5 / 6 + 0.8) / 2)
    assert s["dice_fg"] == pytest.approx(0.8)
    assert s["jaccard_fg"] == pytest.approx(2 / 3)


def test_unisemalign_absent_class_scores_zero_and_is_averaged():
    meter = ConfusionMeter(3, convention="unisemalign")
    meter.update(UNI_PRED, UNI_TARGET)
    s = meter.compute()
    # Official eps denominators: class 2 (never seen) -> IoU = Dice = 0, kept in np.mean.
    assert s["iou"] == pytest.approx([5 / 7, 2 / 3, 0.0])
    assert s["mjaccard"] == pytest.approx((5 / 7 + 2 / 3) / 3)
    assert s["dice_fg"] == pytest.approx((0.8 + 0.0) / 2)
    # The plain convention skips it instead.
    assert scores_from_confusion(meter.matrix)["miou"] == pytest.approx((5 / 7 + 2 / 3) / 2)


# ---------------------------------------------------------------------------
# GlaS object metrics. 4x6 instance maps.
GT = np.array(
    [
        [1, 1, 0, 0, 2, 2],
        [1, 1, 0, 0, 2, 2],
        [0, 0, 0, 0, 0, 0],
        [3, 0, 0, 0, 0, 0],
    ]
)
SEG = np.array(
    [
        [1, 1, 0, 0, 0, 2],
        [1, 0, 0, 0, 0, 2],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 3, 0, 0],
    ]
)
# |G| = 4, 4, 1 (9); |S| = 3, 2, 1 (6).
# S1 in G1: 3/4 > 0.5 TP.  S2 in G2: 2/4 = 0.5, not > 0.5 -> FP.  S3 no overlap -> FP.


def test_object_f1_hand_computed():
    r = object_f1(SEG, GT)
    # TP = 1, FP = 2, FN = 3 - 1 = 2 -> P = R = F1 = 1/3
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 2)
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3)


def test_object_dice_hand_computed():
    # Dice(S1,G1) = 6/7, Dice(S2,G2) = 4/6, S3 and G3 unmatched -> 0.
    # S side: 3/6 * 6/7 + 2/6 * 2/3 = 41/63; G side: 4/9 * 6/7 + 4/9 * 2/3 = 128/189
    # -> (123/189 + 128/189) / 2 = 251/378
    assert object_dice(SEG, GT) == pytest.approx(251 / 378)


def test_object_hausdorff_hand_computed():
    # H(S1,G1) = 1 (pixel (1,1) to S1), H(S2,G2) = 1.
    # S3 = (3,3) overlaps nothing: H to G1 = sqrt(18), G2 = sqrt(13), G3 = 3 -> 3.
    # G3 = (3,0) overlaps nothing: H to S1 = sqrt(10), S2 = sqrt(34), S3 = 3 -> 3.
    # S side: (3*1 + 2*1 + 1*3)/6 = 4/3; G side: (4*1 + 4*1 + 1*3)/9 = 11/9
    # -> (4/3 + 11/9) / 2 = 23/18
    assert object_hausdorff(SEG, GT) == pytest.approx(23 / 18)
    # Point-set Hausdorff equals skimage's on the two object masks.
    assert hausdorff_distance(SEG == 3, GT == 1) == pytest.approx(math.sqrt(18))


def test_glas_object_metrics_combines_all_three():
    r = glas_object_metrics(torch.from_numpy(SEG), GT)
    assert r["f1"] == pytest.approx(1 / 3)
    assert r["object_dice"] == pytest.approx(251 / 378)
    assert r["object_hausdorff"] == pytest.approx(23 / 18)


def test_max_overlap_partner_and_label_values_do_not_matter():
    gt = np.array([[1, 1, 1, 2, 2, 0]])
    seg = np.array([[7, 7, 7, 7, 7, 0]])  # one object over G1 (3 px) and G2 (2 px)
    r = glas_object_metrics(seg, gt)
    # S1 -> G1 (overlap 3 > 2), 3/3 covered: TP = 1, FP = 0, FN = 1 -> F1 = 2/3
    assert (r["precision"], r["recall"]) == pytest.approx((1.0, 0.5))
    assert r["f1"] == pytest.approx(2 / 3)
    # Dice(S1,G1) = 6/8, Dice(G2,S1) = 4/7:
    # (3/4 + (3/5 * 3/4 + 2/5 * 4/7)) / 2 = (21/28 + 19/28) / 2 = 5/7
    assert r["object_dice"] == pytest.approx(5 / 7)
    # H(S1,G1) = 2 (col 4 to col 2), H(G2,S1) = 3 (col 0 to col 3):
    # (1 * 2 + (3/5 * 2 + 2/5 * 3)) / 2 = 2.2
    assert r["object_hausdorff"] == pytest.approx(2.2)


def test_perfect_segmentation():
    r = glas_object_metrics(GT * 10, GT)
    assert (r["f1"], r["object_dice"], r["object_hausdorff"]) == (1.0, 1.0, 0.0)


@pytest.mark.parametrize(
    ("seg", "gt", "expected"),
    [
        (np.zeros_like(GT), np.zeros_like(GT), (1.0, 1.0, 1.0, 1.0, 0.0)),
        (np.zeros_like(GT), GT, (0.0, 0.0, 0.0, 0.0, math.inf)),
        (SEG, np.zeros_like(GT), (0.0, 0.0, 0.0, 0.0, math.inf)),
    ],
    ids=["both-empty", "no-prediction", "no-ground-truth"],
)
def test_empty_maps_follow_glas_code(seg, gt, expected):
    r = glas_object_metrics(seg, gt)
    got = (r["f1"], r["precision"], r["recall"], r["object_dice"], r["object_hausdorff"])
    assert got == expected


def test_instances_from_binary_connectivity_and_min_size():
    mask = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=bool)
    # 8-connectivity joins (1,2) to (0,1): components of 3, 1 and 1 pixels.
    labels = instances_from_binary(mask)
    np.testing.assert_array_equal(
        labels, [[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [2, 0, 0, 3]]
    )
    # min_size = 2 drops the single pixels; the survivor keeps label 1.
    np.testing.assert_array_equal(instances_from_binary(mask, min_size=2), (labels == 1) * 1)


def test_boolean_prediction_is_labelled_into_components():
    # SEG > 0 as a bool mask has the same three components as SEG.
    assert object_f1(SEG > 0, GT) == object_f1(SEG, GT)
    # An int 0/1 map is a single object (overlaps G1 by 3, G2 by 2, G3 by 0):
    # partner G1, 3/4 covered -> TP = 1, FP = 0, FN = 2.
    r = object_f1((SEG > 0).astype(int), GT)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 2)
