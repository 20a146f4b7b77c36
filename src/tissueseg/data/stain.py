"""H&E stain tools: optical density, HED-space jitter and Macenko normalisation.

Optical density (OD) here is the Beer-Lambert absorbance with natural log,
``OD = -ln((I + 1) / 256)`` for 8-bit intensities ``I``, so white (255) is
exactly 0 and black is finite. Float images are taken to lie in [0, 1].
The OD helpers and :func:`hed_jitter` / :func:`hed_adjust` work on numpy arrays
and torch tensors alike (elementwise, or a matrix product over the channel
axis: last for numpy ``(..., H, W, 3)``, third-last for torch ``(..., 3, H, W)``).
Macenko estimation is numpy only and takes ``(H, W, 3)`` RGB.

References
----------
Macenko M. et al. (2009). A method for normalizing histology slides for
quantitative analysis. ISBI, 1107-1110.
Tellez D. et al. (2018). Whole-slide mitosis detection in H&E breast histology
using PHH3 as a reference to train distilled stain-invariant convolutional
networks. IEEE TMI 37(9), 2126-2136.
Ruifrok A. C., Johnston D. A. (2001). Quantification of histochemical staining
by color deconvolution. Anal. Quant. Cytol. Histol. 23(4), 291-299.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from skimage.color import hed_from_rgb, rgb_from_hed

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

#: Reference H and E stain vectors (rows, unit OD) and 99th-percentile
#: concentrations used as the default Macenko target (Macenko et al. 2009, as
#: distributed with the reference implementation).
REFERENCE_STAIN_MATRIX = np.array([[0.5626, 0.7201, 0.4062],
                                   [0.2159, 0.8012, 0.5581]])
REFERENCE_MAX_CONC = np.array([1.9705, 1.0308])


class NoTissueError(ValueError):
    """Too few stained pixels to estimate stain vectors (e.g. a background patch)."""


def rgb_to_od(image: ArrayOrTensor) -> ArrayOrTensor:
    """Optical density ``-ln((I + 1) / 256)`` of an RGB image (Beer-Lambert law).

    Parameters
    ----------
    image : uint8 in [0, 255] or float in [0, 1]; numpy array or torch tensor, any layout.

    Returns
    -------
    Float OD of the same shape (float64 for numpy, float32 for integer tensors).
    """
    if isinstance(image, torch.Tensor):
        x = image.float() if not image.is_floating_point() else image * 255.0
        return -torch.log((x + 1.0) / 256.0)
    x = np.asarray(image)
    x = x.astype(np.float64) if not np.issubdtype(x.dtype, np.floating) else x * 255.0
    return -np.log((x + 1.0) / 256.0)


def od_to_rgb(od: ArrayOrTensor, as_uint8: bool = True) -> ArrayOrTensor:
    """Inverse of :func:`rgb_to_od`, clipped to the valid range.

    Returns uint8 in [0, 255] when ``as_uint8``, else float in [0, 1]
    (same container type and shape as ``od``).
    """
    if isinstance(od, torch.Tensor):
        x = (256.0 * torch.exp(-od) - 1.0).clamp(0.0, 255.0)
        return x.round().to(torch.uint8) if as_uint8 else x / 255.0
    x = np.clip(256.0 * np.exp(-od) - 1.0, 0.0, 255.0)
    return np.rint(x).astype(np.uint8) if as_uint8 else x / 255.0


def hed_adjust(image: ArrayOrTensor, alpha, beta) -> ArrayOrTensor:
    """Scale and shift the H, E, D channels of an RGB image: ``hed * alpha + beta``.

    Colour deconvolution uses scikit-image's Ruifrok-Johnston matrices
    (``hed_from_rgb`` / ``rgb_from_hed``) on OD, so the whole operation is one
    3x3 matrix product plus an offset in OD space (Tellez et al. 2018).

    Parameters
    ----------
    image : numpy ``(..., H, W, 3)`` or torch ``(..., 3, H, W)``; uint8 or float in [0, 1].
    alpha, beta : (3,) per-stain scale and shift; ``beta`` is in OD units (natural log).

    Returns
    -------
    Image of the same type, layout and dtype family (uint8 stays uint8).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    matrix = hed_from_rgb @ (alpha[:, None] * rgb_from_hed)  # OD -> HED -> scaled -> OD
    offset = beta @ rgb_from_hed
    if isinstance(image, torch.Tensor):
        od = rgb_to_od(image)
        m = torch.as_tensor(matrix, dtype=od.dtype, device=od.device)
        b = torch.as_tensor(offset, dtype=od.dtype, device=od.device)
        out = torch.einsum("...chw,cd->...dhw", od, m) + b[:, None, None]
        rgb = od_to_rgb(out, as_uint8=image.dtype == torch.uint8)
        return rgb if image.dtype == torch.uint8 else rgb.to(image.dtype)
    image = np.asarray(image)
    rgb = od_to_rgb(rgb_to_od(image) @ matrix + offset, as_uint8=image.dtype == np.uint8)
    return rgb.astype(image.dtype, copy=False)


