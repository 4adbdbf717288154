"""Image preprocessing: scale rule, mean subtraction, BGR order, resizing
geometry, flips of images and boxes, padding, read errors."""
import numpy as np
import pytest
from PIL import Image

from netdef.errors import DataError
from layers.input_pipeline.preprocess import (PIXEL_MEANS, flip_boxes, flip_image, image_scale, images_to_blob,
                               load_image_bgr, prepare_image, resized_shape)


def reference_scale(height, width, target, max_size):
    """py-faster-rcnn's prep_im_for_blob rule, written out."""
    short = min(height, width)
    long_ = max(height, width)
    scale = target / short
    if round_half_even(scale * long_) > max_size:
        scale = max_size / long_
    return scale


def round_half_even(x):
    lower = np.floor(x)
    frac = x - lower
    if frac > 0.5 or (frac == 0.5 and lower % 2 == 1):
        return lower + 1
    return lower


@pytest.mark.parametrize("height,width,target,max_size,expected", [
    (375, 500, 600, 1000, 1.6),                  # VOC landscape: shorter side 600
    (500, 375, 600, 1000, 1.6),                  # portrait: same rule
    (300, 1000, 600, 1000, 1.0),                 # long side capped at 1000
    (375, 626, 600, 1000, 1000 / 626),           # 1001.6 rounds to 1002 > 1000: capped
    (4, 9, 10, 22, 2.5),                         # 22.5 rounds (half to even) to 22: not capped
    (4, 9, 10, 21, 21 / 9),
    (600, 600, 600, 1000, 1.0),
])
def test_scale_rule(height, width, target, max_size, expected):
    scale = image_scale(height, width, target, max_size)
    assert scale == pytest.approx(expected, rel=1e-12)
    assert scale == pytest.approx(reference_scale(height, width, target, max_size), rel=1e-12)


@pytest.mark.parametrize("height,width,target,max_size", [
    (375, 500, 600, 1000), (300, 1000, 600, 1000), (375, 626, 600, 1000), (17, 5, 9, 30),
    (4, 9, 10, 22)])
def test_prepared_blob_shape_and_scale(height, width, target, max_size):
    image = np.zeros((height, width, 3), np.float32)
    blob, scale = prepare_image(image, target, max_size)
    expected = reference_scale(height, width, target, max_size)
    assert scale == pytest.approx(expected)
    h, w = int(round_half_even(height * expected)), int(round_half_even(width * expected))
    assert blob.shape == (1, 3, h, w) and blob.dtype == np.float32
    assert max(h, w) <= max_size
    assert resized_shape(height, width, scale) == (h, w)


def test_mean_subtraction_per_bgr_channel():
    bgr = np.array([10.0, 200.0, 30.0], np.float32)
    image = np.broadcast_to(bgr, (20, 30, 3)).copy()
    blob, _ = prepare_image(image, 12, 1000)
    for c in range(3):
        np.testing.assert_allclose(blob[0, c], bgr[c] - PIXEL_MEANS[c], atol=1e-4)


def test_pixel_means_are_the_reference_values():
    assert PIXEL_MEANS == (102.9801, 115.9465, 122.7717)


def test_load_image_gives_bgr_float(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[:, :3] = (255, 0, 0)          # left half red
    rgb[:, 3:] = (0, 0, 255)          # right half blue
    path = tmp_path / "im.png"
    Image.fromarray(rgb).save(path)
    image = load_image_bgr(str(path))
    assert image.shape == (4, 6, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0, 0], [0, 0, 255])      # B, G, R of red
    np.testing.assert_array_equal(image[0, 5], [255, 0, 0])      # B, G, R of blue
    blob, scale = prepare_image(image, 4, 100)
    assert scale == 1.0
    np.testing.assert_allclose(blob[0, :, 0, 0], np.array([0, 0, 255]) - PIXEL_MEANS, atol=1e-4)


