"""QuPath GeoJSON in and out (tissueseg.slides.annotations): class mapping, reading, repairs, errors,
per-window rasterisation, tracing and simplification."""

import json

import numpy as np
import pytest

from tissueseg.slides.annotations import (IGNORE, AnnotationError, AnnotationIndex, ClassMapping, class_geometries,
                                          load_annotations, read_geojson, write_geojson)

from slide_helpers import CLASSES, PALETTE


def feature(coords, cls=None, kind="Polygon", object_type="annotation", **props):
    p = {"objectType": object_type, **props}
    if cls is not None:
        p["classification"] = {"name": cls, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": p}


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def write(tmp_path, features, name="a.geojson", wrap=True):
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features} if wrap else features))
    return path


def test_class_mapping_from_list_and_csv(tmp_path):
    m = ClassMapping.parse("Tumor=tumour, Stroma=stroma,necrosis,Other=ignore")
    assert m.classes == ("tumour", "stroma", "necrosis")
    assert (m.lookup("tumor"), m.lookup("TUMOUR"), m.lookup("Stroma"), m.lookup("Necrosis")) == (0, 0, 1, 2)
    assert m.lookup("other") is None
    with pytest.raises(KeyError):
        m.lookup("Immune cells")
    csv_path = tmp_path / "classes.csv"
    csv_path.write_text("annotation,class\nTumor,tumour\nStroma,stroma\nOther,ignore\n")
    assert ClassMapping.parse(str(csv_path)) == ClassMapping.parse("Tumor=tumour,Stroma=stroma,Other=ignore")
    with pytest.raises(AnnotationError, match="no dataset classes"):
        ClassMapping.parse("Other=ignore")
    with pytest.raises(AnnotationError, match="not found"):
        ClassMapping.parse(str(tmp_path / "missing.csv"))


def test_reads_qupath_features_repairs_and_skips_with_warnings(tmp_path):
    features = [
        feature([square(10, 10, 60, 60), square(20, 20, 30, 30)], "Tumor"),  # polygon with a hole
        feature([[square(70, 10, 90, 30)], [square(70, 40, 90, 60)]], "Stroma", kind="MultiPolygon"),
        feature([square(0, 0, 5, 5)], "Tumor", object_type="detection"),
        feature([[[100, 10], [140, 50], [140, 10], [100, 50], [100, 10]]], "Stroma"),  # bow tie
        feature([square(5000, 5000, 5100, 5100)], "Tumor", name="far away"),
        feature([square(180, 180, 260, 260)], "Tumor"),  # crosses the slide edge
        feature([[10, 10], [50, 50]], "Tumor", kind="LineString"),
        feature([square(0, 100, 50, 150)]),  # unclassified
    ]
    warnings = []
    classes = ClassMapping.parse("Tumor=tumour,Stroma=stroma,Unclassified=ignore")
    anns = load_annotations(write(tmp_path, features), classes, (200, 200), warn=warnings.append)
    assert [a.name for a in anns] == ["Tumor", "Stroma", "Stroma", "Tumor", "Unclassified"]
    assert [a.label for a in anns] == [0, 1, 1, 0, None]
    assert anns[0].geometry.area == 50 * 50 - 10 * 10 and anns[0].colour == (200, 0, 0)
    assert anns[2].geometry.is_valid and anns[2].geometry.area == pytest.approx(800)  # two triangles
    assert anns[3].geometry.bounds == (180, 180, 200, 200)
    text = "\n".join(warnings)
    assert "feature 3" in text and "repaired with shapely.make_valid" in text
    assert "feature 4" in text and "'far away'" in text and "outside the slide" in text
    assert "feature 5" in text and "clipped" in text
    assert "LineString, not an area" in text and "1 detection object(s) skipped" in text


def test_bare_feature_lists_and_old_colour_format(tmp_path):
    f = feature([square(0, 0, 10, 10)])
    f["properties"] = {"object_type": "annotation", "classification": {"name": "Tumor", "colorRGB": -3670016}}
    anns = load_annotations(write(tmp_path, [f], wrap=False), ClassMapping.parse("Tumor"))
    assert anns[0].colour == (200, 0, 0) and anns[0].label == 0


def test_clear_errors_name_the_file_and_feature(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(AnnotationError, match=r"bad.geojson: not valid GeoJSON: .* line 1"):
        read_geojson(bad)
    path = write(tmp_path, [feature([square(0, 0, 9, 9)], "Tumor"), feature([square(0, 0, 9, 9)], "Immune cells"),
                            feature([square(0, 0, 9, 9)])])
    with pytest.raises(AnnotationError) as err:
        load_annotations(path, ClassMapping.parse("Tumor=tumour"), slide="s1.svs")
    msg = str(err.value)
    assert "slide s1.svs" in msg and "'Immune cells' (feature 1)" in msg and "'Unclassified' (feature 2)" in msg
    assert "Unclassified=ignore" in msg
    with pytest.raises(AnnotationError, match="not found"):
        read_geojson(tmp_path / "nope.geojson")
    junk = write(tmp_path, [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1, 2]]},
                             "properties": {}}], name="junk.geojson")
    with pytest.raises(AnnotationError, match="feature 0 .*unreadable geometry"):
        load_annotations(junk, ClassMapping.parse("Unclassified=x"))


