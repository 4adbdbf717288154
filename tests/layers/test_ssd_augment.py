"""Caffe-SSD's augmentation steps (layers/input_pipeline/ssd_augment.py)
against plain references and hand-computed cases, and the whole chain in
the AnnotatedData batch builder: boxes follow the pixels through
expansion, crop, warp and mirror; a step switched off changes nothing."""
import colorsys

import numpy as np
import pytest
from PIL import Image

from detection.datasets.records import ImageRecord
from layers.input_pipeline import ssd_augment as aug
from layers.input_pipeline.minibatch import BatchPlan
from layers.input_pipeline.ssd_minibatch import SSDBatchBuilder, SSDTransform, ssd_entries
from netdef import caffe_pb2


def rng(seed=0):
    return np.random.default_rng(seed)


def colour_image(seed=0, shape=(5, 7)):
    image = np.random.default_rng(seed).uniform(0, 255, shape + (3,)).astype(np.float32)
    image[0, 0] = (50, 50, 50)      # grey: no hue
    image[0, 1] = (0, 0, 0)         # black: no saturation
    return image


def distortion(**fields):
    return caffe_pb2.DistortionParameter(**fields)


# -- photometric ----------------------------------------------------------------------------

def test_hsv_matches_colorsys_and_round_trips():
    image = colour_image()
    hue, sat, val = aug.bgr_to_hsv(image)
    for (y, x), (b, g, r) in zip(np.ndindex(image.shape[:2]), image.reshape(-1, 3)):
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert hue[y, x] == pytest.approx(360 * h, abs=1e-4)
        assert sat[y, x] == pytest.approx(s, abs=1e-6)
        assert val[y, x] == pytest.approx(255 * v, abs=1e-4)
    np.testing.assert_allclose(aug.hsv_to_bgr(hue, sat, val), image, atol=1e-3)


def test_hue_and_saturation_against_colorsys():
    image = colour_image(1)
    shifted = aug.adjust_hue(image, 10)          # 10 OpenCV units = 20 degrees
    saturated = aug.adjust_saturation(image, 1.7)
    for (y, x), (b, g, r) in zip(np.ndindex(image.shape[:2]), image.reshape(-1, 3)):
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        rr, gg, bb = colorsys.hsv_to_rgb((h + 20 / 360) % 1.0, s, v)
        np.testing.assert_allclose(shifted[y, x], [255 * bb, 255 * gg, 255 * rr], atol=1e-3)
        rr, gg, bb = colorsys.hsv_to_rgb(h, min(s * 1.7, 1.0), v)
        np.testing.assert_allclose(saturated[y, x], [255 * bb, 255 * gg, 255 * rr], atol=1e-3)


def test_hue_wraps_around_the_circle():
    red = np.array([[[0, 0, 200]]], np.float32)       # BGR: hue 0
    # -60 units = -120 degrees = 240 degrees: blue
    np.testing.assert_allclose(aug.adjust_hue(red, -60), [[[200, 0, 0]]], atol=1e-3)


def test_brightness_and_contrast_clip_to_the_pixel_range():
    image = np.array([[[10, 100, 250]]], np.float32)
    np.testing.assert_array_equal(aug.adjust_brightness(image, 20), [[[30, 120, 255]]])
    np.testing.assert_array_equal(aug.adjust_brightness(image, -20), [[[0, 80, 230]]])
    np.testing.assert_array_equal(aug.adjust_contrast(image, 1.5), [[[15, 150, 255]]])


def test_distortion_with_zero_probabilities_leaves_the_image_unchanged():
    image = colour_image(2)
    off = distortion(brightness_delta=32, contrast_lower=0.5, contrast_upper=1.5, hue_delta=18,
                     saturation_lower=0.5, saturation_upper=1.5)
    for seed in range(5):
        np.testing.assert_array_equal(aug.distort(image, rng(seed), off), image)


