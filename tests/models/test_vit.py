import pytest
import timm
import torch

from tissueseg.models import create_backbone, list_backbones
from tissueseg.models.deeplab import DeepLabV3Plus
from tissueseg.models.encoder import NormalizedEncoder
from tissueseg.models.vit import ViTTokenBackbone

TINY = {"depth": 10, "embed_dim": 32, "num_heads": 2}


def tiny_vit(**kw):
    torch.manual_seed(0)
    return ViTTokenBackbone("vit_tiny_patch16_224", blocks=[2, 9], **{**TINY, **kw})


def test_token_maps_of_blocks_2_and_9_projected_to_256_and_2048():
    backbone = tiny_vit()
    assert backbone.feature_channels == [256, 2048] and backbone.reductions == [16, 16]
    assert len(backbone.vit.blocks) == 10  # blocks after 9 would be pruned
    x = torch.rand(2, 3, 64, 96)  # dynamic image size: any multiple of the patch
    low, high = backbone(x)
    assert low.shape == (2, 256, 4, 6) and high.shape == (2, 2048, 4, 6)
    # the maps are the patch tokens of blocks 2 and 9 (class token dropped), projected by 1x1 convs
    tokens = backbone.vit.patch_embed(x)
    tokens = backbone.vit._pos_embed(tokens)
    seen = []
    for i, block in enumerate(backbone.vit.blocks):
        tokens = block(tokens)
        seen.append(tokens[:, backbone.vit.num_prefix_tokens:].transpose(1, 2).reshape(2, 32, 4, 6))
    expected_low = backbone.projections[0](seen[2])
    expected_high = backbone.projections[1](seen[9])
    assert torch.allclose(low, expected_low, atol=1e-5) and torch.allclose(high, expected_high, atol=1e-5)


def test_frozen_vit_trains_only_the_projections():
    backbone = tiny_vit(frozen=True)
    backbone.train()
    assert not backbone.vit.training
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projections.") for n in trainable)
    low, high = backbone(torch.rand(1, 3, 32, 32))
    (low.sum() + high.sum()).backward()
    assert all(p.grad is None for p in backbone.vit.parameters())
    assert backbone.projections[1].weight.grad is not None


def test_registered_vit_backbones_feed_deeplab():
    assert {"uni_vit_l16", "vit_tiny_tokens", "vit_base_tokens"} <= set(list_backbones())
    backbone = create_backbone("vit_tiny_tokens")
    model = DeepLabV3Plus(NormalizedEncoder(backbone), num_classes=2, channels=16)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_local_weights_are_loaded_and_checked(tmp_path):
    # a complete checkpoint (classifier head, final norm, blocks past 9) with a training-wrapper prefix
    torch.manual_seed(1)
    full = timm.create_model("vit_tiny_patch16_224", num_classes=5, **{**TINY, "depth": 12})
    path = tmp_path / "vit.pth"
    torch.save({"model": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    loaded = ViTTokenBackbone("vit_tiny_patch16_224", pretrained=path, blocks=[2, 9], **{**TINY, "depth": 12})
    assert len(loaded.vit.blocks) == 10
    assert torch.equal(loaded.vit.blocks[5].attn.qkv.weight, full.blocks[5].attn.qkv.weight)
    with pytest.raises(ValueError, match="not a checkpoint of this ViT"):
        ViTTokenBackbone("vit_tiny_patch16_224", pretrained=path, blocks=[2, 9], depth=10, embed_dim=64, num_heads=2)


def test_bad_blocks_are_clear_errors():
    with pytest.raises(ValueError, match="block 12 does not exist"):
        ViTTokenBackbone("vit_tiny_patch16_224", blocks=[2, 12], **{**TINY, "depth": 10})
    with pytest.raises(ValueError, match="increasing"):
        ViTTokenBackbone("vit_tiny_patch16_224", blocks=[9, 2], **TINY)
