"""PLIMSeg's matching losses, prompt bank and matcher batches on hand-computed cases."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tissueseg.config import PLIMSegConfig, WSSSConfig
from tissueseg.data.prompts import BACKGROUND_PROMPTS, TEMPLATES, PromptBank, build_prompt_bank
from tissueseg.methods.plimseg import (
    active_loss_weights,
    background_suppression_loss,
    background_text_matching_loss,
    matcher_training_batch,
    positive_rate,
    matching_losses,
    object_text_matching_loss,
    prompt_embeddings,
)


class ColourMatcher(nn.Module):
    """A toy matcher: embedding = normalised (mean red, mean green, 0.05); text 'red' = (1, 0, 0)."""

    name = "colour"

    def __init__(self):
        super().__init__()
        self.table = {"red": torch.tensor([1.0, 0.0, 0.0]), "green": torch.tensor([0.0, 1.0, 0.0]),
                      "blank": torch.tensor([0.0, 0.0, 1.0])}

    def encode_image(self, images):
        means = images.mean(dim=(2, 3))[:, :2]
        return F.normalize(torch.cat([means, torch.full_like(means[:, :1], 0.05)], 1), dim=-1)

    def encode_text(self, prompts):
        return F.normalize(torch.stack([self.table[p.split()[-1].strip(".")] for p in prompts]), dim=-1)

    def similarity(self, image_embeddings, text_embeddings):
        return image_embeddings @ text_embeddings.t()


def red_green_image():
    """Left half pure red, right half pure green, (1, 3, 8, 8)."""
    image = torch.zeros(1, 3, 8, 8)
    image[0, 0, :, :4] = 1.0
    image[0, 1, :, 4:] = 1.0
    return image


def test_losses_match_their_formulas_and_clamp_like_clims():
    s = torch.tensor([0.5, 0.25])
    assert object_text_matching_loss(s).item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2)
    assert background_text_matching_loss(s).item() == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)
    pairs = torch.tensor([[0.5, 0.75], [0.0, 0.0]])
    assert background_suppression_loss(pairs).item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2, rel=1e-4)
    assert object_text_matching_loss(torch.tensor([-0.3])).item() == pytest.approx(-math.log(1e-4))
    assert background_text_matching_loss(torch.tensor([1.0])).item() == pytest.approx(-math.log(1e-4), rel=1e-3)


def test_full_activation_reduces_to_matching_the_whole_image():
    matcher = ColourMatcher()
    image = red_green_image()
    cams = torch.full((1, 2, 2, 2), 30.0)  # σ = 1 everywhere
    labels = torch.tensor([[1.0, 0.0]])
    class_text = matcher.encode_text(["red", "green"])
    background_text = matcher.encode_text(["blank"])
    weights = {"otm": 10.0, "btm": 24.0, "cbs": 1.0, "area": 0.2}
    losses = matching_losses(matcher, image, cams, labels, class_text, background_text, weights)
    s_whole = (matcher.encode_image(image) * class_text[0]).sum()
    assert losses["otm"].item() == pytest.approx(10 * -math.log(s_whole.item()), rel=1e-5)
    # the background view is black: its embedding is (0, 0, 1), orthogonal to "red"
    assert losses["btm"].item() == pytest.approx(24 * -math.log(1 - 1e-4), rel=1e-3)
    s_blank = (matcher.encode_image(image) * background_text[0]).sum()
    assert losses["cbs"].item() == pytest.approx(-math.log(1 - s_blank.item()), rel=1e-5)
    assert losses["area"].item() == pytest.approx(0.2, rel=1e-5)


def test_gradients_grow_the_map_over_the_class_and_never_reach_the_matcher():
    matcher = ColourMatcher()
    image = red_green_image()
    class_text = matcher.encode_text(["red", "green"])
    background_text = matcher.encode_text(["blank"])
    for loss_name in ("otm", "btm"):
        cams = torch.zeros(1, 2, 8, 8, requires_grad=True)  # σ = 0.5: both halves half-in
        losses = matching_losses(matcher, image, cams, torch.tensor([[1.0, 0.0]]), class_text, background_text,
                                 {loss_name: 1.0})
        assert set(losses) == {loss_name}
        losses[loss_name].backward()
        grad = cams.grad[0, 0]
        assert torch.all(grad[:, :4] < 0), loss_name  # descending raises P_red on the red half …
        assert torch.all(grad[:, 4:] > 0), loss_name  # … and lowers it on the green half
        assert torch.all(cams.grad[0, 1] == 0)  # class 1 is not in the label


def test_only_positive_pairs_count_and_empty_labels_give_zero():
    matcher = ColourMatcher()
    images = torch.cat([red_green_image(), red_green_image()])
    class_text = matcher.encode_text(["red", "green"])
    background_text = matcher.encode_text(["blank"])
    cams = torch.zeros(2, 2, 4, 4, requires_grad=True)
    zero = matching_losses(matcher, images, cams, torch.zeros(2, 2), class_text, background_text, {"otm": 1.0})
    assert zero["otm"].item() == 0.0
    zero["otm"].backward()  # still part of the graph: the step can call backward on it
    both = matching_losses(matcher, images, cams, torch.tensor([[1.0, 1.0], [0.0, 0.0]]), class_text,
                           background_text, {"otm": 1.0})
    red = matching_losses(matcher, images[:1], cams[:1], torch.tensor([[1.0, 0.0]]), class_text, background_text,
                          {"otm": 1.0})
    green = matching_losses(matcher, images[:1], cams[:1], torch.tensor([[0.0, 1.0]]), class_text,
                            background_text, {"otm": 1.0})
    assert both["otm"].item() == pytest.approx((red["otm"].item() + green["otm"].item()) / 2, rel=1e-5)


def test_loss_switches_and_weights_come_from_the_config():
    assert active_loss_weights(PLIMSegConfig()) == {"otm": 10.0, "btm": 24.0, "cbs": 1.0, "area": 0.2}
    assert active_loss_weights(PLIMSegConfig(losses=["otm", "area"], area_weight=0.5)) == {"otm": 10.0, "area": 0.5}
    assert active_loss_weights(PLIMSegConfig(cbs_weight=0.0)) == {"otm": 10.0, "btm": 24.0, "area": 0.2}
    with pytest.raises(ValueError):
        PLIMSegConfig(losses=["otm", "typo"])
    config = WSSSConfig.model_validate({"method": "plimseg", "data": {"path": "x"},
                                        "plimseg": {"matcher": {"kind": "quiltnet", "weights": "/w"}}})
    assert config.plimseg.matcher.kind == "quiltnet"


def test_prompt_bank_defaults_overrides_and_errors():
    bank = build_prompt_bank(["tumor_epithelial", "necrosis", "mystery_cells"])
    assert bank.classes[0][0] == "tumor epithelial tissue"
    assert bank.classes[2] == ("mystery cells tissue",)
    assert bank.templates == TEMPLATES and bank.background == BACKGROUND_PROMPTS
    assert bank.class_prompts(1)[:2] == ["necrosis tissue.", "an H&E stained histopathology image of necrosis tissue."]
    assert len(bank.background_prompts()) == len(BACKGROUND_PROMPTS) * len(TEMPLATES)
    custom = build_prompt_bank(["a", "b"], classes={"b": ["bee"]}, templates=["{}"], background=["glass"])
    assert custom.class_prompts(1) == ["bee"] and custom.background_prompts() == ["glass"]
    with pytest.raises(ValueError, match="not label classes"):
        build_prompt_bank(["a"], classes={"z": ["zed"]})
    with pytest.raises(ValueError, match="exactly one"):
        build_prompt_bank(["a"], templates=["no slot"])
    with pytest.raises(ValueError, match="empty"):
        build_prompt_bank(["a"], background=[])
    with pytest.raises(ValueError, match="empty prompt list for a"):
        build_prompt_bank(["a"], classes={"a": []})
    with pytest.raises(ValueError, match="empty prompt list for templates"):
        build_prompt_bank(["a"], templates=[])


def test_prompt_embeddings_ensemble_and_normalise():
    class Table:
        def encode_text(self, prompts):
            vectors = {"x1": [1.0, 0.0], "x2": [0.0, 1.0], "xg": [3.0, 4.0]}
            return torch.tensor([vectors[p] for p in prompts])

    bank = PromptBank(classes=(("1", "2"),), templates=("x{}",), background=("g",))
    classes, background = prompt_embeddings(Table(), bank)
    assert torch.allclose(classes, torch.tensor([[1.0, 1.0]]) / math.sqrt(2))
    assert torch.allclose(background, torch.tensor([[0.6, 0.8]]))


def test_matcher_batches_add_black_and_white_background_views():
    images = torch.rand(3, 3, 4, 4)
    labels = torch.tensor([[1, 0], [0, 1], [1, 1]])
    batch, targets = matcher_training_batch(images, labels, n_background=2)
    assert batch.shape == (5, 3, 4, 4)
    assert torch.all(batch[3] == 0) and torch.all(batch[4] == 1)
    assert targets.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]


def test_matcher_bias_starts_at_the_label_prior():
    from pathlib import Path

    from tissueseg.data.sample import Record

    records = [Record(Path(f"{i}.png"), "train", "c", labels=labels)
               for i, labels in enumerate([(1, 0, 0), (1, 1, 0), (0, 0, 1), None])]
    # 4 positives over 3 labelled images × (3 class rows + 3 background rows)
    assert positive_rate(records, 6) == pytest.approx(4 / 18)
    assert positive_rate(records[3:], 6) is None
    assert positive_rate([Record(Path("a.png"), "train", "c", labels=(1, 1))], 2) == 0.99