def hed_jitter(image: ArrayOrTensor, sigma: float = 0.05, bias: float = 0.05,
               rng: np.random.Generator | torch.Generator | int | None = None) -> ArrayOrTensor:
    """Random H&E stain augmentation in HED space (Tellez et al. 2018).

    Each stain channel is scaled by ``alpha ~ U(1 - sigma, 1 + sigma)`` and
    shifted by ``beta ~ U(-bias, bias)`` (OD units); one draw per call.

    Parameters
    ----------
    image : numpy ``(H, W, 3)`` or torch ``(..., 3, H, W)``; uint8 or float in [0, 1].
    sigma, bias : jitter strengths; both 0 gives the identity (up to rounding).
    rng : numpy Generator, torch Generator, integer seed or None (fresh entropy).

    Returns
    -------
    Jittered image of the same type, layout and dtype.
    """
    if isinstance(rng, torch.Generator):
        u = (torch.rand(6, generator=rng, dtype=torch.float64) * 2.0 - 1.0).numpy()
    else:
        u = np.random.default_rng(rng).uniform(-1.0, 1.0, size=6)
    return hed_adjust(image, 1.0 + sigma * u[:3], bias * u[3:])


def _stains_from_od(od: np.ndarray, alpha: float, beta: float,
                    min_tissue_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Macenko estimate from (N, 3) OD pixels; see :func:`macenko_stain_matrix`."""
    tissue = od[(od > beta).all(axis=1)]
    if len(tissue) < min_tissue_pixels:
        raise NoTissueError(
            f"Macenko: only {len(tissue)} of {len(od)} pixels have OD > {beta} in every channel "
            f"(need {min_tissue_pixels}); the image looks like background, not stained tissue")
    plane = np.linalg.eigh(np.cov(tissue.T))[1][:, 1:]  # eigenvectors of the two largest eigenvalues
    # Orient the in-plane basis on the mean OD direction so all angles lie in (-pi/2, pi/2).
    u1 = plane @ (plane.T @ tissue.mean(axis=0))
    u1 /= np.linalg.norm(u1)
    u2 = np.cross(np.cross(plane[:, 0], plane[:, 1]), u1)
    phi = np.arctan2(tissue @ u2, tissue @ u1)
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v_lo, v_hi = np.cos(lo) * u1 + np.sin(lo) * u2, np.cos(hi) * u1 + np.sin(hi) * u2
    # Haematoxylin absorbs more red than eosin does.
    stain_matrix = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo])
    conc = tissue @ np.linalg.pinv(stain_matrix)
    return stain_matrix, np.percentile(conc, 99, axis=0)


def macenko_stain_matrix(image: np.ndarray, alpha: float = 1.0, beta: float = 0.15,
                         min_tissue_pixels: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Estimate H and E stain vectors and their robust maximum concentrations (Macenko et al. 2009).

    Pixels with OD > ``beta`` in every channel are projected onto the plane of
    the two largest OD eigenvectors; the ``alpha`` and ``100 - alpha``
    percentiles of their angle give the two stain directions.

    Parameters
    ----------
    image : (H, W, 3) RGB, uint8 or float in [0, 1].
    alpha : angular percentile (robust extreme), in percent.
    beta : OD threshold separating stained tissue from background.
    min_tissue_pixels : fewer stained pixels than this raises :class:`NoTissueError`.

    Returns
    -------
    stain_matrix : (2, 3) unit OD vectors, row 0 haematoxylin, row 1 eosin.
    max_conc : (2,) 99th-percentile concentrations over the stained pixels.

    Raises
    ------
    NoTissueError
        (a ValueError) if the image is mostly background.
    """
    return _stains_from_od(rgb_to_od(image).reshape(-1, 3), alpha, beta, min_tissue_pixels)


def macenko_normalize(image: np.ndarray, target_stain_matrix: np.ndarray | None = None,
                      target_max_conc: np.ndarray | None = None, alpha: float = 1.0,
                      beta: float = 0.15, min_tissue_pixels: int = 100) -> np.ndarray:
    """Map an H&E image onto target stain vectors and concentration ranges (Macenko et al. 2009).

    Parameters
    ----------
    image : (H, W, 3) RGB, uint8 or float in [0, 1].
    target_stain_matrix : (2, 3) H and E OD vectors; default :data:`REFERENCE_STAIN_MATRIX`.
    target_max_conc : (2,) target 99th-percentile concentrations; default :data:`REFERENCE_MAX_CONC`.
    alpha, beta, min_tissue_pixels : see :func:`macenko_stain_matrix`.

    Returns
    -------
    (H, W, 3) uint8. Images with too little tissue to estimate stains
    (:class:`NoTissueError`) are returned unchanged (as uint8), since a
    background patch has no stain to normalise.
    """
    target = REFERENCE_STAIN_MATRIX if target_stain_matrix is None else np.asarray(target_stain_matrix)
    target_max = REFERENCE_MAX_CONC if target_max_conc is None else np.asarray(target_max_conc)
    od = rgb_to_od(image)
    try:
        stain_matrix, max_conc = _stains_from_od(od.reshape(-1, 3), alpha, beta, min_tissue_pixels)
    except NoTissueError:
        return od_to_rgb(od)  # the exact inverse: the input, as uint8
    conc = od @ np.linalg.pinv(stain_matrix) * (target_max / np.maximum(max_conc, 1e-6))
    return od_to_rgb(conc @ target)
