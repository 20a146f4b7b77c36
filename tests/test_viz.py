import numpy as np

from tissueseg.viz import add_legend, cam_heatmap, colorize, jet, overlay, panel, prediction_panel

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_colorize_maps_indices_to_palette_and_ignore_to_black():
    cmap = np.array([[0, 1], [2, 7]])
    rgb = colorize(cmap, PALETTE, ignore_index=2)
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[0, 1].tolist() == [0, 255, 0]
    assert rgb[1, 0].tolist() == [0, 0, 0]  # ignored
    assert rgb[1, 1].tolist() == [0, 0, 0]  # outside the palette


def test_overlay_alpha_extremes_and_skip_index():
    image = np.full((2, 2, 3), 100, dtype=np.uint8)
    cmap = np.array([[0, 1], [1, 0]])
    assert np.array_equal(overlay(image, cmap, PALETTE, alpha=0.0), image)
    assert np.array_equal(overlay(image, cmap, PALETTE, alpha=1.0), colorize(cmap, PALETTE))
    half = overlay(image, cmap, PALETTE, alpha=0.5, skip_index=1)
    assert half[0, 1].tolist() == [100, 100, 100]
    assert half[0, 0].tolist() == [178, 50, 50]  # (100 + 255) / 2 rounded, (100 + 0) / 2


def test_jet_endpoints_and_cam_heatmap_resizes():
    ends = jet(np.array([0.0, 0.5, 1.0]))
    assert ends[0].tolist() == [0, 0, 128]       # dark blue
    assert ends[1][1] == 255                      # green at the middle
    assert ends[2].tolist() == [128, 0, 0]       # dark red
    image = np.zeros((16, 20, 3), dtype=np.uint8)
    heat = cam_heatmap(image, np.arange(20, dtype=float).reshape(4, 5), alpha=1.0)
    assert heat.shape == (16, 20, 3)
    assert heat[0, 0, 2] > heat[0, 0, 0] and heat[-1, -1, 0] > heat[-1, -1, 2]


def test_panel_legend_geometry():
    a = np.zeros((10, 8, 3), np.uint8)
    b = np.zeros((6, 5, 3), np.uint8)
    out = panel([a, b], titles=["a", "b"], gap=2)
    assert out.shape == (10 + 14, 8 + 2 + 5, 3)
    legend = add_legend(a, ["x", "y", "z"], PALETTE)
    assert legend.shape[0] > a.shape[0] and legend.shape[1] == a.shape[1]
    full = prediction_panel(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), int), ["a", "b", "c"], PALETTE,
                            ground_truth=np.zeros((8, 8), int))
    assert full.shape[1] == 3 * 8 + 2 * 4
