"""The real EBHI-Seg subset in ../shared/data/ebhi-seg (skipped when absent)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tissueseg.data import open_dataset, split_by_case

EBHI_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ebhi-seg"

pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not EBHI_ROOT.is_dir(), reason=f"{EBHI_ROOT} is absent")]


def header_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:  # the header only: fast
        return img.size


def test_ebhi_real_counts_problems_masks_and_case_split():
    ds = open_dataset(EBHI_ROOT)  # strict: the two unlabelled images are warnings, not errors
    assert ds.info.format == "ebhi-seg" and ds.splits == ["all"]
    assert len(ds.problems) == 2 and not ds.fatal_problems
    assert {p.path.parent.parent.name for p in ds.problems} == {"Low-grade IN"}
    assert len(ds.records) + len(ds.problems) == 1699
    assert {header_size(r.image_path) for r in ds.records} == {(224, 224)}
    for sample in ds.split("all")[::10]:
        assert sample.image.shape == (224, 224, 3) and sample.mask.shape == (224, 224)
        class_id = int(np.argmax(sample.labels)) + 1
        assert set(np.unique(sample.mask)) <= {0, class_id}  # binary: background or the folder class
    parts = split_by_case(ds.records, seed=0)
    case_sets = [{r.case_id for r in part} for part in parts.values()]
    assert all(case_sets) and not (case_sets[0] & case_sets[1] or case_sets[0] & case_sets[2]
                                   or case_sets[1] & case_sets[2])
    assert sum(len(part) for part in parts.values()) == len(ds.records)
