"""Paired image/mask augmentation built on ``torchvision.transforms.v2``.

Images are ``tv_tensors.Image`` (uint8, C x H x W) and masks ``tv_tensors.Mask``
(int64, H x W or K x H x W); every transform draws its random parameters once
per call and applies them to all inputs, so masks stay aligned with the image.
Geometric transforms move masks too (nearest-neighbour for masks is automatic
in torchvision); colour and stain transforms touch images only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import is_pure_tensor

from tissueseg.data.stain import hed_adjust, macenko_normalize, macenko_stain_matrix

MaskInput = np.ndarray | Sequence[np.ndarray] | None


class RandomRotate90(v2.Transform):
    """Rotate images and masks by the same random multiple of 90 degrees (``torch.rot90``).

    Exact (no interpolation); for non-square inputs odd multiples swap H and W.
    Bounding boxes, key points and PIL images are not supported.
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Video, tv_tensors.Mask, is_pure_tensor)

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        unsupported = (PIL.Image.Image, tv_tensors.BoundingBoxes, tv_tensors.KeyPoints)
        for inpt in flat_inputs:
            if isinstance(inpt, unsupported):
                raise TypeError(f"RandomRotate90 supports tensors, Image, Video and Mask, not {type(inpt).__name__}")

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt)


class RandomHEDJitter(v2.Transform):
    """H&E stain augmentation: random per-stain scale and shift in HED space (Tellez et al. 2018).

    ``alpha ~ U(1 - sigma, 1 + sigma)``, ``beta ~ U(-bias, bias)`` (OD units),
    drawn once per call; images only, masks pass through untouched.
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Video, is_pure_tensor)

    def __init__(self, sigma: float = 0.05, bias: float = 0.05) -> None:
        super().__init__()
        self.sigma = sigma
        self.bias = bias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        u = torch.rand(6, dtype=torch.float64) * 2.0 - 1.0
        return {"alpha": (1.0 + self.sigma * u[:3]).numpy(), "beta": (self.bias * u[3:]).numpy()}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return tv_tensors.wrap(hed_adjust(inpt.as_subclass(torch.Tensor), params["alpha"], params["beta"]),
                               like=inpt)


class MacenkoNormalize(v2.Transform):
    """Macenko stain normalisation of images (Macenko et al. 2009); masks pass through.

    The target defaults to the reference H&E stain matrix; build one from an
    image with :meth:`from_image`. Background patches are returned unchanged.
    Runs on the CPU in numpy, one image at a time.
    """

    _transformed_types = (tv_tensors.Image, is_pure_tensor)

    def __init__(self, target_stain_matrix: np.ndarray | None = None,
                 target_max_conc: np.ndarray | None = None) -> None:
        super().__init__()
        self.target_stain_matrix = target_stain_matrix
        self.target_max_conc = target_max_conc

    @classmethod
    def from_image(cls, target: np.ndarray) -> MacenkoNormalize:
        """Normaliser whose target stains are estimated from ``target`` ((H, W, 3) RGB).

        Raises :class:`~tissueseg.data.stain.NoTissueError` if ``target`` is mostly background.
        """
        return cls(*macenko_stain_matrix(target))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        x = inpt.as_subclass(torch.Tensor)
        hwc = x.reshape(-1, *x.shape[-3:]).permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([macenko_normalize(im, self.target_stain_matrix, self.target_max_conc) for im in hwc])
        y = torch.from_numpy(out).permute(0, 3, 1, 2).reshape(x.shape).to(x.device)
        return tv_tensors.wrap(y if x.dtype == torch.uint8 else (y / 255.0).to(x.dtype), like=inpt)


class CropScaledResizedCrop(v2.RandomResizedCrop):
    """Random resized crop whose ``scale`` is the crop's area relative to the *output* size, not to the image.

    On an image of the output size it is :class:`~torchvision.transforms.v2.RandomResizedCrop` exactly (same
    random draws); on a larger image (GlaS, 775×522) the crop keeps the pixel scale of evaluation on the whole
    image (zoom 1–1.41 for ``scale=(0.5, 1)``) instead of squashing most of the image into the output.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        from torchvision.transforms.v2._utils import query_size

        height, width = query_size(flat_inputs)
        per_area = self.size[0] * self.size[1] / (height * width)
        relative = self.scale
        self.scale = tuple(min(1.0, s * per_area) for s in relative)
        try:
            return super().make_params(flat_inputs)
        finally:
            self.scale = relative


