"""Fixtures for the slide tests (helpers live in slide_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slide_helpers import CLASSES, PALETTE, torch_threads
from tissueseg.models.bundle import ModelMeta, SegmenterSpec, create_model, load_predictor, save_bundle


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    """CI runners are small and shared: one intra-op thread avoids OpenMP spin contention (5x faster here)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """A real model bundle (EfficientNet-Lite0 DeepLabV3+, random weights, 128 px tiles)."""
    torch.manual_seed(0)
    spec = SegmenterSpec("efficientnet_lite0", 4, 16, 32)
    meta = ModelMeta(method="test", classes=CLASSES, palette=PALETTE, label_to_mask=[0, 1, 2, 3], background_index=4,
                     white_background={"threshold": 200, "min_size": 50}, window=128)
    with torch_threads(1):
        return save_bundle(tmp_path_factory.mktemp("model") / "model.pt", create_model(spec), spec, meta)


@pytest.fixture(scope="session")
def predictor(model_file):
    return load_predictor(model_file)
