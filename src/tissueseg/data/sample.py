"""The one sample type every reader returns, and the dataset container around it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset: the file, what is wrong and how to fix it.

    ``fatal`` problems would break training (``tissueseg data check`` exits 1);
    the others are reported but the affected files can simply be skipped.
    """

    path: Path
    message: str
    fix: str
    fatal: bool = True

    def __str__(self) -> str:
        level = "error" if self.fatal else "warning"
        return f"{level}: {self.path}: {self.message} (fix: {self.fix})"


class DatasetError(ValueError):
    """Raised when a dataset cannot be used; lists every problem with its path and fix."""

    def __init__(self, problems: Sequence[Problem], header: str = "dataset has problems"):
        self.problems = list(problems)
        lines = [f"{header} ({len(self.problems)}):"] + [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Record:
    """Where one sample lives on disk, and what its file names / CSVs say about it."""

    image_path: Path
    split: str
    case_id: str
    mask_path: Path | None = None
    labels: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class Sample:
    """One image with whatever supervision it has.

    Attributes
    ----------
    image : (H, W, 3) uint8 RGB.
    mask : (H, W) int64 class indices, or None.
    labels : (C,) float32 image-level multi-label vector (0/1), or None.
    case_id : patient / case identifier used for case-level splits.
    path : source image path.
    instances : (H, W) int32 instance ids (0 = background) for object metrics, or None.
    """

    image: np.ndarray
    mask: np.ndarray | None
    labels: np.ndarray | None
    case_id: str
    path: Path
    instances: np.ndarray | None = None


@dataclass
class DatasetInfo:
    """Class names, palette and scoring convention of one dataset format.

    ``classes`` are the mask indices 0..K-1 by name. ``label_classes`` are the
    classes of the image-level label vector (a prefix of ``classes`` for the WSSS
    formats). ``ignore_index`` is the mask index excluded from scoring (the white
    background of LUAD-HistoSeg / BCSS-WSSS), or None. ``mpp`` is the images' microns
    per pixel when the dataset records one (``dataset.json`` of a ``folder`` dataset).
    """

    format: str
    classes: list[str]
    label_classes: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int | None = None
    background_index: int | None = None
    mpp: float | None = None


class SplitView(Sequence[Sample]):
    """Lazy, indexable view of one split: images are read only when accessed."""

    def __init__(self, dataset: "TissueDataset", records: list[Record]):
        self.dataset = dataset
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return SplitView(self.dataset, self.records[index])
        return self.dataset.load(self.records[index])

    def __iter__(self) -> Iterator[Sample]:
        for record in self.records:
            yield self.dataset.load(record)


class TissueDataset:
    """A dataset on disk: records per split, class info and the problems found on open.

    Readers build it; ``load`` turns a record into a :class:`Sample`.
    """

    def __init__(self, root: Path, info: DatasetInfo, records: list[Record],
                 problems: list[Problem], loader):
        self.root = Path(root)
        self.info = info
        self.records = records
        self.problems = problems
        self._loader = loader
        self._cache: dict[Path, Sample] = {}
        self._cache_budget = 0

    def cache_in_memory(self, max_bytes: int) -> None:
        """Keep decoded samples in memory, up to ``max_bytes`` of arrays; later ones are read from disk."""
        self._cache_budget = max_bytes

    @property
    def splits(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r.split, None)
        return list(seen)

    def split(self, name: str) -> SplitView:
        records = [r for r in self.records if r.split == name]
        if not records:
            raise DatasetError(
                [Problem(self.root, f"split '{name}' is empty or missing (have: {', '.join(self.splits) or 'none'})",
                         "check the folder layout against the README, or pick another split")],
                header=f"cannot use split '{name}' of {self.root}")
        return SplitView(self, records)

    def load(self, record: Record) -> Sample:
        """The record's sample; a copy of the cached one when :meth:`cache_in_memory` holds it."""
        cached = self._cache.get(record.image_path)
        if cached is None:
            cached = self._loader(record, self.info)
            size = sum(a.nbytes for a in (cached.image, cached.mask, cached.labels, cached.instances) if a is not None)
            if size > self._cache_budget:
                return cached
            self._cache[record.image_path] = cached
            self._cache_budget -= size
        return replace(cached, **{k: getattr(cached, k).copy() for k in ("image", "mask", "labels", "instances")
                                  if getattr(cached, k) is not None})

    @property
    def fatal_problems(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={sum(r.split == s for r in self.records)}" for s in self.splits)
        return f"TissueDataset({self.info.format!r}, {self.root}, {counts}, problems={len(self.problems)})"