def test_brightness_alone_adds_one_drawn_delta():
    image = colour_image(3) * 0.5 + 60              # away from the clip range
    out = aug.distort(image, rng(4), distortion(brightness_prob=1, brightness_delta=32))
    delta = out - image
    assert np.ptp(delta) < 1e-4 and 0 < abs(delta.flat[0]) <= 32


def test_random_order_permutes_the_channels():
    image = colour_image(4)
    seen = set()
    for seed in range(12):
        out = aug.distort(image, rng(seed), distortion(random_order_prob=1))
        perm = tuple(int(np.flatnonzero((image == out[..., [c]]).all(axis=(0, 1)))[0])
                     for c in range(3))
        np.testing.assert_array_equal(out, image[..., list(perm)])
        seen.add(perm)
    assert len(seen) > 1


def test_distortion_repeats_with_the_generator_seed():
    image = colour_image(5)
    on = distortion(brightness_prob=0.5, brightness_delta=32, contrast_prob=0.5,
                    contrast_lower=0.5, contrast_upper=1.5, hue_prob=0.5, hue_delta=18,
                    saturation_prob=0.5, saturation_lower=0.5, saturation_upper=1.5)
    np.testing.assert_array_equal(aug.distort(image, rng(7), on), aug.distort(image, rng(7), on))
    assert not np.array_equal(aug.distort(image, rng(7), on), aug.distort(image, rng(8), on))


# -- geometry -------------------------------------------------------------------------------

def test_project_boxes_by_hand():
    window = [0.25, 0.25, 0.75, 0.75]
    boxes = np.array([[0.3, 0.3, 0.5, 0.5],     # inside
                      [0.6, 0.6, 1.0, 1.0],     # centre (0.8, 0.8) outside, overlaps
                      [0.8, 0.0, 1.0, 0.2],     # no overlap
                      [0.0, 0.5, 0.5, 0.7]])    # centre (0.25, 0.6) on the border
    projected, kept = aug.project_boxes(boxes, window)
    np.testing.assert_array_equal(kept, [True, True, False, True])
    np.testing.assert_allclose(projected, [[0.1, 0.1, 0.5, 0.5], [0.7, 0.7, 1.0, 1.0],
                                           [0.0, 0.5, 0.5, 0.9]])
    projected, kept = aug.project_boxes(boxes, window, aug.CENTER)
    np.testing.assert_array_equal(kept, [True, False, False, True])
    # MIN_OVERLAP: the part inside the window over the box's area > 0.5
    _, kept = aug.project_boxes(boxes, window, aug.MIN_OVERLAP, 0.5)
    np.testing.assert_array_equal(kept, [True, False, False, False])   # 0.0625/0.16, 0.5


def test_mirror_boxes_by_hand():
    np.testing.assert_allclose(aug.mirror_boxes([[0.1, 0.2, 0.4, 0.9]]), [[0.6, 0.2, 0.9, 0.9]])


def test_expand_places_the_image_on_a_mean_canvas_and_moves_the_boxes():
    image = colour_image(6, (10, 20))
    boxes = np.array([[0.1, 0.2, 0.5, 0.9], [0.6, 0.0, 1.0, 1.0]])
    fill = (1.0, 2.0, 3.0)
    for seed in range(4):
        canvas, moved, kept = aug.expand(image, boxes, rng(seed), 1.0, 3.0, fill)
        height, width = canvas.shape[:2]
        assert 10 <= height <= 30 and 20 <= width <= 60 and kept.all()
        found = np.argwhere((canvas == image[0, 0]).all(axis=2))
        top, left = found[0]
        np.testing.assert_array_equal(canvas[top:top + 10, left:left + 20], image)
        outside = np.ones((height, width), bool)
        outside[top:top + 10, left:left + 20] = False
        assert (canvas[outside] == fill).all()
        # the same pixels in both images' coordinates
        np.testing.assert_allclose(moved * [width, height, width, height],
                                   boxes * [20, 10, 20, 10] + [left, top, left, top], atol=1e-9)


