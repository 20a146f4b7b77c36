import csv
import json

import numpy as np
import pytest
import tifffile

from tissueseg.slides.outputs import (NO_TISSUE, ChunkStore, area_table, class_polygons, downsampled_map,
                                      geojson_features, mode_pool, palette_colormap, polygon_area, pyramid_levels,
                                      write_area_csv, write_pyramidal_tiff)
from tissueseg.slides.readers import openslide_available
from tissueseg.slides.tiling import _save_npy

from slide_helpers import CLASSES, PALETTE


def hand_made_map() -> np.ndarray:
    """Class 0 square with a class-2 hole, a class-1 disc, a class-3 L-shape; background 4."""
    m = np.full((120, 160), 4, dtype=np.uint8)
    m[10:60, 10:70] = 0
    m[25:40, 30:50] = 2  # hole in class 0, island of class 2
    yy, xx = np.mgrid[:120, :160]
    m[(yy - 80) ** 2 + (xx - 110) ** 2 < 25 ** 2] = 1
    m[70:110, 10:20] = 3
    m[100:110, 10:60] = 3
    m[0:3, 150:160] = 1  # touches the border
    return m


def test_polygon_areas_match_pixel_counts():
    m = hand_made_map()
    polys = class_polygons(m, range(5))
    assert set(polys) == {0, 1, 2, 3, 4}
    for k in range(4):
        area = sum(polygon_area(p) for p in polys[k])
        count = int((m == k).sum())
        assert abs(area - count) <= 0.02 * count + 4, (k, area, count)
    assert len(polys[0]) == 1 and len(polys[0][0]) == 2  # outer ring and one hole
    assert len(polys[1]) == 2  # the disc and the border strip
    # scale maps to level-0 pixels: the square's top-left corner lies at (10, 10) · scale
    scaled = class_polygons(m, [2], scale=4.0)
    ring = scaled[2][0][0]
    assert ring[:, 0].min() == pytest.approx(30 * 4, abs=2) and ring[:, 1].max() == pytest.approx(40 * 4, abs=2)
    assert polygon_area(scaled[2][0]) == pytest.approx(15 * 20 * 16, rel=0.01)


def test_geojson_is_a_qupath_feature_collection(tmp_path):
    polys = class_polygons(hand_made_map(), range(4), scale=2.0)
    fc = json.loads(json.dumps(geojson_features(polys, CLASSES, PALETTE)))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 4
    f0 = fc["features"][0]
    assert f0["geometry"]["type"] == "MultiPolygon"
    assert f0["properties"]["objectType"] == "annotation"
    assert f0["properties"]["classification"] == {"name": "tumour", "color": [205, 51, 51]}
    rings = f0["geometry"]["coordinates"][0]
    assert all(r[0] == r[-1] for r in rings)

    def signed(r):
        a = np.asarray(r)
        return 0.5 * np.sum(a[:-1, 0] * a[1:, 1] - a[1:, 0] * a[:-1, 1])

    assert signed(rings[0]) > 0 and signed(rings[1]) < 0  # exterior CCW, hole CW
    assert signed(rings[0]) + signed(rings[1]) == pytest.approx((50 * 60 - 15 * 20) * 4, rel=0.01)


def test_area_table_in_mm2_from_mpp(tmp_path):
    counts = np.zeros(256, dtype=np.int64)
    counts[[0, 1, 4, NO_TISSUE]] = [1_000_000, 3_000_000, 500_000, 9_999]
    table = area_table(counts, CLASSES, mpp=0.5, background_index=4, palette=PALETTE)
    rows = {r["class"]: r for r in table["classes"]}
    assert rows["tumour"]["area_mm2"] == pytest.approx(0.25)  # 1e6 px × (0.5 µm)² = 0.25 mm²
    assert rows["stroma"]["area_mm2"] == pytest.approx(0.75)
    assert rows["tumour"]["percent"] == pytest.approx(100 / 4.5, abs=1e-3)
    assert table["analysed_area_mm2"] == pytest.approx(1.125)
    assert table["tissue_area_mm2"] == pytest.approx(1.0)
    assert table["not_analysed_pixels"] == 9_999
    write_area_csv(tmp_path / "a.csv", table)
    lines = list(csv.DictReader(open(tmp_path / "a.csv")))
    assert lines[1]["class"] == "stroma" and float(lines[1]["area_mm2"]) == pytest.approx(0.75)
    assert area_table(counts, CLASSES, mpp=None)["classes"][0]["area_mm2"] is None


