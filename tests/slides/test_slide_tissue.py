import numpy as np

from tissueseg.slides.readers import open_slide
from tissueseg.slides.tissue import TissueIndex, detect_tissue, saturation

from slide_helpers import tissue_pattern, write_synthetic_slide


def test_tissue_is_found_and_glass_skipped_on_a_synthetic_slide(tmp_path):
    path = write_synthetic_slide(tmp_path / "slide.tif", 4000, 3000, mpp=0.5)
    with open_slide(path) as reader:
        thumb, ds = reader.thumbnail(512)
    assert max(thumb.shape[:2]) == 512 and abs(ds - 4000 / 512) < 0.05
    mask = detect_tissue(thumb)
    yy, xx = np.meshgrid((np.arange(thumb.shape[0]) + 0.5) * ds, (np.arange(thumb.shape[1]) + 0.5) * ds,
                         indexing="ij")
    truth = tissue_pattern(yy, xx, 4000, 3000)[..., 1] < 200  # stained pixels
    agree = (mask == truth).mean()
    assert agree > 0.98
    assert mask[:, int(0.75 * mask.shape[1]):].sum() == 0  # the glass on the right
    index = TissueIndex(mask, ds)
    assert not index.any(3200, 0, 700, 3000)  # glass region in level-0 px
    assert index.any(900, 900, 256, 256)  # inside the first ellipse
    assert index.count(0, 0, 4000, 3000) == mask.sum()


def test_otsu_threshold_is_clamped_for_all_tissue_and_all_glass():
    rng = np.random.default_rng(0)
    tissue = np.stack([rng.integers(150, 220, (64, 64)), rng.integers(60, 140, (64, 64)),
                       rng.integers(150, 200, (64, 64))], -1).astype(np.uint8)
    assert detect_tissue(tissue).mean() > 0.99  # Otsu alone would split stained tissue in two
    glass = rng.integers(232, 245, (64, 64, 3)).astype(np.uint8)
    assert not detect_tissue(glass).any()
    speck = glass.copy()
    speck[30:32, 30:32] = (150, 60, 160)  # dust-sized: removed
    assert not detect_tissue(speck).any()
    holey = tissue.copy()
    holey[30:33, 30:33] = 240  # a small hole inside tissue: filled
    assert detect_tissue(holey)[31, 31]


def test_saturation_range():
    s = saturation(np.array([[[255, 255, 255], [255, 0, 0], [0, 0, 0], [200, 100, 200]]], dtype=np.uint8))
    assert np.allclose(s[0], [0, 1, 0, 0.5])


def test_pixel_mask_samples_the_mask_at_working_resolution():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 3:8] = True
    index = TissueIndex(mask, downsample=8.0)  # thumbnail px = 8 level-0 px
    pm = index.pixel_mask(0, 0, 40, 20, scale=2.0)  # working px = 2 level-0 px
    assert pm.shape == (20, 40)
    assert pm[10, 15] and not pm[0, 0] and not pm[10, 35]
