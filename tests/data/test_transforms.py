import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from tissueseg.data.stain import od_to_rgb
from tissueseg.data.transforms import (
    MacenkoNormalize,
    RandomHEDJitter,
    RandomRotate90,
    apply_pair,
    build_eval_transforms,
    build_train_transforms,
)


def _pair(n=32, seed=0):
    """Image whose channel 0 is ``mask * 50``; the mask is made of 8x8 blocks of classes 0..4."""
    rng = np.random.default_rng(seed)
    mask = np.kron(rng.integers(0, 5, size=(n // 8, n // 8)), np.ones((8, 8), dtype=np.int64))
    image = rng.integers(0, 256, size=(n, n, 3), dtype=np.uint8)
    image[..., 0] = mask * 50
    return image, mask


def _he_image(n=32, seed=0):
    rng = np.random.default_rng(seed)
    conc = rng.uniform(0.2, 1.5, size=(n, n, 2))
    return od_to_rgb(conc @ np.array([[0.644, 0.717, 0.267], [0.216, 0.801, 0.558]]))


def test_rotate90_is_exact_and_paired():
    image, mask = _pair()
    seen = set()
    for seed in range(24):
        torch.manual_seed(seed)
        img_t, mask_t = apply_pair(RandomRotate90(), image, mask)
        assert isinstance(img_t, tv_tensors.Image) and isinstance(mask_t, tv_tensors.Mask)
        k = next(k for k in range(4) if np.array_equal(img_t.permute(1, 2, 0).numpy(), np.rot90(image, k)))
        assert np.array_equal(mask_t.numpy(), np.rot90(mask, k))
        seen.add(k)
    assert seen == {0, 1, 2, 3}


def test_rotate90_non_square_and_rejects_boxes():
    img = tv_tensors.Image(torch.arange(6, dtype=torch.uint8).reshape(1, 2, 3))
    torch.manual_seed(0)
    shapes = {RandomRotate90()(img).shape[-2:] for _ in range(20)}
    assert shapes == {torch.Size([2, 3]), torch.Size([3, 2])}
    boxes = tv_tensors.BoundingBoxes([[0, 0, 1, 1]], format="XYXY", canvas_size=(2, 3))
    with pytest.raises(TypeError, match="BoundingBoxes"):
        RandomRotate90()(img, boxes)


def test_flips_and_rotation_keep_mask_aligned_exactly():
    image, mask = _pair()
    t = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRotate90()])
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        img_t, mask_t = apply_pair(t, image, mask)
        assert torch.equal(img_t[0].long(), mask_t * 50)
        changed += not np.array_equal(mask_t.numpy(), mask)
    assert changed >= 5


def test_train_transforms_keep_mask_aligned_through_crop():
    image, mask = _pair(64)
    t = build_train_transforms(48, color_jitter=0.0, hed_sigma=0.0)
    for seed in range(10):
        torch.manual_seed(seed)
        img_t, mask_t = apply_pair(t, image, mask)
        assert img_t.shape == (3, 48, 48) and img_t.dtype == torch.float32
        assert mask_t.shape == (48, 48) and mask_t.dtype == torch.int64
        assert set(mask_t.unique().tolist()) <= set(np.unique(mask).tolist())  # nearest: no new labels
        # away from label edges the (bilinearly resized) image still encodes the mask
        m = mask_t.numpy()
        interior = np.ones_like(m, dtype=bool)
        for dy in (-2, -1, 0, 1, 2):
            for dx in (-2, -1, 0, 1, 2):
                interior &= np.roll(m, (dy, dx), axis=(0, 1)) == m
        interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False
        assert interior.sum() > 200
        assert np.abs(img_t[0].numpy()[interior] * 255 - m[interior] * 50).max() < 2.0


def test_multi_mask_list_and_stack_transformed_identically():
    image, mask = _pair()
    second = (4 - mask) * 3  # another layer, a function of the first
    t = build_train_transforms(24, color_jitter=0.0, hed_sigma=0.0)
    for seed in range(5):
        torch.manual_seed(seed)
        _, masks = apply_pair(t, image, [mask, second])
        assert isinstance(masks, list) and len(masks) == 2
        assert torch.equal(masks[1], (4 - masks[0]) * 3)
        torch.manual_seed(seed)
        _, stacked = apply_pair(t, image, np.stack([mask, second]))
        assert stacked.shape == (2, 24, 24) and torch.equal(stacked, torch.stack(masks))


def test_maskless_path_matches_paired_image():
    image, mask = _pair()
    t = build_train_transforms(24)
    torch.manual_seed(7)
    img_alone, none = apply_pair(t, image)
    torch.manual_seed(7)
    img_paired, _ = apply_pair(t, image, mask)
    assert none is None and isinstance(img_alone, tv_tensors.Image)
    assert torch.equal(img_alone, img_paired)


def test_colour_transforms_touch_image_only():
    image = _he_image()
    mask = np.random.default_rng(0).integers(0, 5, size=image.shape[:2])
    for t in (RandomHEDJitter(0.2, 0.1), v2.ColorJitter(0.3, 0.3, 0.3)):
        torch.manual_seed(0)
        img_t, mask_t = apply_pair(t, image, mask)
        assert img_t.dtype == torch.uint8
        assert np.array_equal(mask_t.numpy(), mask)
        assert np.abs(img_t.permute(1, 2, 0).numpy().astype(int) - image).mean() > 1.0


def test_hed_jitter_transform_zero_is_identity_on_float():
    img = tv_tensors.Image(torch.from_numpy(_he_image()).permute(2, 0, 1).float() / 255.0)
    out = RandomHEDJitter(0.0, 0.0)(img)
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.float32
    assert (out - img).abs().max() <= 1.0 / 255.0


def test_macenko_transform_and_factories():
    image = _he_image(seed=1)
    mask = np.zeros(image.shape[:2], dtype=np.int64)
    img_t, mask_t = apply_pair(MacenkoNormalize(), image, mask)
    assert img_t.dtype == torch.uint8 and img_t.shape == (3, 32, 32) and torch.equal(mask_t, torch.from_numpy(mask))
    assert np.abs(img_t.permute(1, 2, 0).numpy().astype(int) - image).mean() > 1.0
    # a normaliser fitted on the image itself leaves it (nearly) unchanged
    self_fit, _ = apply_pair(MacenkoNormalize.from_image(image), image)
    assert np.abs(self_fit.permute(1, 2, 0).numpy().astype(int) - image).mean() < 2.0

    ev = build_eval_transforms(macenko=True)
    out, _ = apply_pair(ev, image, mask)
    assert out.dtype == torch.float32 and torch.allclose(out, img_t.float() / 255.0)
    plain, _ = apply_pair(build_eval_transforms(), image)
    assert torch.allclose(plain, torch.from_numpy(image).permute(2, 0, 1).float() / 255.0)
    assert any(isinstance(s, MacenkoNormalize) for s in build_train_transforms(16, macenko=True).transforms)
    with pytest.raises(ValueError, match="square"):
        build_train_transforms((16, 24))


def test_crop_scaled_crop_keeps_the_pixel_scale_and_equals_torchvision_on_crop_sized_images():
    from tissueseg.data.transforms import CropScaledResizedCrop

    rng = np.random.default_rng(0)
    tile = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    plain = build_train_transforms(32, color_jitter=0.0, hed_sigma=0.0)
    scaled = build_train_transforms(32, color_jitter=0.0, hed_sigma=0.0, scale_of="crop")
    torch.manual_seed(5)
    a, _ = apply_pair(plain, tile, np.zeros((32, 32), np.uint8))
    torch.manual_seed(5)
    b, _ = apply_pair(scaled, tile, np.zeros((32, 32), np.uint8))
    assert torch.equal(a, b)  # an image of the crop's size: torchvision's crop exactly
    crop = CropScaledResizedCrop(32, scale=(0.5, 1.0))
    big = [tv_tensors.Image(torch.zeros(3, 120, 200))]
    areas = [p["height"] * p["width"] / 32 ** 2 for p in (crop.make_params(big) for _ in range(100))]
    assert 0.45 <= min(areas) and max(areas) <= 1.1  # of the crop's area, not of the 120×200 image
    assert crop.scale == (0.5, 1.0)
    with pytest.raises(ValueError, match="scale_of"):
        build_train_transforms(32, scale_of="tile")
