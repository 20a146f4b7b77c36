"""create_model builds every network from its spec; model files of older releases still load."""

from dataclasses import asdict

import pytest
import torch

from tissueseg.models.bundle import (BUNDLE_FORMAT, ClassifierSpec, MatcherSpec, ModelMeta, SegmenterSpec,
                                     UniSemAlignSpec, create_model, load_predictor, save_bundle)
from tissueseg.models.classifier import PDAClassifier
from tissueseg.models.deeplab import DeepLabV3Plus
from tissueseg.models.matcher import LabelTrainedMatcher
from tissueseg.models.unisemalign import UniSemAlignNet

SEG = SegmenterSpec("efficientnet_lite0", 3, 16, 16)


@pytest.mark.parametrize("spec, kind", [
    (SEG, DeepLabV3Plus),
    (ClassifierSpec("efficientnet_lite0", 3), PDAClassifier),
    (MatcherSpec("efficientnet_lite0", [["a tumour"], ["glass"]], "learnable"), LabelTrainedMatcher),
    (UniSemAlignSpec(SEG, text=None, prototypes=True, embed_dim=8), UniSemAlignNet),
])
def test_create_model_builds_each_spec(spec, kind):
    assert isinstance(create_model(spec), kind)


def test_create_model_refuses_an_unknown_spec():
    with pytest.raises(TypeError, match="no network"):
        create_model(object())


def test_a_bundle_round_trips_and_an_older_one_with_tile_size_loads(tmp_path):
    torch.manual_seed(0)
    segmenter = create_model(SEG)
    meta = ModelMeta("test", ["a", "b", "c"], [(0, 0, 0)] * 3, [0, 1, 2], window=96, train_crop=64)
    path = save_bundle(tmp_path / "model.pt", segmenter, SEG, meta)
    loaded = load_predictor(path)
    assert loaded.meta.window == 96 and loaded.meta.train_crop == 64
    old_meta = {k: v for k, v in asdict(meta).items() if k not in ("window", "train_crop")}
    torch.save({"format": BUNDLE_FORMAT, "meta": {**old_meta, "tile_size": 128}, "segmenter_spec": asdict(SEG),
                "segmenter": segmenter.state_dict(), "classifier_spec": None, "classifier": None}, tmp_path / "old.pt")
    old = load_predictor(tmp_path / "old.pt")
    assert old.meta.window == 128 and old.meta.train_crop is None
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(old(x), loaded(x))
