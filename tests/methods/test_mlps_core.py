import numpy as np
import pytest
import torch
from torch import nn

from tissueseg.data.background import white_background
from tissueseg.methods.mlps import (classification_gate, multi_layer_grad_cam, multi_layer_pseudo_supervision_loss,
                                    normalize_cams, pda_gamma, pseudo_mask)
from tissueseg.models.classifier import PDAClassifier, class_activation_maps, progressive_dropout_attention


class TinyBackbone(nn.Module):
    """Two conv stages; returns both maps like a registry backbone."""

    feature_channels = [4, 6]
    reductions = [2, 4]

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        return [a, torch.relu(self.b(a))]


def test_pda_drops_values_above_gamma_max_and_averages_over_classes():
    # one channel, two classes with weights 1 and 2: CAM_1 = F, CAM_2 = 2F
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    weight = torch.tensor([[[[1.0]]], [[[2.0]]]])
    out = progressive_dropout_attention(features, weight, gamma=0.6)
    # β_1 = 0.6·4 = 2.4 → kept [1, 2, 0, 0]; β_2 = 0.6·8 = 4.8 → kept [2, 4, 0, 0]; A = mean = [1.5, 3, 0, 0]
    expected_attention = torch.tensor([[[[1.5, 3.0], [0.0, 0.0]]]])
    assert torch.allclose(out, features * expected_attention)


def test_pda_gamma_schedule():
    assert pda_gamma(2, start_epoch=3) is None
    assert pda_gamma(3, start_epoch=3) == 1.0
    assert pda_gamma(5, start_epoch=3, decay=0.985) == pytest.approx(0.985 ** 2)
    assert pda_gamma(100, start_epoch=3, decay=0.98, floor=0.65) == 0.65
    # official WSSS-Tissue: γ counts from epoch 0, so it is below 1 at the first PDA epoch
    assert pda_gamma(3, start_epoch=3, decay=0.98, origin=0) == pytest.approx(0.98 ** 3)
    assert pda_gamma(2, start_epoch=3, origin=0) is None