def test_expand_switched_off_changes_nothing():
    image, boxes = colour_image(7), np.array([[0.1, 0.1, 0.5, 0.5]])
    for prob, ratio in ((0.0, 4.0), (1.0, 1.0)):
        out, same, kept = aug.expand(image, boxes, rng(1), prob, ratio, (0, 0, 0))
        np.testing.assert_array_equal(out, image)
        np.testing.assert_array_equal(same, boxes)
        assert kept.all()


def test_crop_by_hand():
    image = np.arange(10 * 20 * 3, dtype=np.float32).reshape(10, 20, 3)
    window = [0.25, 0.2, 0.75, 0.8]          # columns 5..14, rows 2..7
    boxes = np.array([[0.3, 0.3, 0.5, 0.5], [0.0, 0.0, 0.1, 0.1]])
    pixels, projected, kept = aug.crop(image, boxes, window, aug.CENTER)
    np.testing.assert_array_equal(pixels, image[2:8, 5:15])
    np.testing.assert_array_equal(kept, [True, False])
    np.testing.assert_allclose(projected, [[0.1, 1 / 6, 0.5, 0.5]])
    # a window whose size truncates: boxes are projected into the pixels cut
    pixels, projected, _ = aug.crop(image, boxes, [0.26, 0.21, 0.78, 0.83])
    assert pixels.shape[:2] == (6, 10)                 # rows 2..7, columns 5..14
    np.testing.assert_allclose(projected, [[0.1, 1 / 6, 0.5, 0.5]])


def test_satisfies_constraint_by_hand():
    windows = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    boxes = np.array([[0.0, 0.0, 0.25, 0.5]])          # IoU 0.5 with the first window
    c = caffe_pb2.SampleConstraint(min_jaccard_overlap=0.5)
    np.testing.assert_array_equal(aug.satisfies_constraint(windows, boxes, c), [True, False])
    c = caffe_pb2.SampleConstraint(max_jaccard_overlap=0.4)
    np.testing.assert_array_equal(aug.satisfies_constraint(windows, boxes, c), [False, True])
    c = caffe_pb2.SampleConstraint(min_object_coverage=1.0, max_sample_coverage=0.5)
    np.testing.assert_array_equal(aug.satisfies_constraint(windows, boxes, c), [True, False])
    np.testing.assert_array_equal(
        aug.satisfies_constraint(windows, boxes, caffe_pb2.SampleConstraint()), [True, True])
    np.testing.assert_array_equal(aug.satisfies_constraint(
        windows, np.zeros((0, 4)), caffe_pb2.SampleConstraint(min_jaccard_overlap=0.1)),
        [False, False])


def plain_iou(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_sampled_windows_meet_their_sampler():
    box = np.array([[0.4, 0.4, 0.6, 0.7]])
    sampler = caffe_pb2.BatchSampler(
        sampler=caffe_pb2.Sampler(min_scale=0.3, max_scale=1.0, min_aspect_ratio=0.5,
                                  max_aspect_ratio=2.0),
        sample_constraint=caffe_pb2.SampleConstraint(min_jaccard_overlap=0.3), max_trials=200)
    windows = aug.sample_windows(rng(3), sampler, box)
    assert 0 < len(windows) < 200
    width, height = windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]
    assert (windows >= 0).all() and (windows <= 1 + 1e-12).all()
    scale, ratio = np.sqrt(width * height), width / height
    assert (scale >= 0.3 - 1e-9).all() and (scale <= 1 + 1e-9).all()
    assert (ratio >= 0.5 - 1e-9).all() and (ratio <= 2 + 1e-9).all()
    assert all(plain_iou(w, box[0]) >= 0.3 for w in windows)
    sampler.max_sample = 2
    np.testing.assert_array_equal(aug.sample_windows(rng(3), sampler, box), windows[:2])
    whole = caffe_pb2.BatchSampler(max_sample=1, max_trials=1)       # Caffe-SSD's first
    np.testing.assert_array_equal(aug.sample_windows(rng(0), whole, box), [[0, 0, 1, 1]])
    whole.use_original_image = False
    assert aug.sample_windows(rng(0), whole, box).shape == (0, 4)


