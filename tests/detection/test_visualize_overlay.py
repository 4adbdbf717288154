"""Tests of detection.visualize.overlay: colours, blending, colour bar, names, files, tiles."""
import numpy as np
import pytest
from PIL import Image

from detection.visualize.model import Detection
from detection.visualize.overlay import (colour_map, heatmap_overlay, map_name, save_map,
                                         save_overlay, tile)
from netdef.errors import DataError


def test_colour_map_ends_and_middle():
    colours = colour_map(np.array([0.0, 0.5, 1.0, -3.0, 7.0]))
    assert colours.dtype == np.uint8 and colours.shape == (5, 3)
    np.testing.assert_array_equal(colours[0], [0, 0, 128])      # dark blue
    np.testing.assert_array_equal(colours[2], [128, 0, 0])      # dark red
    np.testing.assert_array_equal(colours[1], [128, 255, 128])  # between cyan and yellow
    np.testing.assert_array_equal(colours[3], colours[0])       # clipped
    np.testing.assert_array_equal(colours[4], colours[2])


def test_overlay_blends_by_alpha_without_bar():
    image = np.full((10, 12, 3), 200, np.uint8)
    heat = np.zeros((10, 12), np.float32)
    heat[2:4, 3:6] = 5.0
    picture = heatmap_overlay(image, heat, alpha=0.25, colorbar=False)
    assert picture.size == (12, 10)
    pixels = np.asarray(picture).astype(float)
    hot, cold = colour_map(1.0).astype(float), colour_map(0.0).astype(float)
    np.testing.assert_allclose(pixels[3, 4], np.round(0.75 * 200 + 0.25 * hot), atol=0.5)
    np.testing.assert_allclose(pixels[8, 8], np.round(0.75 * 200 + 0.25 * cold), atol=0.5)
    unchanged = heatmap_overlay(image, heat, alpha=0.0, colorbar=False)
    np.testing.assert_array_equal(np.asarray(unchanged), image)


def test_colour_bar_and_title_enlarge_the_picture():
    image = np.zeros((40, 30, 3), np.uint8)
    heat = np.linspace(-1, 3, 1200, dtype=np.float32).reshape(40, 30)
    plain = heatmap_overlay(image, heat, colorbar=False)
    barred = heatmap_overlay(image, heat)
    titled = heatmap_overlay(image, heat, title="det 0: car 0.97")
    assert barred.size[1] == 40 and barred.size[0] > plain.size[0] + 14
    assert titled.size == (barred.size[0], barred.size[1] + 18)
    bar = np.asarray(barred)[:, 30 + 6:30 + 6 + 14]
    np.testing.assert_array_equal(bar[0, 0], colour_map(1.0))   # maximum at the top
    np.testing.assert_array_equal(bar[-1, 0], colour_map(0.0))
    assert (np.asarray(titled)[:18] < 128).any()                 # some title text


def test_percentile_saturates_the_top_values():
    image = np.zeros((10, 10, 3), np.uint8)
    heat = np.zeros((10, 10), np.float32)
    heat[0, :5] = [1, 2, 3, 4, 100]                  # one outlier
    plain = np.asarray(heatmap_overlay(image, heat, alpha=1.0, colorbar=False))
    clipped = np.asarray(heatmap_overlay(image, heat, alpha=1.0, colorbar=False,
                                         percentile=98))
    np.testing.assert_array_equal(plain[0, 4], colour_map(1.0))
    np.testing.assert_array_equal(plain[0, 3], colour_map(0.04))
    high = np.percentile(heat, 98)                   # 4 ... (between 4 and 100)
    np.testing.assert_array_equal(clipped[0, 3], colour_map(min(4 / high, 1.0)))
    np.testing.assert_array_equal(clipped[0, 4], colour_map(1.0))
    with pytest.raises(DataError, match=r"percentile must lie in \(0, 100\], found 0"):
        heatmap_overlay(image, heat, percentile=0)


