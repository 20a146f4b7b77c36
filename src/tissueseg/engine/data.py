"""From dataset records to training batches: label spaces, split resolution and a torch Dataset."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from tissueseg.data.sample import DatasetInfo, Problem, DatasetError, Record, Sample, TissueDataset
from tissueseg.data.transforms import apply_pair

IGNORE = 255


@dataclass(frozen=True)
class LabelSpace:
    """The classes a network predicts and how a dataset's mask values map onto them.

    :meth:`from_info` (weakly supervised): the image-label classes. LUAD-HistoSeg: labels 0..3 are
    mask indices 0..3 and mask index 4 (white background) is outside the label space; EBHI-Seg:
    labels 0..5 are mask indices 1..6 and mask index 0 is background.
    :meth:`every_class` (semi-supervised): every class of the dataset, background included
    (LUAD-HistoSeg's white background index 4 becomes the fifth class); with ``binary``,
    background vs everything else.
    """

    to_mask: np.ndarray  # (K,) mask index of each output class
    to_label: np.ndarray  # (256,) label index of each mask value, IGNORE when outside the label space
    names: list[str] = field(default_factory=list)  # output class names
    palette: list[tuple[int, int, int]] = field(default_factory=list)
    background: int | None = None  # output class that is background, when the network predicts it

    @classmethod
    def from_info(cls, info: DatasetInfo) -> "LabelSpace":
        to_mask = np.array([info.classes.index(name) for name in info.label_classes], dtype=np.int64)
        to_label = np.full(256, IGNORE, dtype=np.int64)
        to_label[to_mask] = np.arange(len(to_mask))
        return cls(to_mask, to_label, list(info.label_classes), [tuple(info.palette[i]) for i in to_mask])

    @classmethod
    def every_class(cls, info: DatasetInfo, binary: bool = False) -> "LabelSpace":
        to_label = np.full(256, IGNORE, dtype=np.int64)
        k = len(info.classes)
        if not binary:
            to_label[:k] = np.arange(k)
            return cls(np.arange(k), to_label, list(info.classes), [tuple(c) for c in info.palette],
                       info.background_index)
        if info.background_index is None:
            raise ValueError(f"binary: true needs a background class, and the {info.format} classes "
                             f"({', '.join(info.classes)}) have none "
                             f"(fix: add a 'background' class or set binary: false)")
        to_label[:k] = 1
        to_label[info.background_index] = 0
        foreground = info.classes[1 - info.background_index] if k == 2 else \
            ("gland" if info.format == "ebhi-seg" else "foreground")
        return cls(np.arange(2), to_label, ["background", foreground], [(0, 0, 0), (255, 255, 255)], 0)

    @property
    def num_classes(self) -> int:
        return len(self.to_mask)

    def mask_to_label(self, mask: np.ndarray) -> np.ndarray:
        return self.to_label[np.clip(np.asarray(mask), 0, 255)]

    def label_to_mask(self, label_map: torch.Tensor | np.ndarray):
        lut = torch.as_tensor(self.to_mask, device=label_map.device) if isinstance(label_map, torch.Tensor) \
            else self.to_mask
        return lut[label_map]

    def labels_from_mask(self, mask: np.ndarray) -> np.ndarray:
        """Image-level labels derived from a mask: class k present if any pixel has its mask index."""
        present = np.bincount(np.clip(mask, 0, 255).ravel(), minlength=256) > 0
        return present[self.to_mask].astype(np.float32)

    def sample_labels(self, sample: Sample) -> np.ndarray:
        if sample.labels is not None and len(sample.labels) == self.num_classes:
            return np.asarray(sample.labels, dtype=np.float32)
        if sample.mask is not None:
            return self.labels_from_mask(sample.mask)
        raise DatasetError([Problem(sample.path, "sample has neither image-level labels nor a mask",
                                    "add labels to the file name / CSV, or a mask")])


def resolve_splits(dataset: TissueDataset, train: str | None, val: str | None, test: str | None,
                   fractions: Sequence[float], seed: int) -> dict[str, list[Record]]:
    """Training / validation / test records: the dataset's own splits, else a seeded split by case.

    Datasets without a validation split (e.g. EBHI-Seg, one folder) are split by case so no patient
    is in two parts; validation falls back to the test split when only train and test exist. A
    ``test`` split named explicitly without a validation split (GlaS: ``test_split: testA``) is kept
    as the test set, and validation cases are carved out of the training split by case.
    """
    from tissueseg.data.splits import split_by_case

    have = dataset.splits
    train = train or next((s for s in ("train", "training") if s in have), None)
    if train in have and test in have and val is None and "val" not in have:
        pool = [r for r in dataset.records if r.split == train]
        val_share = fractions[1] / max(fractions[0] + fractions[1], 1e-9)
        parts = split_by_case(pool, fractions=(1 - val_share, val_share, 0.0), seed=seed)
        return {"train": parts["train"], "val": parts["val"], "test": [r for r in dataset.records if r.split == test]}
    if train is None or (val is None and "val" not in have and "test" not in have):
        pool = [r for r in dataset.records if r.split == (train or have[0])]
        parts = split_by_case(pool, fractions=tuple(fractions), seed=seed)
        return {"train": parts["train"], "val": parts["val"], "test": parts["test"]}
    val = val or ("val" if "val" in have else "test")
    test = test or ("test" if "test" in have else val)
    return {name: [r for r in dataset.records if r.split == split]
            for name, split in (("train", train), ("val", val), ("test", test))}


class SegmentationSamples(Dataset):
    """Records → ``{"image", "labels", "masks"?, "index"}`` with one paired transform.

    Parameters
    ----------
    dataset : the opened dataset (loads the files).
    records : which samples.
    transform : paired transform from :mod:`tissueseg.data.transforms`.
    space : label space of the network.
    use_mask : add the ground-truth mask (in label space, IGNORE outside) as the first of ``masks``.
    extra_masks : callable ``index → list of (H, W) mask-index arrays`` (e.g. pseudo masks), added after.
    """

    def __init__(self, dataset: TissueDataset, records: Sequence[Record], transform, space: LabelSpace,
                 use_mask: bool = False, extra_masks: Callable[[int], list[np.ndarray]] | None = None):
        self.dataset = dataset
        self.records = list(records)
        self.transform = transform
        self.space = space
        self.use_mask = use_mask
        self.extra_masks = extra_masks

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.dataset.load(self.records[index])
        masks = []
        if self.use_mask:
            if sample.mask is None:
                raise DatasetError([Problem(sample.path, "this sample has no mask but the run needs one",
                                            "provide the mask, or train from labels only")])
            masks.append(sample.mask)
        if self.extra_masks is not None:
            masks.extend(self.extra_masks(index))
        image, out = apply_pair(self.transform, sample.image, [m for m in masks] if masks else None)
        item = {"image": image.as_subclass(torch.Tensor),
                "labels": torch.from_numpy(self.space.sample_labels(sample)), "index": torch.tensor(index)}
        if masks:
            item["masks"] = torch.stack([torch.from_numpy(self.space.mask_to_label(m.as_subclass(torch.Tensor)
                                                                                  .numpy())) for m in out])
        return item


def batches_by_size(dataset: TissueDataset, records: Sequence[Record], batch_size: int
                    ) -> Iterator[tuple[list[int], list[Sample]]]:
    """Consecutive samples grouped into batches of equal image size (for evaluation and inference)."""
    indices: list[int] = []
    samples: list[Sample] = []
    for i, record in enumerate(records):
        sample = dataset.load(record)
        if samples and (len(samples) == batch_size or sample.image.shape != samples[0].image.shape):
            yield indices, samples
            indices, samples = [], []
        indices.append(i)
        samples.append(sample)
    if samples:
        yield indices, samples


def images_to_tensor(samples: Sequence[Sample], device: torch.device) -> torch.Tensor:
    """Stack uint8 HWC images into a float (N, 3, H, W) tensor in [0, 1] on ``device``."""
    array = np.stack([s.image for s in samples])
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float().div_(255)