def test_grad_cam_at_last_layer_equals_cam_over_area_for_gap_linear_head():
    torch.manual_seed(0)
    model = PDAClassifier(TinyBackbone(), num_classes=3)
    images = torch.rand(2, 3, 16, 16)
    (last,) = multi_layer_grad_cam(model, images, layers=[1])
    model.eval()
    cam = model.cam(images)  # (2, 3, 4, 4)
    expected = torch.nn.functional.interpolate(cam / 16.0, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(last, expected, atol=1e-6)
    both = multi_layer_grad_cam(model, images, layers=[0, 1])
    assert [t.shape for t in both] == [(2, 3, 16, 16)] * 2
    assert model.training is False  # restored to the mode it was in


def test_normalize_cams_global_and_per_class():
    cams = torch.tensor([[[[0.0, 2.0]], [[4.0, 1.0]], [[9.0, 9.0]]]])  # (1, 3, 1, 2)
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    g = normalize_cams(cams, labels, "global")
    assert torch.allclose(g, torch.tensor([[[[0.0, 0.5]], [[1.0, 0.25]], [[0.0, 0.0]]]]))
    p = normalize_cams(cams, labels, "per_class")
    assert torch.allclose(p, torch.tensor([[[[0.0, 1.0]], [[1.0, 0.25]], [[0.0, 0.0]]]]))
    with pytest.raises(ValueError, match="normalisation"):
        normalize_cams(cams, labels, "bogus")


def test_pseudo_mask_respects_labels_and_background():
    cams = torch.tensor([[[[0.2, 0.9]], [[0.0, 0.1]], [[1.0, 1.0]]]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])  # class 2 is not in the label although its CAM is highest
    bg = torch.tensor([[[False, True]]])
    mask = pseudo_mask(cams, labels, bg, background_index=4)
    assert mask.tolist() == [[[0, 4]]]
    assert pseudo_mask(cams, labels, None, None).tolist() == [[[0, 0]]]


def test_white_background_removes_small_white_specks():
    image = np.zeros((20, 20, 3), np.uint8)
    image[:10, :10] = 255  # 100 px white region: kept
    image[15:17, 15:17] = 255  # 4 px speck: removed
    bg = white_background(image, threshold=200, min_size=50)
    assert bg[:10, :10].all() and not bg[15:17, 15:17].any() and bg.sum() == 100


def test_multi_layer_loss_is_weighted_sum_and_ignores_background():
    logits = torch.tensor([[[[2.0]], [[0.0]]]])  # (1, 2, 1, 1)
    pm_a = torch.tensor([[[0]]])
    pm_b = torch.tensor([[[1]]])
    pm_bg = torch.tensor([[[4]]])
    ce0 = torch.nn.functional.cross_entropy(logits, pm_a)
    ce1 = torch.nn.functional.cross_entropy(logits, pm_b)
    loss = multi_layer_pseudo_supervision_loss(logits, [pm_a, pm_b, pm_a], ignore_index=4)
    assert loss.item() == pytest.approx((0.2 * ce0 + 0.2 * ce1 + 0.6 * ce0).item())
    only_bg = multi_layer_pseudo_supervision_loss(logits, [pm_bg, pm_a, pm_a], weights=(1.0, 0.0, 0.0),
                                                  ignore_index=4)
    assert only_bg.item() == 0.0  # every pixel ignored: no signal, and no NaN that would stop training


def test_classification_gate_zeroes_unlikely_classes():
    probs = torch.full((1, 3, 2, 2), 1 / 3)
    gated = classification_gate(probs, torch.tensor([[0.9, 0.1, 0.11]]), threshold=0.1)
    assert gated[0, 1].eq(0).all() and gated[0, 0].eq(1 / 3).all() and gated[0, 2].eq(1 / 3).all()


def test_cam_function_matches_manual():
    f = torch.rand(1, 5, 3, 3)
    w = torch.randn(2, 5, 1, 1)
    manual = torch.relu(torch.einsum("kc,nchw->nkhw", w[:, :, 0, 0], f))
    assert torch.allclose(class_activation_maps(f, w), manual, atol=1e-6)


class WindowAwareClassifier(nn.Module):
    """Class 0 is called present where channel 0 is bright on average, class 1 where channel 1 is;
    the CAMs are the two channels themselves."""

    def forward(self, x):
        return torch.stack([x[:, 0].mean((1, 2)) - 5, 10 * (x[:, 1].mean((1, 2)) - 0.25)], 1)

    def cam(self, x):
        return x[:, :2]


def test_cam_baseline_gates_each_training_sized_window_by_its_own_classification():
    from types import SimpleNamespace

    from tissueseg.data.sample import DatasetInfo
    from tissueseg.engine.data import LabelSpace
    from tissueseg.methods.mlps import cam_predictor

    # 16 × 32 image: left half channel 0 = 10; right half channel 0 = 2 (weak, but its CAM beats
    # class 1's 1 under one min-max over the whole image) and channel 1 = 1.
    image = torch.zeros(1, 3, 16, 32)
    image[:, 0, :, :16], image[:, 0, :, 16:], image[:, 1, :, 16:] = 10.0, 2.0, 1.0
    info = DatasetInfo("folder", ["a", "b"], ["a", "b"], [(0, 0, 0)] * 2, ignore_index=255)
    run = SimpleNamespace(config=SimpleNamespace(segmenter=SimpleNamespace(gate_threshold=0.1),
                                                 pseudo_masks=SimpleNamespace(normalization="global"),
                                                 data=SimpleNamespace(crop_size=16)),
                          space=LabelSpace.from_info(info), background_detection=False)
    windowed = cam_predictor(run, WindowAwareClassifier())(image)[0]
    assert (windowed[:, :16] == 0).all() and (windowed[:, 16:] == 1).all()
    # the whole image at once (crop as large as the image) calls both classes present and class 0 wins
    run.config.data.crop_size = 32
    whole = cam_predictor(run, WindowAwareClassifier())(image)[0]
    assert (whole == 0).all()
