"""The label-trained matcher: same interface as the CLIP backends, calibrated similarity."""

import pytest
import torch

from tissueseg.models.encoder import build_encoder
from tissueseg.models.matcher import LabelTrainedMatcher


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("efficientnet_lite0", pretrained=False)


def test_embeddings_are_unit_norm_and_differentiable_in_the_image(encoder):
    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    matcher = LabelTrainedMatcher(encoder, [["a"], ["b"]], text, "fixed", "efficientnet_lite0").eval()
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    emb = matcher.encode_image(images)
    assert emb.shape == (2, 3) and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    emb.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert torch.allclose(matcher.encode_text(["b", "a"]), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    assert matcher.name == "label-trained matcher (efficientnet_lite0 + fixed)"
    with pytest.raises(KeyError, match="retrain"):
        matcher.encode_text(["c"])


def test_similarity_is_the_sigmoid_matching_probability(encoder):
    matcher = LabelTrainedMatcher(encoder, [["a"], ["b"]], None, "learnable", "efficientnet_lite0", dim=4)
    assert matcher.text.requires_grad  # learnable text table
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), dim=-1)
    text = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    s = matcher.similarity(image, text)
    expected = torch.sigmoid(torch.tensor([[10.0 - 5.0, 0.0 - 5.0, -10.0 - 5.0]]))  # exp(log 10)·cos − 5
    assert torch.allclose(s, expected, atol=1e-6)


def test_forward_scores_every_row_with_its_ensembled_prompts(encoder):
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    matcher = LabelTrainedMatcher(encoder, [["a1", "a2"], ["bg"]], text, "fixed", "efficientnet_lite0").eval()
    rows = matcher.row_embeddings()
    assert torch.allclose(rows, torch.tensor([[0.7071068, 0.7071068], [0.6, 0.8]]), atol=1e-6)
    images = torch.rand(3, 3, 32, 32)
    logits = matcher(images)
    assert logits.shape == (3, 2)
    assert torch.allclose(logits, matcher.logits(matcher.encode_image(images), rows))
