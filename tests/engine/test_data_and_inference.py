import numpy as np
import torch

from tissueseg.data.sample import DatasetInfo
from tissueseg.engine.data import IGNORE, LabelSpace
from tissueseg.engine.evaluate import meter_for, summarize_scores
from tissueseg.models.inference import predict_probabilities, window_starts

LUAD = DatasetInfo("luad-histoseg", ["te", "nec", "lym", "tas", "background"], ["te", "nec", "lym", "tas"],
                   [(0, 0, 0)] * 5, ignore_index=4, background_index=4)
EBHI = DatasetInfo("ebhi-seg", ["background", "a", "b"], ["a", "b"], [(0, 0, 0)] * 3, background_index=0)
FOLDER = DatasetInfo("folder", ["background", "a"], ["background", "a"], [(0, 0, 0)] * 2, ignore_index=255,
                     background_index=0)


def test_label_space_maps_between_network_classes_and_mask_indices():
    luad = LabelSpace.from_info(LUAD)
    assert luad.to_mask.tolist() == [0, 1, 2, 3]
    assert luad.mask_to_label(np.array([0, 3, 4])).tolist() == [0, 3, IGNORE]
    ebhi = LabelSpace.from_info(EBHI)
    assert ebhi.to_mask.tolist() == [1, 2]
    assert ebhi.mask_to_label(np.array([0, 1, 2])).tolist() == [IGNORE, 0, 1]
    assert ebhi.label_to_mask(torch.tensor([1, 0])).tolist() == [2, 1]
    assert ebhi.labels_from_mask(np.array([[0, 2], [2, 0]])).tolist() == [0.0, 1.0]


def test_meter_convention_follows_the_dataset():
    luad = meter_for(LUAD)
    assert (luad.convention, luad.background_index) == ("mlps", 4)
    folder = meter_for(FOLDER)
    assert folder.convention == "plain"
    folder.update(np.array([[0, 1]]), np.array([[255, 1]]))  # the unannotated pixel is skipped
    assert folder.matrix.sum() == 1 and folder.compute()["miou"] == 1.0
    ebhi = meter_for(EBHI)
    ebhi.update(np.array([[0, 1, 2, 2]]), np.array([[0, 1, 2, 1]]))
    # IoU: background 1/1, a 1/2, b 1/2 → mean 2/3
    assert abs(ebhi.compute()["miou"] - 2 / 3) < 1e-9


def test_summary_reports_localisation_where_background_is_scored():
    ebhi = meter_for(EBHI)
    ebhi.update(np.array([[0, 1, 2, 2]]), np.array([[0, 1, 2, 1]]))
    summary = summarize_scores(ebhi, EBHI)
    # the b-for-a pixel is a class confusion, not a localisation error: fg 3/3, bg 1/1
    assert summary["localisation"] == {"foreground_iou": 1.0, "background_iou": 1.0, "miou": 1.0}
    assert summary["iou"]["a"] == 0.5
    luad = meter_for(LUAD)  # background excluded from scoring: no localisation row
    luad.update(np.array([[0, 1]]), np.array([[0, 4]]))
    assert "localisation" not in summarize_scores(luad, LUAD)


def test_window_starts_cover_and_end_flush():
    assert window_starts(100, 100, 50) == [0]
    assert window_starts(250, 100, 70) == [0, 70, 140, 150]


def test_sliding_window_equals_full_image_for_a_pointwise_model():
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 4, 1)
    images = torch.rand(2, 3, 50, 70)
    full = predict_probabilities(pointwise, images)
    tiled = predict_probabilities(pointwise, images, window=32, stride=20)
    assert torch.allclose(full, tiled, atol=1e-6)
    flipped = predict_probabilities(pointwise, images, flip=True)
    assert torch.allclose(full, flipped, atol=1e-6)  # a pointwise model is flip-equivariant
    assert torch.allclose(full.sum(1), torch.ones(2, 50, 70))


def test_named_test_split_without_val_keeps_test_and_carves_val_from_train_cases():
    from pathlib import Path

    from tissueseg.data.sample import Record, TissueDataset
    from tissueseg.engine.data import resolve_splits

    records = [Record(Path(f"{split}_{i}.png"), split, f"{split}-p{i // 2}")
               for split, n in (("train", 40), ("testA", 10)) for i in range(n)]
    ds = TissueDataset(Path("."), FOLDER, records, [], loader=None)
    parts = resolve_splits(ds, None, None, "testA", (0.7, 0.15, 0.15), seed=0)
    assert [r.split for r in parts["test"]] == ["testA"] * 10
    assert {r.split for r in parts["train"] + parts["val"]} == {"train"}
    assert len(parts["train"]) + len(parts["val"]) == 40 and 4 <= len(parts["val"]) <= 10
    assert not {r.case_id for r in parts["train"]} & {r.case_id for r in parts["val"]}
    # unnamed, the old fallback stays: validation on the test split when only train and test exist
    records = [Record(r.image_path, "test" if r.split == "testA" else r.split, r.case_id) for r in records]
    same = resolve_splits(TissueDataset(Path("."), FOLDER, records, [], loader=None), None, None, None,
                          (0.7, 0.15, 0.15), seed=0)
    assert same["val"] == same["test"] and len(same["train"]) == 40