def test_constant_and_nan_maps_do_not_fail():
    image = np.zeros((5, 5, 3), np.uint8)
    picture = heatmap_overlay(image, np.full((5, 5), np.nan), colorbar=True)
    assert picture.size[1] == 24                                 # room for the two labels
    flat = np.asarray(heatmap_overlay(image, np.ones((5, 5)), alpha=1.0, colorbar=False))
    np.testing.assert_array_equal(flat[0, 0], colour_map(0.0))


def test_overlay_accepts_pil_and_grey_images():
    heat = np.random.default_rng(0).random((8, 9))
    grey = np.full((8, 9), 77, np.uint8)
    from_pil = heatmap_overlay(Image.fromarray(np.stack([grey] * 3, -1)), heat)
    from_grey = heatmap_overlay(grey, heat)
    np.testing.assert_array_equal(np.asarray(from_pil), np.asarray(from_grey))


def test_overlay_errors_name_the_shapes():
    with pytest.raises(DataError, match=r"the map has shape \(4, 4\), the image \(5, 5\)"):
        heatmap_overlay(np.zeros((5, 5, 3), np.uint8), np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"expected an \(H, W, 3\) RGB image, found shape \(5, 5, 4\)"):
        heatmap_overlay(np.zeros((5, 5, 4), np.uint8), np.zeros((5, 5)))
    with pytest.raises(DataError, match=r"alpha must lie in \[0, 1\], found 1.5"):
        heatmap_overlay(np.zeros((5, 5, 3), np.uint8), np.zeros((5, 5)), alpha=1.5)


def test_names_with_and_without_a_detection():
    assert map_name("street", "gradcam") == "street_gradcam.npy"
    assert map_name("street", "gradcam", 3, ".png") == "street_gradcam_det3.png"
    det = Detection(7, 1, "car", 0.9, np.zeros(4), np.zeros((1, 5)))
    assert map_name("a.b", "saliency", det) == "a.b_saliency_det7.npy"


def test_save_map_writes_float32_npy(tmp_path):
    heat = np.arange(12, dtype=np.float64).reshape(3, 4)
    path = save_map(tmp_path / "maps", "img", "saliency", heat, detection=2)
    assert path == str(tmp_path / "maps" / "img_saliency_det2.npy")
    loaded = np.load(path)
    assert loaded.dtype == np.float32 and loaded.shape == (3, 4)
    np.testing.assert_array_equal(loaded, heat)


def test_save_overlay_writes_png(tmp_path):
    picture = Image.new("RGB", (7, 5), (1, 2, 3))
    path = save_overlay(tmp_path, "img", "guided", picture)
    assert path == str(tmp_path / "img_guided.png")
    with Image.open(path) as read:
        assert read.format == "PNG"
        np.testing.assert_array_equal(np.asarray(read.convert("RGB")), np.asarray(picture))


def test_tile_places_pictures_row_by_row():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    pictures = [Image.new("RGB", (10, 6 + i), c) for i, c in enumerate(colours)]
    grid = tile(pictures, columns=2, gap=4)
    assert grid.size == (2 * 10 + 4, 2 * 8 + 4)
    pixels = np.asarray(grid)
    np.testing.assert_array_equal(pixels[0, 0], colours[0])
    np.testing.assert_array_equal(pixels[0, 14], colours[1])
    np.testing.assert_array_equal(pixels[12, 0], colours[2])
    np.testing.assert_array_equal(pixels[12, 14], (255, 255, 255))   # empty cell
    assert tile(pictures, columns=9).size == (3 * 10 + 2 * 4, 8)     # at most one row


def test_tile_errors():
    with pytest.raises(DataError, match="no pictures to tile"):
        tile([], 3)
    with pytest.raises(DataError, match="columns must be at least 1, found 0"):
        tile([Image.new("RGB", (2, 2))], 0)
