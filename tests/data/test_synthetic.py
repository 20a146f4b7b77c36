"""Tests of the procedural H&E generator and its LUAD-HistoSeg-layout writer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from tissueseg.data.io import read_label_image, read_rgb
from tissueseg.data.synthetic import (BACKGROUND_INDEX, CLASS_NAMES, NUM_CLASSES, PALETTE, generate_patch,
                                      image_labels, jitter_stain, random_stain, write_synthetic_dataset)

TRAINING_NAME = re.compile(r"^(S\d{4})-(\d{3})-\[([01]) ([01]) ([01]) ([01])\]\.png$")
EVAL_NAME = re.compile(r"^(S\d{4})-(\d{3})\.png$")


def test_constants_follow_luad_histoseg():
    assert CLASS_NAMES == ("tumor_epithelial", "necrosis", "lymphocyte", "tumor_associated_stroma")
    assert BACKGROUND_INDEX == NUM_CLASSES == 4
    assert PALETTE == ((205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0), (255, 255, 255))


def test_generate_patch_is_deterministic_by_seed():
    image, mask = generate_patch(np.random.default_rng(3), size=64)
    again_image, again_mask = generate_patch(np.random.default_rng(3), size=64)
    other_image, _ = generate_patch(np.random.default_rng(4), size=64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == np.int64
    assert np.array_equal(image, again_image) and np.array_equal(mask, again_mask)
    assert not np.array_equal(image, other_image)


def test_requested_classes_appear_and_look_like_he():
    rng = np.random.default_rng(0)
    image, mask = generate_patch(rng, size=96, classes_present=[1, 3, BACKGROUND_INDEX])
    assert image_labels(mask).tolist() == [0, 1, 0, 1]
    glass = image[mask == BACKGROUND_INDEX].astype(float)
    assert glass.mean() > 225  # white background
    tissue = image[mask != BACKGROUND_INDEX].astype(float)
    assert tissue[:, 1].mean() < tissue[:, 0].mean() - 20  # eosin pink: green absorbed most

    image, mask = generate_patch(rng, size=96, classes_present=[0])
    assert image_labels(mask).tolist() == [1, 0, 0, 0]
    assert (mask == BACKGROUND_INDEX).any()  # gland lumens
    with pytest.raises(ValueError, match="classes_present"):
        generate_patch(rng, classes_present=[7])


def test_stain_varies_between_cases_and_little_within():
    rng = np.random.default_rng(1)
    case_a, case_b = random_stain(rng), random_stain(rng)
    image_a = jitter_stain(rng, case_a)
    between = np.abs(case_a.vectors - case_b.vectors).max()
    within = np.abs(case_a.vectors - image_a.vectors).max()
    assert within < between
    assert np.allclose(np.linalg.norm(image_a.vectors, axis=1), 1.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    calls = []
    root = write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "luad", n_train=30, n_val=6, n_test=6,
                                   size=48, seed=5, labelled_fraction=0.25, cases=12,
                                   progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 42) for i in range(1, 43)]
    return root


def _case(name: str) -> str:
    return name.split("-")[0]


def test_layout_palette_and_readme(dataset):
    training = sorted(p.name for p in (dataset / "training").iterdir())
    assert len(training) == 30 and all(TRAINING_NAME.match(n) for n in training)
    assert sorted(p.name for p in (dataset / "training_mask").iterdir()) == training
    for split in ("val", "test"):
        images = sorted(p.name for p in (dataset / split / "img").iterdir())
        assert len(images) == 6 and all(EVAL_NAME.match(n) for n in images)
        assert sorted(p.name for p in (dataset / split / "mask").iterdir()) == images
    mask_file = Image.open(next((dataset / "val" / "mask").iterdir()))
    assert mask_file.mode == "P"
    assert mask_file.getpalette()[:15] == [c for rgb in PALETTE for c in rgb]
    assert read_rgb(dataset / "training" / training[0]).shape == (48, 48, 3)
    readme = (dataset / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "seed: 5" in readme and "tumor_associated_stroma" in readme


def test_file_name_labels_match_training_masks(dataset):
    seen = np.zeros(NUM_CLASSES, int)
    for path in sorted((dataset / "training").iterdir()):
        name_labels = [int(v) for v in TRAINING_NAME.match(path.name).groups()[2:]]
        mask = read_label_image(dataset / "training_mask" / path.name)
        assert mask.max() <= BACKGROUND_INDEX
        assert name_labels == image_labels(mask).tolist()
        assert sum(name_labels) >= 1
        seen += name_labels
    assert (seen > 0).all()  # every tissue class occurs somewhere


def test_cases_are_split_disjoint_and_shared_within(dataset):
    cases = {
        "training": {_case(p.name) for p in (dataset / "training").iterdir()},
        "val": {_case(p.name) for p in (dataset / "val" / "img").iterdir()},
        "test": {_case(p.name) for p in (dataset / "test" / "img").iterdir()},
    }
    assert not cases["training"] & cases["val"] and not cases["training"] & cases["test"]
    assert not cases["val"] & cases["test"]
    assert sum(len(c) for c in cases.values()) == 12
    assert len(cases["training"]) < 30  # several patches per case


def test_labelled_split_is_chosen_by_case(dataset):
    labelled = (dataset / "splits" / "labelled.txt").read_text().split("\n")[:-1]
    unlabelled = (dataset / "splits" / "unlabelled.txt").read_text().split("\n")[:-1]
    assert sorted(labelled + unlabelled) == sorted(p.name for p in (dataset / "training").iterdir())
    labelled_cases = {_case(n) for n in labelled}
    training_cases = {_case(n) for n in labelled + unlabelled}
    assert not labelled_cases & {_case(n) for n in unlabelled}
    assert len(labelled_cases) == round(0.25 * len(training_cases))


def test_writer_is_byte_identical_by_seed_and_guards_existing(tmp_path):
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    kwargs = dict(n_train=8, n_val=2, n_test=2, size=32, cases=5)
    first = files(write_synthetic_dataset(tmp_path / "a", seed=1, **kwargs))
    assert first == files(write_synthetic_dataset(tmp_path / "b", seed=1, **kwargs))
    assert first != files(write_synthetic_dataset(tmp_path / "c", seed=2, **kwargs))
    with pytest.raises(FileExistsError, match="overwrite"):
        write_synthetic_dataset(tmp_path / "a", seed=1, **kwargs)
    assert files(write_synthetic_dataset(tmp_path / "c", seed=1, overwrite=True, **kwargs)) == first


# --- learnability: colour alone is ambiguous, morphology decides ------------------------------------

def _patches(seed: int, n: int, size: int, per_case: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        if i % per_case == 0:
            case_stain = random_stain(rng)
        image, mask = generate_patch(rng, size, stain=jitter_stain(rng, case_stain))
        images.append(image)
        masks.append(mask)
    return np.stack(images), np.stack(masks)


def _tissue_miou(prediction: np.ndarray, mask: np.ndarray) -> float:
    """Mean IoU over the tissue classes, background pixels not scored."""
    scored = mask != BACKGROUND_INDEX
    ious = []
    for c in range(NUM_CLASSES):
        union = ((prediction == c) & scored | (mask == c)).sum()
        if union:
            ious.append(((prediction == c) & (mask == c)).sum() / union)
    return float(np.mean(ious))


def _colour_miou(train_images, train_masks, test_images, test_masks) -> float:
    """Best per-pixel colour classifier: nearest class mean in RGB or a Gaussian per class in OD."""
    tissue = train_masks != BACKGROUND_INDEX
    labels = train_masks[tissue]
    rgb, test_rgb = train_images[tissue].astype(float), test_images.astype(float)
    means = np.stack([rgb[labels == c].mean(0) for c in range(NUM_CLASSES)])
    nearest_mean = ((test_rgb[..., None, :] - means) ** 2).sum(-1).argmin(-1)

    od, test_od = -np.log((rgb + 1) / 256), -np.log((test_rgb + 1) / 256)
    log_likelihood = []
    for c in range(NUM_CLASSES):
        mean, cov = od[labels == c].mean(0), np.cov(od[labels == c].T) + 1e-6 * np.eye(3)
        d = test_od - mean
        log_likelihood.append(-0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
                              - 0.5 * np.linalg.slogdet(cov)[1] + np.log((labels == c).mean()))
    gaussian = np.argmax(log_likelihood, axis=0)
    return max(_tissue_miou(nearest_mean, test_masks), _tissue_miou(gaussian, test_masks))


def _small_cnn() -> nn.Module:
    def conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*conv(3, 16), *conv(16, 24, stride=2), *conv(24, 32), *conv(32, 48, stride=2),
                         *conv(48, 48, dilation=2), nn.Conv2d(48, NUM_CLASSES, 1))


def _cnn_miou(train_images, train_masks, test_images, test_masks, steps: int = 200) -> float:
    def to_tensor(images: np.ndarray) -> torch.Tensor:  # optical density per channel
        return -torch.log((torch.from_numpy(images).permute(0, 3, 1, 2).float() + 1) / 256)

    def predict_logits(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(model(x), size=x.shape[-2:], mode="bilinear", align_corners=False)

    x, y = to_tensor(train_images), torch.from_numpy(train_masks)
    torch.manual_seed(0)
    model = _small_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = torch.randint(len(x), (8,))
        stain_gain = torch.exp(0.2 * torch.randn(8, 3, 1, 1))  # stain augmentation
        loss = F.cross_entropy(predict_logits(x[batch] * stain_gain), y[batch], ignore_index=BACKGROUND_INDEX)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():  # recompute batch-norm statistics over the training set, then evaluate
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        model(x)
        model.eval()
        prediction = predict_logits(to_tensor(test_images)).argmax(1).numpy()
    return _tissue_miou(prediction, test_masks)


def learnability_scores(seed: int = 0, size: int = 64) -> tuple[float, float]:
    """(colour-only mIoU, small-CNN mIoU) on 60 training / 20 test patches from disjoint cases."""
    train_images, train_masks = _patches(seed, 60, size)
    test_images, test_masks = _patches(seed + 1000, 20, size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cnn = _cnn_miou(train_images, train_masks, test_images, test_masks)
    finally:
        torch.set_num_threads(threads)
    return _colour_miou(train_images, train_masks, test_images, test_masks), cnn


@pytest.mark.slow
def test_texture_not_colour_decides():
    colour, cnn = learnability_scores()
    print(f"tissue mIoU: colour-only {colour:.3f}, small CNN {cnn:.3f}")
    assert cnn > 0.4  # learnable: chance is about 0.15
    assert cnn > colour + 0.2


def test_synthetic_slide_is_a_mosaic_on_glass_written_as_a_pyramid(tmp_path):
    from tissueseg.data.synthetic import synthetic_slide, write_synthetic_slide
    from tissueseg.slides.readers import open_slide

    image, mask = synthetic_slide(np.random.default_rng(3), rows=2, cols=3, patch=64, margin=16)
    assert image.shape == (2 * 64 + 32, 3 * 64 + 32, 3) and mask.shape == image.shape[:2]
    assert (mask[:16] == BACKGROUND_INDEX).all() and (mask[:, -16:] == BACKGROUND_INDEX).all()
    assert image[:16].mean() > 230  # glass is bright
    tissue = mask[16:-16, 16:-16]
    assert (tissue != BACKGROUND_INDEX).mean() > 0.5 and len(np.unique(tissue)) >= 3
    again, _ = synthetic_slide(np.random.default_rng(3), rows=2, cols=3, patch=64, margin=16)
    assert np.array_equal(image, again)

    path = write_synthetic_slide(tmp_path / "s.tif", seed=3, rows=2, cols=3, patch=64, margin=16)
    reader = open_slide(path)
    assert reader.dimensions == (image.shape[1], image.shape[0]) and reader.mpp == pytest.approx(0.5, rel=1e-3)
    assert np.array_equal(read_label_image(tmp_path / "s_mask.png"), mask)
    region = reader.read_region((0, 0), 0, (image.shape[1], image.shape[0]))
    assert np.array_equal(region, image)
