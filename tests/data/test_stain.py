import numpy as np
import pytest
import torch

from tissueseg.data.stain import (
    REFERENCE_STAIN_MATRIX,
    NoTissueError,
    hed_adjust,
    hed_jitter,
    macenko_normalize,
    macenko_stain_matrix,
    od_to_rgb,
    rgb_to_od,
)

H_TRUE = np.array([0.644, 0.717, 0.267])  # Ruifrok & Johnston haematoxylin
E_TRUE = np.array([0.216, 0.801, 0.558])  # eosin (Macenko reference direction)
H_ALT = np.array([0.70, 0.66, 0.27])      # another lab / scanner
E_ALT = np.array([0.30, 0.85, 0.43])


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _concentrations(n=48, seed=0):
    """(n, n, 2) H/E concentrations: mixtures, pure-H and pure-E pixels and some background."""
    rng = np.random.default_rng(seed)
    conc = rng.uniform(0.2, 1.5, size=(n, n, 2))
    kind = rng.integers(0, 10, size=(n, n))
    conc[kind == 0, 1] = 0.0   # pure haematoxylin
    conc[kind == 1, 0] = 0.0   # pure eosin
    conc[kind == 2] = 0.0      # white background
    return conc


def _stain(conc, h, e):
    return od_to_rgb(conc @ np.stack([_unit(h), _unit(e)]))


def _tissue_image(seed=0):
    return _stain(_concentrations(32, seed), H_TRUE, E_TRUE)


def test_od_round_trip_uint8_and_tensor():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    od = rgb_to_od(img)
    assert od[..., 0].flat[255] == 0.0 and np.all(np.diff(od[..., 0].ravel()) < 0)
    assert np.array_equal(od_to_rgb(od), img)
    t = torch.from_numpy(img).permute(2, 0, 1)
    assert torch.equal(od_to_rgb(rgb_to_od(t)), t)
    assert torch.allclose(rgb_to_od(t.float() / 255.0), rgb_to_od(t), atol=1e-5)


def test_hed_jitter_zero_strength_is_identity():
    img = _tissue_image()
    out = hed_jitter(img, sigma=0.0, bias=0.0, rng=0)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - img).max() <= 1
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    out_t = hed_jitter(t, sigma=0.0, bias=0.0, rng=torch.Generator().manual_seed(0))
    assert out_t.dtype == torch.float32 and out_t.shape == t.shape
    assert (out_t - t).abs().max() <= 1.0 / 255.0


def test_hed_jitter_changes_colour_but_keeps_white_nearly_white():
    img = _tissue_image()
    img[:4] = 255  # a white band
    for seed in range(5):
        out = hed_jitter(img, sigma=0.1, bias=0.05, rng=seed)
        assert np.abs(out[4:].astype(int) - img[4:]).mean() > 2.0
        assert out[:4].min() >= 235


def test_hed_jitter_reproducible_and_seeds_differ():
    img = _tissue_image()
    assert np.array_equal(hed_jitter(img, rng=3), hed_jitter(img, rng=3))
    assert not np.array_equal(hed_jitter(img, rng=3), hed_jitter(img, rng=4))


def test_hed_adjust_numpy_and_tensor_agree():
    img = _tissue_image()
    alpha, beta = [1.1, 0.9, 1.0], [0.02, -0.03, 0.0]
    out_np = hed_adjust(img, alpha, beta)
    out_t = hed_adjust(torch.from_numpy(img).permute(2, 0, 1)[None], alpha, beta)  # batched CxHxW
    assert out_t.dtype == torch.uint8 and out_t.shape == (1, 3, 32, 32)
    assert np.abs(out_t[0].permute(1, 2, 0).numpy().astype(int) - out_np).max() <= 1


def test_hed_adjust_scales_haematoxylin_only():
    """Doubling H darkens a pure-haematoxylin pixel and leaves a pure-eosin one (nearly) alone."""
    from skimage.color import rgb_from_hed
    od = np.stack([rgb_from_hed[0], rgb_from_hed[1]])[:, None, :] * 0.5  # (2, 1, 3): pure H, pure E
    img = od_to_rgb(od)
    out = hed_adjust(img, [2.0, 1.0, 1.0], [0.0, 0.0, 0.0]).astype(int)
    assert np.all(out[0] < img[0].astype(int) - 10)
    assert np.abs(out[1] - img[1]).max() <= 1


def test_macenko_recovers_known_stain_vectors():
    img = _stain(_concentrations(), H_TRUE, E_TRUE)
    stains, max_conc = macenko_stain_matrix(img)
    assert stains.shape == (2, 3) and max_conc.shape == (2,)
    assert np.allclose(np.linalg.norm(stains, axis=1), 1.0)
    assert stains[0] @ _unit(H_TRUE) > 0.95  # row 0 is haematoxylin
    assert stains[1] @ _unit(E_TRUE) > 0.95
    assert np.all(max_conc > 0.8) and np.all(max_conc < 2.5)


def test_macenko_normalize_brings_two_stainings_together():
    conc = _concentrations(seed=1)
    a = _stain(conc, H_TRUE, E_TRUE)
    b = _stain(conc * np.array([1.4, 0.7]), H_ALT, E_ALT)  # other vectors and intensities
    na, nb = macenko_normalize(a), macenko_normalize(b)
    assert na.dtype == np.uint8 and na.shape == a.shape
    before = np.abs(a.astype(int) - b).mean()
    after = np.abs(na.astype(int) - nb).mean()
    assert after < 0.25 * before
    # the output is stained with the target vectors
    assert macenko_stain_matrix(na)[0][0] @ _unit(REFERENCE_STAIN_MATRIX[0]) > 0.99


def test_macenko_normalize_to_own_stains_is_near_identity():
    img = _stain(_concentrations(seed=2), H_TRUE, E_TRUE)
    out = macenko_normalize(img, *macenko_stain_matrix(img))
    assert np.abs(out.astype(int) - img).mean() < 2.0


def test_macenko_background_patch():
    white = np.full((16, 16, 3), 250, dtype=np.uint8)
    white[0, 0] = (120, 60, 140)
    with pytest.raises(NoTissueError, match="background"):
        macenko_stain_matrix(white)
    with pytest.raises(ValueError):
        macenko_stain_matrix(white)
    assert np.array_equal(macenko_normalize(white), white)
