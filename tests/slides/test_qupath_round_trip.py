"""QuPath → tissueseg → QuPath: class polygons drawn on a synthetic slide (from its true mask) become a
`folder` dataset with `data tiles`, train the demo-sized MLPS with `wsss run`, and `predict` writes a GeoJSON
that the same reader reads back on the slide's coordinates."""

import csv
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tissueseg.cli import app
from tissueseg.data.io import read_label_image
from tissueseg.data.synthetic import PALETTE, write_synthetic_slide
from tissueseg.slides.annotations import IGNORE, AnnotationIndex, ClassMapping, class_geometries, load_annotations, \
    write_geojson

pytestmark = pytest.mark.slow

QUPATH = ["Tumor", "Necrosis", "Lymphocytes", "Stroma"]
CLASSES = "Tumor=tumour,Necrosis=necrosis,Lymphocytes=lymphocyte,Stroma=stroma"


def test_qupath_round_trip(tmp_path):
    runner = CliRunner()
    slide = write_synthetic_slide(tmp_path / "slide.tif", seed=5, rows=2, cols=3, patch=128, margin=64)
    truth = read_label_image(tmp_path / "slide_mask.png").astype(np.int64)
    height, width = truth.shape
    # "drawn in QuPath": the true class regions as polygons with holes (lumens), slightly simplified like a hand
    write_geojson(tmp_path / "slide.geojson", class_geometries(truth, range(4), tolerance=0.5), QUPATH, PALETTE)

    ds = tmp_path / "ds"
    result = runner.invoke(app, ["data", "tiles", str(slide), "--annotations", str(tmp_path / "slide.geojson"),
                                 "--out", str(ds), "--classes", CLASSES, "--tile", "64", "--tag-min-area", "0.05"])
    assert result.exit_code == 0, result.output
    with open(ds / "tiles.csv", newline="") as f:
        tiles = list(csv.DictReader(f))
    assert len(tiles) >= 12
    agree = total = 0
    for r in tiles:
        x, y = int(r["x"]), int(r["y"])
        mask = read_label_image(ds / "masks" / r["image"])
        t = truth[y:y + 64, x:x + 64]
        known = t < 4  # background/lumens are not annotated: 255 there
        agree += int((mask[known] == t[known]).sum()) + int((mask[~known] == IGNORE).sum())
        total += t.size
    assert agree / total >= 0.98  # rasterisation tolerance (the polygons were simplified by 0.5 px)

    config = {
        "out_dir": str(tmp_path / "run"), "seed": 0,
        "data": {"path": str(ds), "format": "folder", "crop_size": 64, "mpp": 0.5,
                 "val_split": "train", "test_split": "train"},
        "backbone": {"name": "efficientnet_lite0", "pretrained": False, "output_stride": 16},
        "classifier": {"epochs": 2, "batch_size": 8, "pda_start_epoch": 1},
        "segmenter": {"epochs": 1, "batch_size": 8, "decoder_channels": 16},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["wsss", "run", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["predict", str(tmp_path / "run" / "model.pt"), str(slide), "--out",
                                 str(tmp_path / "pred"), "--workers", "0", "--polygon-tolerance", "1"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "pred" / "slide" / "summary.json").read_text())
    names = summary["classes"]
    assert names[:4] == ["tumour", "necrosis", "lymphocyte", "stroma"]
    geojson = tmp_path / "pred" / "slide" / "classes.geojson"
    anns = load_annotations(geojson, ClassMapping.parse(",".join(names)), (width, height))
    assert anns and {a.name for a in anns} <= set(names)
    for a in anns:
        x0, y0, x1, y1 = a.geometry.bounds
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    assert summary["geojson"]["features"] == len(json.loads(geojson.read_text())["features"])
    # the prediction read back as a mask lands on the slide: its tissue classes sit on the tissue
    back = AnnotationIndex(anns).rasterize(0, 0, width, height)
    tissue_classes = [k for k, n in enumerate(names) if n != "background"]
    predicted_tissue = np.isin(back, tissue_classes)
    assert predicted_tissue.any()
    assert (truth[predicted_tissue] < 4).mean() > 0.8
