import numpy as np
import pytest
import torch
from PIL import Image

from tissueseg.slides.predict import PredictOptions, predict_slide
from tissueseg.slides.tiling import BlendAccumulator, SlideTileDataset, TileGrid, blend_window, chunk_size_for

from slide_helpers import PixelPredictor


def blend_everything(grid: TileGrid, fn, num_classes: int, work_dir, tiles=None) -> tuple[np.ndarray, np.ndarray]:
    """Run the chunked accumulator over a whole grid; ``fn(y, x, T)`` gives a tile's (K, T, T) prediction."""
    window = blend_window(grid.tile, grid.overlap)
    acc = BlendAccumulator(grid, num_classes, work_dir, window)
    tiles = grid.tiles() if tiles is None else tiles
    out = np.full((num_classes, grid.height, grid.width), np.nan, dtype=np.float32)
    weight = np.zeros((grid.height, grid.width), dtype=np.float32)
    for c in grid.chunks():
        own = np.array([t for t in tiles if grid.chunk_of(*t) == c], dtype=np.int64).reshape(-1, 2)
        acc.begin(c, own)
        for y, x in own:
            acc.add(int(y), int(x), fn(int(y), int(x), grid.tile) * window)
        probs, w = (t.numpy() for t in acc.finish())
        y0, y1, x0, x1 = grid.chunk_bounds(c)
        out[:, y0:y1, x0:x1] = probs
        weight[y0:y1, x0:x1] = w
        acc.release(c)
    assert not list(work_dir.glob("spill_*")), "every spill is consumed"
    return out, weight


def smooth(y, x, t, height=700, width=900):
    yy, xx = np.meshgrid(np.arange(y, y + t), np.arange(x, x + t), indexing="ij")
    return np.stack([np.sin(xx / 97.0) + np.cos(yy / 53.0), xx / width, (yy / height) ** 2]).astype(np.float32)


def test_grid_chunks_and_order():
    grid = TileGrid.create(1000, 700, 128, 32, chunk_target=300)
    assert grid.chunk % grid.stride == 0 and grid.chunk >= 300
    assert grid.xs[0] == 0 and grid.xs[-1] == 1000 - 128
    tiles = grid.tiles()
    assert len(tiles) == len(grid.xs) * len(grid.ys)
    chunks = [grid.chunk_of(int(y), int(x)) for y, x in tiles]
    assert chunks == sorted(chunks)  # chunk-major order
    with pytest.raises(ValueError):
        TileGrid(100, 100, 64, 64, 128)
    assert chunk_size_for(224, 56) == 168 * 7


def test_blend_window_tapers_and_is_positive():
    w = blend_window(64, 16)
    assert w.min() > 0 and w.max() == 1.0 and w[32, 32] == 1.0
    assert w[0, 0] < w[0, 8] < w[0, 16]
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])


def test_constant_prediction_blends_to_the_constant(tmp_path):
    grid = TileGrid.create(900, 700, 128, 48, chunk_target=256)
    const = np.array([0.1, 0.7, 0.2], dtype=np.float32)
    out, weight = blend_everything(grid, lambda y, x, t: np.broadcast_to(const[:, None, None], (3, t, t)).copy(),
                                   3, tmp_path)
    assert (weight > 0).all()
    assert np.abs(out - const[:, None, None]).max() < 1e-6


def test_smooth_function_of_position_is_reproduced_across_tile_and_chunk_borders(tmp_path):
    grid = TileGrid.create(900, 700, 128, 48, chunk_target=256)
    assert grid.chunks_shape[0] > 1 and grid.chunks_shape[1] > 1
    out, _ = blend_everything(grid, smooth, 3, tmp_path)
    expected = smooth(0, 0, 900)[:, :700, :900]
    assert np.abs(out - expected).max() < 1e-5