def test_mode_pool_and_chunk_store(tmp_path):
    m = hand_made_map()
    assert mode_pool(np.array([[1, 1, 2, 2], [1, 3, 2, 2]], np.uint8), 2).tolist() == [[1, 2]]
    assert mode_pool(np.array([[1, 1, 2]], np.uint8), 2).tolist() == [[1, 2]]  # edge padding never wins
    chunk = 48
    for i in range(3):
        for j in range(4):
            _save_npy(tmp_path / f"chunk_{i}_{j}.npy", np.ascontiguousarray(m[i * chunk:(i + 1) * chunk,
                                                                             j * chunk:(j + 1) * chunk]))
    store = ChunkStore(tmp_path, 160, 120, chunk)
    assert (store.read(0, 0, 120, 160) == m).all()
    got = store.read(5, 7, 50, 60, step=3)  # runs past the bottom and right edges
    assert (got[:39, :51] == m[5::3, 7::3]).all()
    assert (got[39:] == NO_TISSUE).all() and (got[:, 51:] == NO_TISSUE).all()
    beyond = store.read(100, 150, 30, 30)
    assert (beyond[:20, :10] == m[100:, 150:]).all() and (beyond[20:] == NO_TISSUE).all()
    small = downsampled_map(store, 4)
    assert small.shape == (30, 40) and (small == mode_pool(m, 4)).all()


@pytest.mark.skipif(not openslide_available(), reason="openslide-python/openslide-bin not installed (wsi extra)")
def test_class_map_pyramid_reopens_with_openslide(tmp_path):
    import openslide

    rng = np.random.default_rng(0)
    m = np.repeat(np.repeat(rng.integers(0, 5, (40, 60), dtype=np.uint8), 25, 0), 25, 1)  # 1000 × 1500
    m[:100, :100] = NO_TISSUE

    def window(level, y, x, h, w):
        step = 2 ** level
        return m[y * step::step, x * step::step][:h, :w]

    path = write_pyramidal_tiff(tmp_path / "classmap.tif", window, 1500, 1000, mpp=0.5, tile=256,
                                colormap=palette_colormap(PALETTE), fill=NO_TISSUE)
    assert pyramid_levels(1500, 1000, 256) == [(1500, 1000), (750, 500), (375, 250), (188, 125)]
    slide = openslide.OpenSlide(str(path))
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    assert slide.level_dimensions == ((1500, 1000), (750, 500), (375, 250), (188, 125))
    assert [round(d, 2) for d in slide.level_downsamples] == [1.0, 2.0, 4.0, 7.99]
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    rgba = np.asarray(slide.read_region((0, 0), 0, (1500, 1000)))
    expected = np.array([*PALETTE, *([(0, 0, 0)] * 250), (255, 255, 255)], dtype=np.uint8)[m]
    assert (rgba[..., :3] == expected).all()
    level2 = np.asarray(slide.read_region((0, 0), 2, (375, 250)))[..., :3]
    assert (level2 == expected[::4, ::4]).all()
    slide.close()
    # class indices themselves (for analysis) through tifffile
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 4 and tif.pages[0].is_tiled and tif.pages[0].tilewidth == 256
        assert (tif.pages[0].asarray() == m).all() and (tif.pages[1].asarray() == m[::2, ::2]).all()
        # every level compressed, level 0 too (its zlib level once was the pyramid level, 0: stored)
        assert all(sum(page.databytecounts) < page.shape[0] * page.shape[1] / 10 for page in tif.pages)


def test_streamed_geojson_and_speckle_filter(tmp_path):
    from tissueseg.slides.outputs import geojson_features, iter_class_polygons, write_geojson

    m = hand_made_map()
    rng = np.random.default_rng(0)
    noisy = m.copy()
    specks = rng.random(m.shape) < 0.01
    noisy[specks] = 3  # single-pixel speckle
    write_geojson(tmp_path / "a.geojson", iter_class_polygons(m, range(5), scale=2.0), CLASSES, PALETTE,
                  max_polygons=1)
    streamed = json.loads((tmp_path / "a.geojson").read_text())
    whole = geojson_features(class_polygons(m, range(5), scale=2.0), CLASSES, PALETTE)
    flat = lambda fc: sorted(json.dumps(p) for f in fc["features"] for p in f["geometry"]["coordinates"])  # noqa: E731
    assert flat(streamed) == flat(whole)
    assert len(streamed["features"]) == sum(len(f["geometry"]["coordinates"]) for f in whole["features"])
    raw = class_polygons(noisy, [3])[3]
    cleaned = class_polygons(noisy, [3], min_pixels=4)[3]
    assert len(raw) > 100 and len(cleaned) == 1  # only the L-shape survives
