"""Procedural H&E tissue patches in the LUAD-HistoSeg format: the built-in demo and test data.

Each patch is a layout of tissue regions (argmax of smooth random fields) filled with
class-specific morphology, rendered as hematoxylin and eosin optical densities and
converted to RGB with the Beer–Lambert law, ``I = 255 · exp(-OD · stain_vectors)``.
Stain vectors start from :data:`skimage.color.rgb_from_hed` and vary per case (slide)
and slightly per image, so colour alone is ambiguous across classes and texture decides:

* tumor epithelium (TE): sheets of large pleomorphic vesicular nuclei with faint cell
  borders, around small white lumens;
* necrosis (NEC): pale mottled eosinophilic debris with clusters of nuclear dust;
* lymphocytes (LYM): dense small round very dark nuclei;
* tumor-associated stroma (TAS): wavy eosin fibres with elongated spindle nuclei along them;
* background (index 4): white glass / lumen with slight noise.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.color import rgb_from_hed

from tissueseg.data.io import write_png

CLASS_NAMES = ("tumor_epithelial", "necrosis", "lymphocyte", "tumor_associated_stroma")
CLASS_ABBREVIATIONS = ("TE", "NEC", "LYM", "TAS")
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND_INDEX = 4
PALETTE = ((205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0), (255, 255, 255))
MIN_LABEL_FRACTION = 0.02
"""A tissue class is in a patch's image-level label if it covers at least this fraction of it."""

TE, NEC, LYM, TAS = range(NUM_CLASSES)
_SPLIT_DIRS = ("training", "training_mask", "val", "test", "splits")


@dataclass(frozen=True, eq=False)
class Stain:
    """Stain appearance of one slide or image.

    Attributes
    ----------
    vectors : (3, 3) unit optical-density vectors of hematoxylin, eosin and the residual
        channel as rows, in the :data:`skimage.color.rgb_from_hed` convention.
    gains : (2,) multipliers of the hematoxylin and eosin concentrations (staining strength).
    background_od : (3,) optical density of glass and illumination (0 is pure white).
    """

    vectors: np.ndarray
    gains: np.ndarray
    background_od: np.ndarray


def _perturbed_stain(rng: np.random.Generator, base: Stain, vector_sigma: float,
                     gain_sigma: float, background_sigma: float) -> Stain:
    vectors = base.vectors.copy()
    vectors[:2] = np.abs(vectors[:2] + rng.normal(0.0, vector_sigma, (2, 3)))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gains = base.gains * np.exp(rng.normal(0.0, gain_sigma, 2))
    background_od = np.clip(base.background_od + rng.normal(0.0, background_sigma, 3), 0.0, 0.12)
    return Stain(vectors, gains, background_od)


def random_stain(rng: np.random.Generator) -> Stain:
    """Draw the stain of one case (slide): HED vectors rotated a little, strength varied."""
    base = Stain(rgb_from_hed / np.linalg.norm(rgb_from_hed, axis=1, keepdims=True),
                 np.ones(2), np.full(3, 0.035))
    return _perturbed_stain(rng, base, vector_sigma=0.07, gain_sigma=0.22, background_sigma=0.015)


