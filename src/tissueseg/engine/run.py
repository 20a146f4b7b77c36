"""A run's shared context: config, opened dataset, splits, label space, device, output folder, progress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tissueseg.config import save_config
from tissueseg.data.io import write_json
from tissueseg.data.readers import open_dataset
from tissueseg.data.sample import DatasetInfo, Record, TissueDataset
from tissueseg.engine import distributed as dist_utils
from tissueseg.engine.data import LabelSpace, resolve_splits
from tissueseg.engine.trainer import seed_everything
from tissueseg.models.device import resolve_device

FORMATS_WITH_WHITE_BACKGROUND = ("luad-histoseg",)


@dataclass
class RunContext:
    """Everything a method's recipe needs besides its own networks and losses."""

    config: Any
    dataset: TissueDataset
    splits: dict[str, list[Record]]
    space: LabelSpace
    device: torch.device
    out_dir: Path
    console: Console
    background_detection: bool

    @property
    def info(self) -> DatasetInfo:
        return self.dataset.info

    @classmethod
    def open(cls, config: Any, console: Console | None = None) -> "RunContext":
        """Open and validate the dataset (strict: every problem listed), resolve splits, save the config.

        ``data.mpp`` left unset takes the dataset's own MPP (``dataset.json`` of ``data tiles`` /
        ``data tag-crops``), so the saved config and ``model.pt`` carry it.
        """
        dist_utils.init_distributed()
        seed_everything(config.seed)
        d = config.data
        dataset = open_dataset(d.path, format=d.format, strict=True)
        if d.mpp is None and dataset.info.mpp is not None:
            d = d.model_copy(update={"mpp": dataset.info.mpp})
            config = config.model_copy(update={"data": d})
        dataset.cache_in_memory(int(d.cache_gib * 2**30))
        splits = resolve_splits(dataset, d.train_split, d.val_split, d.test_split, d.split_fractions, config.seed)
        detect = d.background_detection
        if detect is None:
            detect = dataset.info.format in FORMATS_WITH_WHITE_BACKGROUND
        out_dir = Path(config.out_dir)
        if dist_utils.is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, out_dir / "config.yaml")
        return cls(config, dataset, splits, LabelSpace.from_info(dataset.info), resolve_device(config.device),
                   out_dir, console or Console(), bool(detect and dataset.info.background_index is not None))

    def save_json(self, path: Path, payload: Any) -> None:
        """:func:`tissueseg.data.io.write_json` on rank 0 only (every rank runs the recipe; one writes)."""
        if dist_utils.is_main_process():
            write_json(path, payload)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        """A progress bar (rank 0); yields ``advance(n)``."""
        with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=self.console, disable=not dist_utils.is_main_process()) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
