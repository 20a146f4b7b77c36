import numpy as np
import pytest
from PIL import Image

from tissueseg.slides.readers import ImageReader, SlideError, TiffReader, open_slide, openslide_available

from slide_helpers import tissue_pattern, write_synthetic_slide

needs_openslide = pytest.mark.skipif(not openslide_available(), reason="OpenSlide (wsi extra) not installed")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "slide.tif", 1800, 1200, mpp=0.25)


def expected(y, x, h, w, step=1):
    yy, xx = np.meshgrid((y + np.arange(h)) * step, (x + np.arange(w)) * step, indexing="ij")
    return tissue_pattern(yy, xx, 1800, 1200)


def check_reader(reader):
    assert reader.dimensions == (1800, 1200)
    assert reader.level_dimensions == [(1800, 1200), (900, 600), (450, 300), (225, 150)]
    assert reader.level_downsamples[1] == pytest.approx(2.0)
    assert reader.mpp == pytest.approx(0.25)
    assert (reader.read_region((300, 200), 0, (100, 80)) == expected(200, 300, 80, 100)).all()
    assert (reader.read_region((300, 200), 1, (100, 80)) == expected(100, 150, 80, 100, 2)).all()
    edge = reader.read_region((1750, 1150), 0, (100, 100))  # past the corner: white
    assert (edge[:50, :50] == expected(1150, 1750, 50, 50)).all() and (edge[50:] == 255).all()
    assert reader.best_level_for_downsample(3.0) == 1 and reader.best_level_for_downsample(0.5) == 0
    exact = reader.read_scaled((400, 300, 256, 256), (128, 128))  # downsample 2 = level 1 exactly
    assert (exact == expected(150, 200, 128, 128, 2)).all()
    resampled = reader.read_scaled((400, 300, 300, 300), (100, 100))
    assert resampled.shape == (100, 100, 3) and resampled.dtype == np.uint8
    thumb, ds = reader.thumbnail(300)
    assert thumb.shape == (200, 300, 3) and ds == pytest.approx(6.0)


@needs_openslide
def test_openslide_reader(slide):
    with open_slide(slide) as reader:
        assert reader.kind == "openslide:generic-tiff"
        check_reader(reader)


def test_tiff_reader_without_openslide(slide):
    with TiffReader(slide) as reader:
        check_reader(reader)
    with open_slide(slide, backend="tiff") as reader:
        assert reader.kind == "tiff"


def test_image_reader_pads_white_and_reads_dpi(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png", dpi=(50800, 50800))  # 0.5 µm/px
    Image.fromarray(rgb).save(tmp_path / "b.jpg", dpi=(72, 72))  # screen DPI: not a microscope MPP
    with open_slide(tmp_path / "a.png") as reader:
        assert isinstance(reader, ImageReader) and reader.mpp == pytest.approx(0.5, rel=1e-3)
        region = reader.read_region((60, -5), 0, (20, 20))
        assert (region[5:, :10] == rgb[:15, 60:]).all() and (region[:5] == 255).all() and (region[:, 10:] == 255).all()
    assert open_slide(tmp_path / "b.jpg").mpp is None


def test_corrupt_missing_and_unsupported_files_raise_clear_errors(tmp_path):
    (tmp_path / "broken.svs").write_bytes(b"II*\x00" + b"\x00" * 100)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "notes.txt").write_text("hello")
    for name, words in (("broken.tif", "TIFF"), ("broken.png", "corrupt"), ("notes.txt", "unsupported"),
                        ("missing.svs", "not found")):
        with pytest.raises(SlideError, match=words) as err:
            open_slide(tmp_path / name)
        assert name in str(err.value)
    with pytest.raises(SlideError, match="broken.svs"):
        open_slide(tmp_path / "broken.svs")
