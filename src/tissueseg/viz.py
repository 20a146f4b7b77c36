"""Pictures a person looks at: class overlays with a legend, CAM heat maps, side-by-side panels.

All functions take and return (H, W, 3) uint8 RGB arrays; nothing is drawn to screen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]


def colorize(class_map: np.ndarray, palette: Sequence[RGB], ignore_index: int | None = None) -> np.ndarray:
    """Map an (H, W) class-index array to RGB with ``palette``; ``ignore_index`` (and out-of-range) → black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    if ignore_index is not None and 0 <= ignore_index < 256:
        lut[ignore_index] = 0
    return lut[np.clip(np.asarray(class_map), 0, 255).astype(np.intp)]


def overlay(image: np.ndarray, class_map: np.ndarray, palette: Sequence[RGB], alpha: float = 0.45,
            skip_index: int | None = None) -> np.ndarray:
    """Blend the coloured class map onto the image; pixels of ``skip_index`` (e.g. background) stay as they are."""
    colours = colorize(class_map, palette).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    if skip_index is not None:
        keep = np.asarray(class_map) == skip_index
        blended[keep] = image[keep]
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def jet(values: np.ndarray) -> np.ndarray:
    """The classic 'jet' colour map for values in [0, 1] → (..., 3) uint8."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255 + 0.5).astype(np.uint8)


def cam_heatmap(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Overlay a class activation map (any range; min-max scaled, resized to the image) as a jet heat map."""
    cam = np.asarray(cam, dtype=np.float32)
    lo, hi = float(cam.min()), float(cam.max())
    scaled = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    if scaled.shape != image.shape[:2]:
        resized = Image.fromarray(scaled).resize((image.shape[1], image.shape[0]), Image.BILINEAR)
        scaled = np.asarray(resized, dtype=np.float32)
    heat = jet(scaled).astype(np.float32)
    return np.clip((1 - alpha) * image + alpha * heat + 0.5, 0, 255).astype(np.uint8)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def add_legend(image: np.ndarray, class_names: Sequence[str], palette: Sequence[RGB]) -> np.ndarray:
    """Append a legend strip (one colour swatch and name per class) below the image."""
    row, pad = 14, 4
    width = image.shape[1]
    canvas = Image.new("RGB", (width, pad + row * len(class_names)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (name, colour) in enumerate(zip(class_names, palette)):
        y = pad + i * row
        draw.rectangle([pad, y, pad + 10, y + 10], fill=tuple(colour), outline=(0, 0, 0))
        draw.text((pad + 16, y), name, fill=(0, 0, 0), font=_font())
    return np.concatenate([image, np.asarray(canvas)], axis=0)


def panel(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, gap: int = 4) -> np.ndarray:
    """Place images side by side (top-aligned, white gaps) with an optional title above each."""
    title_h = 14 if titles else 0
    height = max(im.shape[0] for im in images) + title_h
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, im in enumerate(images):
        canvas.paste(Image.fromarray(np.ascontiguousarray(im)), (x, title_h))
        if titles:
            draw.text((x + 2, 1), titles[i], fill=(0, 0, 0), font=_font())
        x += im.shape[1] + gap
    return np.asarray(canvas)


def prediction_panel(image: np.ndarray, prediction: np.ndarray, class_names: Sequence[str],
                     palette: Sequence[RGB], ground_truth: np.ndarray | None = None) -> np.ndarray:
    """Image / ground truth / prediction overlays side by side, with the class legend underneath."""
    images, titles = [image], ["image"]
    if ground_truth is not None:
        images.append(overlay(image, ground_truth, palette))
        titles.append("ground truth")
    images.append(overlay(image, prediction, palette))
    titles.append("prediction")
    return add_legend(panel(images, titles), class_names, palette)
