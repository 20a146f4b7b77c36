"""Run configurations (pydantic), loaded from YAML; every run saves its resolved copy."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    path: Path
    format: str = "auto"
    train_split: str | None = None  # default: the dataset's training split ("train")
    val_split: str | None = None  # default: "val" when present, else a case-level split of training cases
    test_split: str | None = None  # default: "test" when present
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # for datasets without official splits
    crop_size: int = 128
    background_detection: bool | None = None  # white background as a class; default on for LUAD-HistoSeg
    white_threshold: int = 200
    min_background_size: int = 50
    num_workers: int = 0


class BackboneConfig(Section):
    name: str = "efficientnet_lite0"
    pretrained: bool | str = False  # True: packaged/local weights; or a path to a weights file/folder/HF cache
    output_stride: int | None = 16  # dilate the deepest stages so CAMs keep spatial detail (MLPS: 8)


class ClassifierConfig(Section):
    """MLPS stage 1 (classification with PDA)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 0.01
    weight_decay: float = 5e-4
    head_lr_mult: float = 10.0
    pda: bool = True
    pda_start_epoch: int = 3
    pda_decay: float = 0.985  # paper; the official code uses 0.98
    pda_floor: float = 0.65


class PseudoMaskConfig(Section):
    layers: list[int] = Field(default_factory=lambda: [-3, -2, -1])  # backbone depths, shallow → deep
    normalization: Literal["global", "per_class"] = "global"


class SegmenterConfig(Section):
    """MLPS stage 2 (DeepLabV3+ with multi-layer pseudo-supervision)."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 1e-4
    layer_weights: list[float] = Field(default_factory=lambda: [0.2, 0.2, 0.6])
    head_lr_mult: float = 10.0
    decoder_channels: int = 256
    gate_threshold: float = 0.1
    flip_tta: bool = False


class WSSSConfig(Section):
    """One weakly supervised run: ``tissueseg wsss run CONFIG.yaml``."""

    method: Literal["mlps"] = "mlps"
    out_dir: Path = Path("runs/mlps")
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    data: DataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    pseudo_masks: PseudoMaskConfig = Field(default_factory=PseudoMaskConfig)
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)


def load_config(path: str | Path, model: type[BaseModel] = WSSSConfig, overrides: dict | None = None) -> BaseModel:
    """Read a YAML config; errors name the file and the offending keys."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: config file not found (fix: check the path)") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    raw.update(overrides or {})
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid config\n{exc}") from exc


def save_config(config: BaseModel, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from tissueseg.data.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
