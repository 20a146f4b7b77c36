"""White background and lumen detection on RGB patches (MLPS pseudo masks and the exported model)."""

from __future__ import annotations

import numpy as np
from skimage.morphology import remove_small_objects


def white_background(image: np.ndarray, threshold: int = 200, min_size: int = 50) -> np.ndarray:
    """White background / lumen detection: grayscale > ``threshold``, objects < ``min_size`` px removed."""
    gray = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return remove_small_objects(gray > threshold, max_size=max(min_size - 1, 0))