# -- the whole chain in the batch builder ---------------------------------------------------

def rectangle_record(tmp_path):
    """A 60 x 80 black image with one white rectangle, columns 20..49 and
    rows 10..39 (inclusive), its box."""
    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[10:40, 20:50] = 255
    path = tmp_path / "rect.png"
    Image.fromarray(pixels).save(path)
    return ImageRecord("rect", str(path), 80, 60, [[20, 10, 49, 39]], [2], [False])


def build(record, seed=0, **fields):
    transform = SSDTransform(height=64, width=64, **fields)
    builder = SSDBatchBuilder([record], ssd_entries([record]), transform, name="test")
    return builder(BatchPlan((0,), 0, 0, 0, 1, (seed, 2, 0, 0)))


def bright_extent(data):
    """Normalized extent [xmin, ymin, xmax, ymax] of the pixels above half
    brightness in a (1, 3, H, W) batch."""
    ys, xs = np.nonzero(data[0].mean(axis=0) > 127)
    height, width = data.shape[2:]
    return np.array([xs.min() / width, ys.min() / height, (xs.max() + 1) / width,
                     (ys.max() + 1) / height])


@pytest.mark.parametrize("seed", range(6))
def test_boxes_follow_the_pixels_through_expand_crop_and_mirror(tmp_path, seed):
    record = rectangle_record(tmp_path)
    sampler = caffe_pb2.BatchSampler(
        sampler=caffe_pb2.Sampler(min_scale=0.5, max_scale=1.0, min_aspect_ratio=0.5,
                                  max_aspect_ratio=2.0),
        sample_constraint=caffe_pb2.SampleConstraint(min_object_coverage=1.0), max_trials=50)
    batch = build(record, seed, mirror=True, expand=(1.0, 2.0), samplers=(sampler,),
                  emit=(aug.CENTER, 0.0))
    label = batch["label"].reshape(-1, 8)
    assert len(label) == 1 and label[0, 1] == 2 and label[0, 0] == 0
    # the whole object stays (object coverage 1): its box is the bright area, to a pixel
    np.testing.assert_allclose(label[0, 3:7], bright_extent(batch["data"]), atol=1.5 / 64)


def test_switched_off_steps_leave_the_image_as_the_plain_warp(tmp_path):
    record = rectangle_record(tmp_path)
    plain = build(record)
    off = distortion(brightness_delta=32, hue_delta=18)
    never = caffe_pb2.BatchSampler(use_original_image=False)
    for seed in range(3):
        batch = build(record, seed, distort=off, expand=(0.0, 4.0), samplers=(never,))
        np.testing.assert_array_equal(batch["data"], plain["data"])
        np.testing.assert_array_equal(batch["label"], plain["label"])
    np.testing.assert_allclose(plain["label"].reshape(-1, 8)[0, 3:7],
                               [20 / 80, 10 / 60, 50 / 80, 40 / 60])


def test_a_crop_that_drops_every_box_gives_the_filler_row(tmp_path):
    record = rectangle_record(tmp_path)
    # windows that do not touch the rectangle (IoU 0)
    sampler = caffe_pb2.BatchSampler(
        sampler=caffe_pb2.Sampler(min_scale=0.3, max_scale=0.3),
        sample_constraint=caffe_pb2.SampleConstraint(max_jaccard_overlap=0.0), max_trials=50)
    batch = build(record, 0, samplers=(sampler,))
    assert batch["label"].shape == (1, 1, 1, 8) and (batch["label"] == -1).all()
    assert batch["data"].max() < 127          # no part of the rectangle in the crop
