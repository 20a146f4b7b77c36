"""`tissueseg data tag-crops` options: --scale, --split-fractions, --whole, --per-image, --mpp, reruns."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tissueseg.cli import app
from tissueseg.data import open_dataset, split_by_case
from tissueseg.data.io import read_label_image, read_rgb
from tissueseg.slides.tiles import CropOptions, TilingError, tag_crops

CLASSES = ("tumour", "stroma", "background")


def masked_folder(root: Path, sizes: list[tuple[int, int]], mpp: float | None = None) -> Path:
    """A `folder` dataset of random images whose masks are 4-px blocks of tumour / stroma / background,
    two images per case."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i, (h, w) in enumerate(sizes):
        mask = np.kron(rng.integers(0, 3, (h // 4, w // 4)), np.ones((4, 4), dtype=np.int64)).astype(np.uint8)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")
        rows.append(f"im{i}.png,{','.join(str(int((mask == k).any())) for k in range(3))},case{i // 2},all\n")
    (root / "labels.csv").write_text(f"image,{','.join(CLASSES)},case,split\n" + "".join(rows))
    if mpp is not None:
        (root / "dataset.json").write_text(json.dumps({"mpp": mpp}))
    return root


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def resized(path: Path, scale: float, nearest: bool) -> np.ndarray:
    img = Image.open(path)
    size = (round(img.width * scale), round(img.height * scale))
    return np.asarray(img.resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def test_scaled_crops_are_crops_of_the_resized_images_with_the_tag_rule(tmp_path):
    src = masked_folder(tmp_path / "src", [(40, 48), (40, 48), (40, 20)], mpp=0.25)  # the last: 10 px wide at 0.5
    summary = tag_crops(src, tmp_path / "out", CropOptions(crop=16, stride=8, tag_min_area=0.1, scale=0.5))
    crops = rows_of(tmp_path / "out" / "crops.csv")
    assert summary["crops"] == len(crops) and summary["mpp"] == 0.5  # 0.25 µm/px halved
    assert open_dataset(tmp_path / "out", format="folder").info.mpp == 0.5
    grid = {(r["source"], int(r["x"]), int(r["y"])) for r in crops}
    assert {(x, y) for s, x, y in grid if s.endswith("im0.png")} <= {(0, 0), (8, 0), (0, 4), (8, 4)}  # 24 × 20 px
    assert {(r["width"], r["height"]) for r in crops if r["source"].endswith("im2.png")} == {("10", "16")}
    for r in crops:
        x, y, w, h = (int(r[k]) for k in ("x", "y", "width", "height"))
        image = resized(Path(r["source"]), 0.5, nearest=False)[y:y + h, x:x + w]
        truth = resized(src / "masks" / Path(r["source"]).name, 0.5, nearest=True)[y:y + h, x:x + w]
        assert (read_rgb(tmp_path / "out" / "images" / r["image"]) == image).all()
        assert (read_label_image(tmp_path / "out" / "masks" / r["image"]) == truth).all()
        tissue = np.isin(truth, (0, 1)).sum()
        expected = [c for k, c in enumerate(CLASSES[:2]) if 0 < (truth == k).sum() >= 0.1 * tissue]
        expected += ["background"] if 0 < (truth == 2).sum() >= 0.1 * truth.size else []
        assert r["tags"].split(";") == expected


def test_split_by_case_keeps_val_and_test_whole_and_a_seeded_subset_of_crops(tmp_path):
    src = masked_folder(tmp_path / "src", [(32, 32)] * 8)
    options = CropOptions(crop=8, split_fractions=(0.5, 0.25, 0.25), whole=("val", "test"), per_image=3, seed=3)
    summary = tag_crops(src, tmp_path / "a", options)
    parts = split_by_case(open_dataset(src).records, (0.5, 0.25, 0.25), seed=3)
    split_of = {str(r.image_path): name for name, part in parts.items() for r in part}
    crops = rows_of(tmp_path / "a" / "crops.csv")
    assert all(split_of[r["source"]] == r["split"] for r in crops)
    whole = [r for r in crops if r["kind"] == "whole"]
    assert sorted(r["source"] for r in whole) == sorted(s for s, name in split_of.items() if name != "train")
    assert all(r["image"] == Path(r["source"]).name and (r["width"], r["height"]) == ("32", "32") for r in whole)
    train = [r for r in crops if r["kind"] == "crop"]
    assert {r["split"] for r in train} == {"train"} and summary["crops"] == len(train) == 3 * len(parts["train"])
    assert summary["whole"] == len(whole) and summary["splits"]["train"] == len(train)
    tag_crops(src, tmp_path / "b", options)
    assert rows_of(tmp_path / "b" / "crops.csv") == crops  # seeded: the same crops again
    ds = open_dataset(tmp_path / "a", format="folder")
    assert ds.info.classes == list(CLASSES) and sorted(ds.splits) == ["test", "train", "val"]


def test_the_readme_command_and_bad_options_name_their_fix(tmp_path):
    src = masked_folder(tmp_path / "src", [(32, 32)] * 10)
    out = tmp_path / "crops"
    runner = CliRunner()
    result = runner.invoke(app, ["data", "tag-crops", str(src), "--out", str(out), "--scale", "0.5", "--crop", "8",
                                 "--stride", "4", "--min-tissue", "0.1", "--split-fractions", "0.6,0.2,0.2",
                                 "--whole", "val,test", "--mpp", "0.5"])
    assert result.exit_code == 0, result.output
    assert "whole images" in result.output and json.loads((out / "dataset.json").read_text())["mpp"] == 1.0
    for args, message in ((["--scale", "0"], "--scale 0.0: must be > 0"),
                          (["--split-fractions", "0.6,x"], "--split-fractions 0.6,x: give three"),
                          (["--split-fractions", "0.6,0.6,0.2"], "--split-fractions 0.6,0.6,0.2: three fractions"),
                          (["--whole", "val"], "--whole val: "),
                          (["--per-image", "0"], "--per-image 0: must be ≥ 1"),
                          (["--tag-min-area", "5"], "--tag-min-area 5.0: must be a fraction")):
        bad = runner.invoke(app, ["data", "tag-crops", str(src), "--out", str(tmp_path / "bad"), "--crop", "8",
                                  *args])
        text = " ".join(bad.output.split())
        assert bad.exit_code == 1 and message in text and "fix" in text, (args, text)


def test_a_rerun_with_other_settings_starts_afresh(tmp_path):
    src = masked_folder(tmp_path / "src", [(32, 32)] * 2)
    out = tmp_path / "out"
    tag_crops(src, out, CropOptions(crop=8))
    assert tag_crops(src, out, CropOptions(crop=8)).get("resumed") == "finished"
    tag_crops(src, out, CropOptions(crop=16))
    names = {r["image"] for r in rows_of(out / "crops.csv")}
    assert {p.name for p in (out / "images").iterdir()} == names == {p.name for p in (out / "masks").iterdir()}
    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "mine.png").write_bytes(b"")
    with pytest.raises(TilingError, match="did not write"):
        tag_crops(src, foreign, CropOptions(crop=8))
    tag_crops(src, foreign, CropOptions(crop=8, overwrite=True))
    assert not (foreign / "images" / "mine.png").exists()


def test_repeated_stems_in_ebhi_class_folders_get_their_own_crops(tmp_path):
    base = tmp_path / "EBHI-SEG"
    foreground = np.zeros((16, 16), dtype=np.uint8)
    foreground[:8] = 255
    for folder in ("Normal", "Polyp"):  # one case, the same file name in two class folders
        (base / folder / "image").mkdir(parents=True)
        (base / folder / "label").mkdir()
        Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8)).save(base / folder / "image" / "GT1-1-400-001.png")
        Image.fromarray(foreground).save(base / folder / "label" / "GT1-1-400-001.png")
    summary = tag_crops(tmp_path, tmp_path / "out", CropOptions(crop=8, format="ebhi-seg"))
    crops = rows_of(tmp_path / "out" / "crops.csv")
    assert summary["crops"] == len(crops) == 8 == len({r["image"] for r in crops})
    assert summary["classes"][-1] == "background" and summary["tag_frequencies"]["normal"] == 2
    assert summary["tag_frequencies"]["polyp"] == 2 and summary["tag_frequencies"]["background"] == 4