def jitter_stain(rng: np.random.Generator, stain: Stain) -> Stain:
    """Vary a case's stain slightly for one image of that case."""
    return _perturbed_stain(rng, stain, vector_sigma=0.02, gain_sigma=0.07, background_sigma=0.005)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with correlation length ``sigma`` px, standardised.

    Large ``sigma`` is filtered on a coarser grid and upsampled linearly, which keeps it fast.
    """
    factor = max(1, int(sigma // 3))
    coarse_shape = tuple(-(-n // factor) + 2 for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), sigma / factor, mode="wrap")
    field = ndimage.zoom(coarse, factor, order=1)[:shape[0], :shape[1]]
    return (field - field.mean()) / (field.std() + 1e-8)


def region_layout(rng: np.random.Generator, size: int, labels: Sequence[int],
                  min_fraction: float = 0.1) -> np.ndarray:
    """Split a ``size``² patch into regions of ``labels``: argmax of smooth random fields.

    Each label's field is raised in turn just enough to cover ``min_fraction`` of the
    patch (later labels may take a little back), so requested classes really appear.
    """
    shape = (size, size)
    fields = np.stack([smooth_noise(rng, shape, size / 5) + rng.normal(0.0, 0.5) for _ in labels])
    for k in range(len(labels) if len(labels) > 1 else 0):
        deficit = np.delete(fields, k, axis=0).max(axis=0) - fields[k]
        shortfall = np.quantile(deficit, min_fraction)
        if shortfall > 0:
            fields[k] += shortfall + 1e-6
    return np.asarray(labels, dtype=np.int64)[fields.argmax(axis=0)]


@dataclass(frozen=True)
class _NucleusStyle:
    density: float  # nuclei per px² of the class region (clusters per px² for necrotic dust)
    major_radius: tuple[float, float]
    axis_ratio: tuple[float, float]
    optical_density: tuple[float, float]
    chromatin: float  # amplitude of granular chromatin texture
    rim: float  # vesicular nuclei: darker rim than centre


_NUCLEI = {
    TE: _NucleusStyle(1 / 95, (3.6, 6.2), (0.6, 1.0), (0.5, 1.0), 0.35, 0.45),
    NEC: _NucleusStyle(1 / 260, (1.0, 1.9), (0.5, 1.0), (0.6, 1.25), 0.1, 0.0),
    LYM: _NucleusStyle(1 / 24, (2.0, 2.9), (0.8, 1.0), (0.9, 1.4), 0.08, 0.0),
    TAS: _NucleusStyle(1 / 170, (5.0, 8.5), (0.18, 0.32), (0.5, 0.9), 0.15, 0.0),
}
_DUST_PER_CLUSTER = (2, 7)
_DUST_SPREAD = 2.5


@dataclass
class _Nuclei:
    y: np.ndarray
    x: np.ndarray
    major: np.ndarray
    minor: np.ndarray
    angle: np.ndarray
    optical_density: np.ndarray
    chromatin: np.ndarray
    rim: np.ndarray
    cls: np.ndarray


def _sample_nuclei(rng: np.random.Generator, region: np.ndarray, fibre_angle: np.ndarray | None) -> _Nuclei:
    """Nucleus centres and shapes for every class region, drawn per class, vectorised."""
    parts = []
    for cls, style in _NUCLEI.items():
        pixels = np.flatnonzero(region == cls)
        if pixels.size == 0:
            continue
        centres = rng.choice(pixels, rng.poisson(style.density * pixels.size))
        y, x = np.divmod(centres, region.shape[1])
        if cls == NEC:  # karyorrhexis: each dying nucleus breaks into a cluster of fragments
            repeats = rng.integers(*_DUST_PER_CLUSTER, size=y.size)
            y = np.repeat(y, repeats) + np.round(rng.normal(0, _DUST_SPREAD, repeats.sum())).astype(int)
            x = np.repeat(x, repeats) + np.round(rng.normal(0, _DUST_SPREAD, repeats.sum())).astype(int)
            inside = (y >= 0) & (y < region.shape[0]) & (x >= 0) & (x < region.shape[1])
            y, x = y[inside], x[inside]
        n = y.size
        major = rng.uniform(*style.major_radius, n)
        if cls == TAS:
            angle = fibre_angle[y, x] + rng.normal(0.0, 0.12, n)
        else:
            angle = rng.uniform(0.0, np.pi, n)
        parts.append(_Nuclei(y, x, major, major * rng.uniform(*style.axis_ratio, n), angle,
                             rng.uniform(*style.optical_density, n), np.full(n, style.chromatin),
                             np.full(n, style.rim), np.full(n, cls)))
    return _Nuclei(*(np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros(0, np.int64)
                     for f in _Nuclei.__dataclass_fields__))


def _render_nuclei(rng: np.random.Generator, region: np.ndarray, nuclei: _Nuclei
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin OD of all nuclei, and the TE cell borders, drawn at once.

    Every pixel belongs to its nearest nucleus centre (one distance transform); it is
    inside that nucleus if its elliptical radius is below 1 and it lies in the nucleus's
    own class region. Borders between neighbouring TE cells are the Voronoi edges.
    """
    if nuclei.y.size == 0:
        return np.zeros(region.shape), np.zeros(region.shape, bool)
    seeds = np.zeros(region.shape, np.int64)
    seeds[nuclei.y, nuclei.x] = np.arange(1, nuclei.y.size + 1)
    _, (near_y, near_x) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    owner = seeds[near_y, near_x] - 1
    yy, xx = np.indices(region.shape)
    dy, dx = yy - nuclei.y[owner], xx - nuclei.x[owner]
    cos, sin = np.cos(nuclei.angle[owner]), np.sin(nuclei.angle[owner])
    along, across = dx * cos + dy * sin, dy * cos - dx * sin
    radius2 = (along / nuclei.major[owner]) ** 2 + (across / nuclei.minor[owner]) ** 2
    coverage = np.clip((1.0 - radius2) * 2.5, 0.0, 1.0) * (region == nuclei.cls[owner])
    granules = ndimage.gaussian_filter(rng.standard_normal(region.shape), 0.8)
    granules /= granules.std() + 1e-8
    profile = (1.0 + nuclei.rim[owner] * (radius2 - 0.5)) * (1.0 + nuclei.chromatin[owner] * granules)
    hematoxylin = coverage * nuclei.optical_density[owner] * np.clip(profile, 0.2, None)
    edges = np.zeros(region.shape, bool)
    edges[:-1] |= owner[:-1] != owner[1:]
    edges[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    cell_borders = edges & (region == TE) & (coverage == 0)
    return hematoxylin, cell_borders


def _fibre_field(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Wavy oriented fibre texture in [0, 1] and the local fibre direction (radians).

    Anisotropically filtered noise is sampled along a rotated, smoothly warped frame.
    """
    angle = rng.uniform(0.0, np.pi)
    warp = 3.0 * smooth_noise(rng, (size, size), 10.0)
    yy, xx = np.indices((size, size), dtype=float)
    across = xx * -np.sin(angle) + yy * np.cos(angle) + warp
    along = xx * np.cos(angle) + yy * np.sin(angle)
    extent = int(np.ceil(size * 1.5)) + 8
    streaks = ndimage.gaussian_filter(rng.standard_normal((extent, extent)), (0.9, 7.0), mode="wrap")
    streaks /= streaks.std() + 1e-8
    texture = ndimage.map_coordinates(streaks, [across + extent / 2, along + extent / 2 - size / 2],
                                      order=1, mode="wrap")
    grad_y, grad_x = np.gradient(across)
    direction = np.arctan2(grad_y, grad_x) + np.pi / 2  # perpendicular to the across-fibre gradient
    return np.clip(0.5 + 0.3 * texture, 0.0, 1.0), direction


def _tissue_optical_density(rng: np.random.Generator, region: np.ndarray, fibres: np.ndarray | None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin OD of everything that is not a nucleus, per class."""
    shape = region.shape
    fine = smooth_noise(rng, shape, 1.0)
    blotches = smooth_noise(rng, shape, 2.5)
    haze = smooth_noise(rng, shape, 6.0)
    hematoxylin = np.zeros(shape)
    eosin = np.zeros(shape)
    te, nec, lym, tas = (region == c for c in range(NUM_CLASSES))
    hematoxylin[te] = 0.12 + 0.03 * fine[te]
    eosin[te] = 0.30 + 0.05 * fine[te]
    hematoxylin[nec] = 0.11 + 0.05 * haze[nec] + 0.02 * fine[nec]
    eosin[nec] = 0.33 + 0.12 * blotches[nec] + 0.04 * fine[nec]
    hematoxylin[lym] = 0.07 + 0.02 * fine[lym]
    eosin[lym] = 0.20 + 0.05 * fine[lym]
    if fibres is not None:
        hematoxylin[tas] = 0.04 + 0.01 * fine[tas]
        eosin[tas] = 0.08 + 0.55 * fibres[tas] + 0.03 * fine[tas]
    tissue = region != BACKGROUND_INDEX
    # soften region borders without bleeding tissue into the white background
    hematoxylin = ndimage.gaussian_filter(hematoxylin, 1.0) * tissue
    eosin = ndimage.gaussian_filter(eosin, 1.0) * tissue
    return np.clip(hematoxylin, 0.0, None), np.clip(eosin, 0.0, None)


def _carve_lumens(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """Open small white gland lumens (background index) inside the tumour epithelium."""
    te = region == TE
    if not te.any():
        return region
    lumen_field = smooth_noise(rng, region.shape, 4.0)
    lumens = te & (lumen_field > np.quantile(lumen_field, 0.94))
    lumens = ndimage.binary_erosion(ndimage.binary_dilation(lumens), border_value=1) & te
    return np.where(lumens, BACKGROUND_INDEX, region)


def optical_density_to_rgb(hematoxylin: np.ndarray, eosin: np.ndarray, stain: Stain) -> np.ndarray:
    """Beer–Lambert: ``I = 255 · exp(-(c_H·v_H + c_E·v_E + OD_glass))`` as float RGB in [0, 255]."""
    od = (stain.gains[0] * hematoxylin[..., None] * stain.vectors[0]
          + stain.gains[1] * eosin[..., None] * stain.vectors[1] + stain.background_od)
    return 255.0 * np.exp(-od)


def generate_patch(rng: np.random.Generator, size: int = 128, classes_present: Sequence[int] | None = None,
                   stain: Stain | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic H&E patch and its ground-truth mask.

    Parameters
    ----------
    rng : random generator; the patch is a deterministic function of its state.
    size : side of the square patch in pixels (morphology has a fixed pixel scale).
    classes_present : region classes to lay out, tissue classes 0..3 and optionally
        ``BACKGROUND_INDEX`` for a white glass region. Default: 1–3 random tissue classes,
        with a background region in about a third of the patches. Tumour epithelium
        always brings small lumens (background index) with it.
    stain : stain of the image; default a freshly drawn :func:`random_stain`.

    Returns
    -------
    image : (size, size, 3) uint8 RGB.
    mask : (size, size) int64 class indices, ``BACKGROUND_INDEX`` for white.
    """
    if classes_present is None:
        n_classes = rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25])
        classes_present = list(rng.choice(NUM_CLASSES, n_classes, replace=False))
        if rng.random() < 0.3:
            classes_present.append(BACKGROUND_INDEX)
    classes_present = sorted({int(c) for c in classes_present})
    if not classes_present or not set(classes_present) <= set(range(NUM_CLASSES + 1)):
        raise ValueError(f"classes_present must be non-empty indices in 0..{NUM_CLASSES}, got {classes_present}")
    stain = random_stain(rng) if stain is None else stain

    region = _carve_lumens(rng, region_layout(rng, size, classes_present))
    fibres, fibre_angle = _fibre_field(rng, size) if (region == TAS).any() else (None, None)
    hematoxylin, eosin = _tissue_optical_density(rng, region, fibres)
    nuclei = _sample_nuclei(rng, region, fibre_angle)
    nuclear_od, cell_borders = _render_nuclei(rng, region, nuclei)
    eosin = eosin * (1.0 - 0.3 * np.clip(nuclear_od, 0.0, 1.0)) + 0.12 * cell_borders
    hematoxylin = hematoxylin + nuclear_od + 0.08 * cell_borders
    hematoxylin, eosin = (ndimage.gaussian_filter(od, 0.6) for od in (hematoxylin, eosin))

    rgb = optical_density_to_rgb(hematoxylin, eosin, stain) + rng.normal(0.0, 2.5, (size, size, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), region


def image_labels(mask: np.ndarray, min_fraction: float = MIN_LABEL_FRACTION) -> np.ndarray:
    """(4,) int 0/1 image-level labels: tissue classes covering ≥ ``min_fraction`` of the mask."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=NUM_CLASSES + 1)[:NUM_CLASSES]
    return (counts >= min_fraction * mask.size).astype(np.int64)


def training_name(case_id: str, index: int, labels: np.ndarray) -> str:
    """LUAD-HistoSeg training file name, e.g. ``S0007-003-[1 0 0 1].png``."""
    return f"{case_id}-{index:03d}-[{' '.join(str(int(v)) for v in labels)}].png"


def _case_counts(n_cases: int, patch_counts: Sequence[int]) -> list[int]:
    """Split ``n_cases`` over the splits in proportion to their patch counts, ≥1 per non-empty split."""
    used = [n > 0 for n in patch_counts]
    if n_cases < sum(used):
        raise ValueError(f"cases={n_cases} is too few: each non-empty split needs its own case")
    counts = [1 if u else 0 for u in used]
    total = sum(patch_counts)
    for _ in range(n_cases - sum(used)):  # hand out the rest to the split most short of its share
        shortfall = [n_cases * n / total - c if u else -np.inf for n, c, u in zip(patch_counts, counts, used)]
        counts[int(np.argmax(shortfall))] += 1
    return [min(c, n) for c, n in zip(counts, patch_counts)]


def write_synthetic_dataset(out: str | os.PathLike, n_train: int = 160, n_val: int = 20, n_test: int = 20,
                            size: int = 128, seed: int = 0, labelled_fraction: float = 0.1,
                            cases: int | None = None, overwrite: bool = False,
                            progress: Callable[[int, int], None] | None = None) -> Path:
    """Write a synthetic dataset in the LUAD-HistoSeg layout and return its root.

    Layout: ``training/<case>-<idx>-[a b c d].png`` (image-level labels by
    :func:`image_labels`), ``training_mask/<same>.png``, ``val/img``, ``val/mask``,
    ``test/img``, ``test/mask`` (palette PNGs, index 4 = background),
    ``splits/labelled.txt`` / ``splits/unlabelled.txt`` (training names, labelled chosen
    by case) and ``README.txt``. Patches of one case share its stain; no case is in two
    splits. The same arguments give byte-identical files.

    Parameters
    ----------
    out : dataset root; must be empty or absent unless ``overwrite``.
    n_train, n_val, n_test : patches per split.
    size : patch side in pixels.
    seed : random seed.
    labelled_fraction : fraction of training cases whose patches go to ``labelled.txt``
        (at least one case when > 0).
    cases : total number of cases (slides); default about 8 patches per case.
    overwrite : replace the generated folders of an existing dataset at ``out``.
    progress : called as ``progress(done, total)`` after each patch.
    """
    if not 0.0 <= labelled_fraction <= 1.0:
        raise ValueError(f"labelled_fraction must be in [0, 1], got {labelled_fraction}")
    patch_counts = {"training": n_train, "val": n_val, "test": n_test}
    total = sum(patch_counts.values())
    if total == 0 or min(patch_counts.values()) < 0:
        raise ValueError("n_train, n_val and n_test must be non-negative and not all zero")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty (fix: pick a new folder or pass overwrite=True)")
        for name in _SPLIT_DIRS:
            shutil.rmtree(out / name, ignore_errors=True)
    n_cases = cases if cases is not None else max(sum(n > 0 for n in patch_counts.values()), round(total / 8))
    split_cases = _case_counts(n_cases, list(patch_counts.values()))

    seed_sequence = np.random.SeedSequence(seed)
    layout_rng = np.random.default_rng(seed_sequence.spawn(1)[0])
    case_numbers = np.sort(layout_rng.choice(np.arange(1, 10000), sum(split_cases), replace=False))
    case_ids = [f"S{number:04d}" for number in layout_rng.permutation(case_numbers)]
    patch_seeds = iter(seed_sequence.spawn(total))

    labelled_names: list[str] = []
    unlabelled_names: list[str] = []
    done = 0
    first_case = 0
    for (split, n_patches), n_split_cases in zip(patch_counts.items(), split_cases):
        split_ids = case_ids[first_case:first_case + n_split_cases]
        first_case += n_split_cases
        stains = [random_stain(layout_rng) for _ in split_ids]
        if split == "training" and split_ids:
            n_labelled = max(1, round(labelled_fraction * len(split_ids))) if labelled_fraction > 0 else 0
            labelled_cases = set(layout_rng.choice(split_ids, n_labelled, replace=False).tolist())
        for i in range(n_patches):
            case = i % n_split_cases
            rng = np.random.default_rng(next(patch_seeds))
            image, mask = generate_patch(rng, size, stain=jitter_stain(rng, stains[case]))
            index = i // n_split_cases
            if split == "training":
                name = training_name(split_ids[case], index, image_labels(mask))
                write_png(out / "training" / name, image)
                write_png(out / "training_mask" / name, mask, palette=PALETTE)
                (labelled_names if split_ids[case] in labelled_cases else unlabelled_names).append(name)
            else:
                name = f"{split_ids[case]}-{index:03d}.png"
                write_png(out / split / "img" / name, image)
                write_png(out / split / "mask" / name, mask, palette=PALETTE)
            done += 1
            if progress is not None:
                progress(done, total)

    (out / "splits").mkdir(parents=True, exist_ok=True)
    for file_name, names in (("labelled.txt", labelled_names), ("unlabelled.txt", unlabelled_names)):
        (out / "splits" / file_name).write_text("".join(f"{n}\n" for n in sorted(names)))
    (out / "README.txt").write_text(_readme(seed, size, patch_counts, split_cases, labelled_fraction))
    return out


def _readme(seed: int, size: int, patch_counts: dict[str, int], split_cases: Sequence[int],
            labelled_fraction: float) -> str:
    classes = "\n".join(f"  {i} {abbr:<4}{name:<26}RGB {PALETTE[i]}"
                        for i, (abbr, name) in enumerate(zip(CLASS_ABBREVIATIONS, CLASS_NAMES)))
    counts = ", ".join(f"{split} {n} patches / {c} cases" for (split, n), c in zip(patch_counts.items(), split_cases))
    return (
        "SYNTHETIC data: procedurally generated H&E-like patches, not real tissue.\n"
        "Made by tissueseg.data.synthetic.write_synthetic_dataset; do not report results on it as real.\n\n"
        f"seed: {seed}\npatch size: {size} px\nsplits: {counts}\n"
        f"labelled fraction (by case): {labelled_fraction}\n\n"
        f"Class order (mask index, LUAD-HistoSeg):\n{classes}\n"
        f"  {BACKGROUND_INDEX} BG  background (white glass / lumen) RGB {PALETTE[BACKGROUND_INDEX]}\n\n"
        "Layout (LUAD-HistoSeg): training/<case>-<idx>-[TE NEC LYM TAS].png, training_mask/<same>.png,\n"
        "val/img, val/mask, test/img, test/mask (palette PNGs), splits/labelled.txt, splits/unlabelled.txt.\n"
        f"A class is in a file-name label when it covers >= {MIN_LABEL_FRACTION:.0%} of the patch.\n"
    )


def synthetic_slide(rng: np.random.Generator, rows: int = 4, cols: int = 6, patch: int = 192,
                    margin: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic whole-slide image: a ``rows`` × ``cols`` mosaic of :func:`generate_patch`
    tissue patches (one case stain, jittered per patch) on white glass with a ``margin``-px border.

    Returns
    -------
    image : (H, W, 3) uint8 RGB, H = rows·patch + 2·margin, W = cols·patch + 2·margin.
    mask : (H, W) int64 class indices, ``BACKGROUND_INDEX`` on glass and lumens.
    """
    height, width = rows * patch + 2 * margin, cols * patch + 2 * margin
    image = np.clip(rng.normal(242.0, 2.0, (height, width, 3)), 0, 255).astype(np.uint8)
    mask = np.full((height, width), BACKGROUND_INDEX, dtype=np.int64)
    stain = random_stain(rng)
    for r in range(rows):
        for c in range(cols):
            tile, tile_mask = generate_patch(rng, patch, stain=jitter_stain(rng, stain))
            y, x = margin + r * patch, margin + c * patch
            image[y:y + patch, x:x + patch] = tile
            mask[y:y + patch, x:x + patch] = tile_mask
    return image, mask


def write_synthetic_slide(path: str | os.PathLike, seed: int = 0, mpp: float = 0.5, **layout) -> Path:
    """Write :func:`synthetic_slide` (``layout``: rows, cols, patch, margin) as a tiled pyramidal TIFF
    with ``mpp`` µm/px that ``tissueseg predict`` and OpenSlide open, and its mask as ``<stem>_mask.png``."""
    from tissueseg.data.tiff import write_pyramidal_tiff

    image, mask = synthetic_slide(np.random.default_rng(seed), **layout)

    def window(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        step = 2 ** level
        return image[::step, ::step][y:y + h, x:x + w]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path.with_name(f"{path.stem}_mask.png"), mask.astype(np.uint8), palette=PALETTE)
    return write_pyramidal_tiff(path, window, image.shape[1], image.shape[0], samples=3, mpp=mpp, fill=255)