def test_grey_image_has_three_equal_channels(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20).save(path)
    image = load_image_bgr(str(path))
    assert image.shape == (3, 4, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    np.testing.assert_array_equal(image[..., 0], np.arange(12).reshape(3, 4) * 20)


@pytest.mark.parametrize("width,new_width", [(16, 40), (40, 16), (30, 45)])
def test_bilinear_resize_keeps_pixel_centres(width, new_width):
    """A linear ramp stays linear: output column j holds the ramp at the
    source coordinate (j + 0.5) / s - 0.5 (pixel centres aligned, as in
    OpenCV's INTER_LINEAR and Pillow), away from the borders. Shrinking,
    Pillow widens the triangle filter over the footprint, whose sampled
    weights are centred only to about 0.01 pixel."""
    ramp = np.broadcast_to(np.arange(width, dtype=np.float32)[None, :, None], (10, width, 3))
    image = ramp + np.asarray(PIXEL_MEANS, np.float32)   # so the blob holds the ramp itself
    scale = new_width / width
    blob, got_scale = prepare_image(image, int(round(10 * scale)), 10000)
    assert got_scale == pytest.approx(scale) and blob.shape[3] == new_width
    source = (np.arange(new_width) + 0.5) / scale - 0.5
    inner = (source > 2) & (source < width - 3)
    atol = 1e-3 if scale >= 1 else 0.02
    for c in range(3):
        np.testing.assert_allclose(blob[0, c, 3][inner], source[inner], atol=atol)


def test_flip_boxes_formula():
    boxes = np.array([[0, 5, 9, 20], [3, 1, 3, 2], [10, 0, 19, 7]], np.float32)
    width = 20
    flipped = flip_boxes(boxes, width)
    for before, after in zip(boxes, flipped):
        assert after[0] == width - before[2] - 1
        assert after[2] == width - before[0] - 1
        assert (after[1], after[3]) == (before[1], before[3])
        assert after[2] >= after[0]
    np.testing.assert_array_equal(flip_boxes(flipped, width), boxes)
    assert boxes[0, 0] == 0     # input untouched


def test_flip_boxes_keeps_extra_columns():
    gt = np.array([[1, 2, 3, 4, 7]], np.float64)
    np.testing.assert_array_equal(flip_boxes(gt, 10), [[6, 2, 8, 4, 7]])


def test_flipped_image_and_boxes_agree():
    """A box drawn into an image covers the same pixels after both are flipped."""
    height, width = 12, 17
    boxes = np.array([[2, 3, 6, 9], [10, 0, 16, 4]], np.float32)
    image = np.zeros((height, width, 3), np.float32)
    for x1, y1, x2, y2 in boxes.astype(int):
        image[y1:y2 + 1, x1:x2 + 1] = 1
    mirrored = flip_image(image)
    redrawn = np.zeros_like(image)
    for x1, y1, x2, y2 in flip_boxes(boxes, width).astype(int):
        redrawn[y1:y2 + 1, x1:x2 + 1] = 1
    np.testing.assert_array_equal(mirrored, redrawn)
    for y in range(height):
        for x in range(width):
            assert mirrored[y, x, 0] == image[y, width - 1 - x, 0]
    assert mirrored.flags.c_contiguous


def test_images_to_blob_pads_bottom_right_with_zeros():
    a = np.ones((1, 3, 4, 6), np.float32)
    b = np.full((1, 3, 5, 2), 2, np.float32)
    blob = images_to_blob([a, b])
    assert blob.shape == (2, 3, 5, 6)
    assert np.all(blob[0, :, :4, :6] == 1) and np.all(blob[0, :, 4:] == 0)
    assert np.all(blob[1, :, :5, :2] == 2) and np.all(blob[1, :, :, 2:] == 0)


def test_read_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(DataError, match=r"image file '.*nope\.jpg' does not exist"):
        load_image_bgr(str(missing))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"cannot read image '.*broken\.jpg'"):
        load_image_bgr(str(broken))


def test_prepare_image_refuses_a_non_bgr_array():
    with pytest.raises(DataError, match=r"expected an \(H, W, 3\) BGR image, found shape \(4, 5\)"):
        prepare_image(np.zeros((4, 5), np.float32))
