"""summarize / render_report: the numbers and problems `tissueseg data check` prints."""

import json
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console

from tissueseg.data import open_dataset, render_report, summarize


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def make_folder(root: Path, bad_row: bool = False) -> Path:
    for name in ("a1.png", "a2.png", "b1.png", "c1.png"):
        image(root / "images" / name)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "a1.png")
    rows = ["a1.png,1,0,A,train", "a2.png,1,1,A,train", "b1.png,0,1,B,val"] + (["c1.png,7,0,C,val"] if bad_row else [])
    (root / "labels.csv").write_text("image,tumor,stroma,case,split\n" + "\n".join(rows) + "\n")
    return root


def test_summarize_counts_splits_labels_and_cases(tmp_path):
    summary = summarize(open_dataset(make_folder(tmp_path)))
    assert summary["format"] == "folder" and summary["root"] == str(tmp_path)
    assert summary["classes"] == ["tumor", "stroma"]
    assert summary["splits"]["train"] == {"images": 2, "with_mask": 1, "with_labels": 2, "cases": 1}
    assert summary["splits"]["all"] == {"images": 1, "with_mask": 0, "with_labels": 0, "cases": 1}
    assert summary["label_frequencies"]["train"] == {"tumor": 2, "stroma": 1}
    assert summary["label_frequencies"]["val"] == {"tumor": 0, "stroma": 1}
    assert summary["problems"] == [] and summary["fatal"] is False
    assert json.loads(json.dumps(summary)) == summary


def test_fatal_problems_are_flagged_and_rendered(tmp_path):
    summary = summarize(open_dataset(make_folder(tmp_path, bad_row=True), strict=False))
    assert summary["fatal"] is True
    [problem] = summary["problems"]
    assert problem.startswith("error:") and "line 5 (c1.png)" in problem
    console = Console(record=True, width=200)
    console.print(render_report(summary))
    text = console.export_text()
    assert "FAIL: 1 errors, 0 warnings" in text and "line 5 (c1.png)" in text
    assert "train" in text and "stroma" in text and str(tmp_path) in text


def test_report_of_clean_dataset_says_ok(tmp_path):
    console = Console(record=True, width=200)
    console.print(render_report(summarize(open_dataset(make_folder(tmp_path)))))
    assert "OK: 0 errors, 0 warnings" in console.export_text()
