"""Image and mask file I/O with errors that name the file, and atomic writes.

:func:`atomic_path` is the one way the package writes a file: every writer (PNG, JSON, torch
checkpoints and model files, TIFFs, slide outputs) goes through it, so a crash never leaves a
half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageReadError(OSError):
    """An image or mask file could not be read; the message names the file and the fix."""


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found (fix: check the path or rerun `tissueseg data check`)") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(
            f"{path}: unreadable or corrupt image ({exc}) (fix: re-export or remove this file)") from exc


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB; grayscale, palette and RGBA are converted."""
    img = _open(Path(path))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a mask as stored: palette indices for 'P' images, gray values for 'L'/'I', RGB otherwise."""
    img = _open(Path(path))
    if img.mode in ("P", "L", "I", "I;16", "1"):
        arr = np.asarray(img)
        return arr.astype(np.int64) if arr.dtype == bool else arr
    return np.asarray(img.convert("RGB"))


def palette_bytes(palette: Sequence[tuple[int, int, int]]) -> list[int]:
    """Flatten an RGB palette to the 768-entry list PIL expects (unused entries black)."""
    flat = [c for rgb in palette for c in rgb]
    return flat + [0] * (768 - len(flat))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the usual permissions (``0o666`` less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, payload: Any, indent: int = 2) -> Path:
    """Write ``payload`` as JSON (``default=str`` for paths and the like); atomic."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=indent, default=str))
    return Path(path)


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_path`: a crash never leaves a half-written checkpoint."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def write_png(path: str | os.PathLike, array: np.ndarray,
              palette: Sequence[tuple[int, int, int]] | None = None) -> Path:
    """Write an RGB image, or a class-index mask as a palette PNG when ``palette`` is given; atomic."""
    array = np.asarray(array)
    if palette is not None:
        img = Image.fromarray(array.astype(np.uint8), mode="P")
        img.putpalette(palette_bytes(palette))
    else:
        img = Image.fromarray(array.astype(np.uint8))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (sorted, hidden files skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