@pytest.mark.parametrize("n_buffers", [1, 2])
def test_unnormalized_finish_gives_the_weighted_sums_and_the_reused_canvas_starts_clean(tmp_path, n_buffers):
    """finish(normalize=False) = the blended mean × the weight; the canvas buffers are reused across chunks of
    different sizes (edge chunks are smaller) without leftovers of the previous chunk. With two buffers, a
    chunk's sums stay intact while the next chunk blends."""
    grid = TileGrid.create(700, 500, 128, 48, chunk_target=256)
    window = blend_window(grid.tile, grid.overlap)
    acc = BlendAccumulator(grid, 3, tmp_path, window, buffers=n_buffers)
    expected, _ = blend_everything(grid, smooth, 3, tmp_path / "ref")
    buffers = set()
    previous = None

    def check(c, sums, w):
        y0, y1, x0, x1 = grid.chunk_bounds(c)
        assert sums.shape == (3, y1 - y0, x1 - x0) and (w > 0).all()
        np.testing.assert_allclose((sums / w).numpy(), expected[:, y0:y1, x0:x1], atol=1e-5)

    for c in grid.chunks():
        own = np.array([t for t in grid.tiles() if grid.chunk_of(*t) == c], dtype=np.int64).reshape(-1, 2)
        acc.begin(c, own)
        buffers.add(acc._canvas.untyped_storage().data_ptr())
        for y, x in own:
            acc.add(int(y), int(x), smooth(int(y), int(x), grid.tile) * window)
        if previous is not None:  # the chunk before, finished before this one began
            check(*previous)
            acc.release(previous[0])
        sums, w = acc.finish(normalize=False)
        check(c, sums, w)
        previous = (c, sums, w) if n_buffers == 2 else None
        if n_buffers == 1:
            acc.release(c)
    assert len(buffers) == n_buffers


def test_tile_relative_artefacts_leave_no_seams(tmp_path):
    """A model whose output drifts across its tile (0 at the top-left, 1 at the bottom-right): blending makes the
    result continuous, tiling without overlap leaves steps at every tile border."""
    def centre_biased(y, x, t):
        i = np.arange(t, dtype=np.float32) / t
        return ((i[:, None] + i[None, :]) / 2)[None].copy()

    def max_jump(a):
        return max(np.abs(np.diff(a, axis=0)).max(), np.abs(np.diff(a, axis=1)).max())

    blended, _ = blend_everything(TileGrid.create(600, 500, 128, 64, 256), centre_biased, 1, tmp_path / "a")
    seamed, _ = blend_everything(TileGrid.create(600, 500, 128, 0, 256), centre_biased, 1, tmp_path / "b")
    assert max_jump(seamed[0]) > 0.4
    assert max_jump(blended[0]) < 0.03


def test_tile_dataset_reads_working_resolution_tiles(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "img.png")
    ds = SlideTileDataset(tmp_path / "img.png", np.array([[0, 0], [100, 350]]), 64, 1.0)
    tile, i = ds[0]
    assert tile.dtype == torch.uint8 and tile.shape == (3, 64, 64) and i == 0
    assert (tile.permute(1, 2, 0).numpy() == rgb[:64, :64]).all()
    tile, _ = ds[1]  # runs past the right edge: white padding
    t = tile.permute(1, 2, 0).numpy()
    assert (t[:, :50] == rgb[100:164, 350:]).all() and (t[:, 50:] == 255).all()
    half = SlideTileDataset(tmp_path / "img.png", np.array([[10, 20]]), 32, 2.0)
    assert half[0][0].shape == (3, 32, 32)


def test_pipeline_reproduces_whole_image_prediction_without_seams(tmp_path):
    """End to end: tiles read, predicted, blended across tiles and chunks = the model on the whole image."""
    yy, xx = np.meshgrid(np.arange(520), np.arange(610), indexing="ij")
    rgb = (128 + 127 * np.stack([np.sin(xx / 50), np.cos(yy / 40), np.sin((xx + yy) / 70)], -1)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "gradient.png")
    model = PixelPredictor(tile_size=96)
    predict_slide(model, tmp_path / "gradient.png", tmp_path / "out",
                  PredictOptions(workers=0, batch_size=8, chunk_size=200, tissue_detection=False,
                                 amp=False))  # fp32 like `expected`: this test is about blending
    import tifffile

    got = tifffile.imread(tmp_path / "out" / "classmap.tif", level=0)
    with torch.no_grad():
        expected = model(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0].argmax(0).numpy()
    assert got.shape == expected.shape
    assert (got == expected).mean() > 0.9999
    assert len(np.unique(expected)) >= 3  # the test is not trivial