def _macenko_step(macenko: bool | MacenkoNormalize) -> list[v2.Transform]:
    if isinstance(macenko, MacenkoNormalize):
        return [macenko]
    return [MacenkoNormalize()] if macenko else []


def build_train_transforms(crop_size: int | tuple[int, int], scale: tuple[float, float] = (0.5, 1.0),
                           hflip: bool = True, vflip: bool = True, rotate90: bool = True,
                           color_jitter: float = 0.1, hed_sigma: float = 0.05,
                           macenko: bool | MacenkoNormalize = False,
                           scale_of: str = "image") -> v2.Compose:
    """Training augmentation for (image, mask...) pairs.

    Order: optional Macenko normalisation (on the whole image, before cropping),
    random scale-crop to ``crop_size`` (aspect ratio 3/4..4/3, bilinear with
    antialias for images, nearest for masks), flips, 90-degree rotations,
    HED jitter (``sigma = bias = hed_sigma``), colour jitter (brightness,
    contrast and saturation by ``color_jitter``; hue is left to the HED jitter),
    then conversion of the image to float32 in [0, 1]. A strength of 0 or a
    False flag drops that step. ``macenko`` may be a ready (e.g. fitted)
    :class:`MacenkoNormalize`. ``scale_of="image"``: ``scale`` is the crop's share of the image's area
    (torchvision); ``"crop"``: of ``crop_size``'s area (:class:`CropScaledResizedCrop`, native pixel scale).
    """
    if scale_of not in ("image", "crop"):
        raise ValueError(f"scale_of must be 'image' or 'crop', got {scale_of!r}")
    size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if rotate90 and size[0] != size[1]:
        raise ValueError(f"rotate90 needs a square crop_size to keep batch shapes fixed, got {size}")
    crop = v2.RandomResizedCrop if scale_of == "image" else CropScaledResizedCrop
    steps = _macenko_step(macenko) + [crop(size, scale=scale, antialias=True)]
    steps += [v2.RandomHorizontalFlip()] if hflip else []
    steps += [v2.RandomVerticalFlip()] if vflip else []
    steps += [RandomRotate90()] if rotate90 else []
    steps += [RandomHEDJitter(hed_sigma, hed_sigma)] if hed_sigma > 0 else []
    steps += [v2.ColorJitter(color_jitter, color_jitter, color_jitter)] if color_jitter > 0 else []
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True)])


def build_eval_transforms(macenko: bool | MacenkoNormalize = False) -> v2.Compose:
    """Deterministic evaluation transform: optional Macenko normalisation, then float32 in [0, 1]."""
    return v2.Compose(_macenko_step(macenko) + [v2.ToDtype(torch.float32, scale=True)])


def apply_pair(transform: v2.Transform, image: np.ndarray, mask: MaskInput = None) -> tuple[Any, Any]:
    """Apply ``transform`` jointly to a :class:`~tissueseg.data.sample.Sample`-style image and mask(s).

    Parameters
    ----------
    transform : any v2 transform, e.g. from :func:`build_train_transforms`.
    image : (H, W, 3) uint8 RGB.
    mask : None (image only, e.g. weak image-level labels); an (H, W) or
        (K, H, W) integer array; or a sequence of (H, W) arrays (e.g. multi-layer
        pseudo masks). All masks receive the same geometric transform.

    Returns
    -------
    image : ``tv_tensors.Image`` (3, h, w), dtype as produced by ``transform``.
    mask : None, one int64 ``tv_tensors.Mask``, or a list of them, mirroring ``mask``.
    """
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    if mask is None:
        return transform(img), None
    if isinstance(mask, np.ndarray):
        return transform(img, tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64))))
    out_img, out_masks = transform(img, [tv_tensors.Mask(torch.from_numpy(m.astype(np.int64))) for m in mask])
    return out_img, list(out_masks)
