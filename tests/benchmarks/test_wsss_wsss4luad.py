"""The seeds table of benchmarks/wsss_wsss4luad.py: per-seed mIoU, mean ± sd and the pooled confusion."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

from tissueseg.data.sample import DatasetInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from wsss_wsss4luad import seeds_table  # noqa: E402

INFO = DatasetInfo("folder", ["a", "b"], ["a", "b"], [(0, 0, 0)] * 2, ignore_index=255)


def test_pooled_row_sums_the_seeds_confusion_matrices():
    # seed 0: class b absent from both maps → mIoU over a only = 1.0; seed 1: IoU a 1/2, b 2/3.
    # pooled [[3, 1], [0, 2]]: a 3/4, b 2/3 → 70.8; mean of the seeds (100 + 58.3) / 2 = 79.2.
    def row(confusion, miou):
        return {"test": {"miou": miou, "confusion": confusion}}

    per_seed = {0: {"info": INFO, "results": {"cam": row([[2, 0], [0, 0]], 1.0),
                                              "supervised": row([[2, 0], [0, 0]], 1.0)}},
                1: {"info": INFO, "results": {"cam": row([[1, 1], [0, 2]], 7 / 12),
                                              "supervised": row([[2, 0], [0, 2]], 1.0)}}}
    console = Console(width=200, record=True)
    console.print(seeds_table(per_seed))
    text = console.export_text()
    cam = next(line for line in text.splitlines() if "CAM baseline" in line)
    assert "100.0" in cam and "58.3" in cam and "79.2 ± 29.5" in cam and "70.8" in cam and "71 %" in cam
    assert "MLPS" not in text  # rows that did not run are left out