def test_rasterise_windows_holes_order_and_ignore(tmp_path):
    features = [feature([square(0, 0, 40, 40), square(10, 10, 20, 20)], "Tumor"),
                feature([square(30, 0, 60, 20)], "Stroma"),  # painted over the tumour
                feature([square(0, 30, 10, 40)], "Other")]  # ignore: carves out
    anns = load_annotations(write(tmp_path, features), ClassMapping.parse("Tumor,Stroma,Other=ignore"), (64, 64))
    index = AnnotationIndex(anns)
    full = index.rasterize(0, 0, 64, 64)
    expected = np.full((64, 64), IGNORE, np.uint8)
    expected[0:40, 0:40] = 0
    expected[10:20, 10:20] = IGNORE
    expected[0:20, 30:60] = 1
    expected[30:40, 0:10] = IGNORE
    assert (full == expected).all()
    # a window at half resolution samples pixel centres of 2x2 level-0 blocks; an offset window is a crop
    assert (index.rasterize(0, 0, 32, 32, scale=2.0) == expected[1::2, 1::2]).all()
    assert (index.rasterize(16, 8, 24, 24) == expected[8:32, 16:40]).all()
    assert (index.rasterize(100, 100, 8, 8) == IGNORE).all()
    x0 = np.array([0, 44, 0, 56, 60])
    y0 = np.array([0, 44, 30, 0, 0])  # the last box only shares an edge with the stroma
    touching = index.touching(x0, y0, x0 + 4, y0 + 4)
    assert touching.tolist() == [True, False, True, True, False]
    assert index.touching(x0, y0, x0 + 4, y0 + 4, labelled_only=True).tolist() == [True, False, True, True, False]


def hand_map():
    m = np.full((90, 120), 4, np.uint8)
    m[10:60, 10:70] = 0
    m[25:40, 30:50] = 2  # a hole in class 0
    yy, xx = np.mgrid[:90, :120]
    m[(yy - 60) ** 2 + (xx - 95) ** 2 < 20 ** 2] = 1
    m[65:85, 5:25] = 3
    return m


def test_traced_polygons_read_back_to_the_same_map(tmp_path):
    m = hand_map()
    stats = write_geojson(tmp_path / "p.geojson", class_geometries(m, range(4), scale=2.0), CLASSES, PALETTE)
    assert stats["features"] == 4 and stats["bytes"] == (tmp_path / "p.geojson").stat().st_size
    anns = load_annotations(tmp_path / "p.geojson", ClassMapping.parse(",".join(CLASSES[:4])), (240, 180))
    assert [a.name for a in anns] == CLASSES[:4]
    back = AnnotationIndex(anns).rasterize(0, 0, 120, 90, scale=2.0)
    expected = np.where(m < 4, m, IGNORE)
    assert (back == expected).all()  # holes kept, pixel edges exact


def test_simplification_cuts_vertices_and_keeps_holes():
    yy, xx = np.mgrid[:400, :400]
    m = np.where((yy - 200) ** 2 + (xx - 200) ** 2 < 150 ** 2, 0, 4).astype(np.uint8)
    m[(yy - 200) ** 2 + (xx - 200) ** 2 < 40 ** 2] = 4  # hole
    (k, raw), = class_geometries(m, [0])
    (_, simple), = class_geometries(m, [0], tolerance=1.0)
    n = lambda polys: sum(len(p.exterior.coords) + sum(len(h.coords) for h in p.interiors) for p in polys)  # noqa: E731
    assert n(simple) < n(raw) / 5
    assert len(simple[0].interiors) == 1
    assert simple[0].area == pytest.approx(raw[0].area, rel=0.01)
    assert raw[0].area == int((m == 0).sum())


def test_geojson_geometry_orients_rings_and_rounds_coordinates():
    from shapely.geometry import Polygon

    from tissueseg.slides.annotations import geojson_geometry

    clockwise = Polygon([(0, 0), (0, 10.26), (10, 10), (10, 0)], holes=[[(2, 2), (4, 2), (4, 4), (2, 4)]])
    square = Polygon([(20, 0), (21, 0), (21, 1), (20, 1)])
    g = geojson_geometry([clockwise, square], decimals=1)
    (outer, hole), (second,) = g["coordinates"]
    assert outer == [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.3], [0.0, 0.0]]  # CCW, closed, rounded
    assert hole == [[2.0, 2.0], [2.0, 4.0], [4.0, 4.0], [4.0, 2.0], [2.0, 2.0]]  # CW
    assert second[0] == second[-1] == [20.0, 0.0]
    assert geojson_geometry([clockwise], decimals=0)["coordinates"][0][0][3] == [0, 10]
    assert geojson_geometry([], decimals=1) == {"type": "MultiPolygon", "coordinates": []}


def test_outlines_are_traced_and_written_with_the_cyclic_gc_paused_then_it_is_restored(tmp_path):
    import gc

    m = np.zeros((8, 8), dtype=np.uint8)
    m[2:6, 2:6] = 1
    seen = []

    def traced():
        for k, polys in class_geometries(m, range(2)):
            seen.append(gc.isenabled())
            yield k, polys

    assert gc.isenabled()
    stats = write_geojson(tmp_path / "a.geojson", traced(), CLASSES, PALETTE)
    assert seen == [False, False] and gc.isenabled() and stats["polygons"] == 2
    gc.disable()
    try:  # a caller's disabled GC stays disabled
        write_geojson(tmp_path / "b.geojson", class_geometries(m, range(2)), CLASSES, PALETTE)
        assert not gc.isenabled()
    finally:
        gc.enable()
