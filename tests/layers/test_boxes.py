"""Box math (layers/boxes.py) against plainly written per-box references."""
import math

import numpy as np
import pytest

from layers import boxes as B

# DESIGN.md section 4: what py-faster-rcnn / py-R-FCN compute.
REFERENCE_ANCHORS = np.array([
    (-84, -40, 99, 55), (-176, -88, 191, 103), (-360, -184, 375, 199),
    (-56, -56, 71, 71), (-120, -120, 135, 135), (-248, -248, 263, 263),
    (-36, -80, 51, 95), (-80, -168, 95, 183), (-168, -344, 183, 359)], dtype=np.float64)


def plain_iou(a, b):
    """py-faster-rcnn's cython bbox_overlaps for one pair."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    if iw <= 0:
        return 0.0
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if ih <= 0:
        return 0.0
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return iw * ih / (area_a + area_b - iw * ih)


def random_boxes(rng, n, span=100.0, size=(1.0, 40.0), dtype=np.float64):
    xy = rng.uniform(0, span, (n, 2))
    wh = rng.uniform(*size, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(dtype)


def test_default_anchors_are_the_reference_nine():
    np.testing.assert_array_equal(B.generate_anchors(), REFERENCE_ANCHORS)


def test_anchors_other_sizes_follow_the_rule():
    # base 8, ratio 2 (h / w), scale 4: w = round(sqrt(64 / 2)) = round(5.66) = 6,
    # h = round(12) = 12, then x4 around the centre 3.5
    anchors = B.generate_anchors(8, (2.0,), (4.0,))
    ws, hs = 24.0, 48.0
    np.testing.assert_array_equal(anchors, [[3.5 - 0.5 * (ws - 1), 3.5 - 0.5 * (hs - 1),
                                             3.5 + 0.5 * (ws - 1), 3.5 + 0.5 * (hs - 1)]])
    # ratio-major order: rows (r0, s0) (r0, s1) (r1, s0) (r1, s1)
    anchors = B.generate_anchors(16, (0.5, 1.0), (1.0, 2.0))
    widths = anchors[:, 2] - anchors[:, 0] + 1
    np.testing.assert_array_equal(widths, [23, 46, 16, 32])


def test_anchor_rounding_takes_halves_to_even():
    # base 16, ratio 1.6384: w = sqrt(256 / 1.6384) = 12.5 exactly, which
    # NumPy's rule rounds to 12 (rounding away from zero would give 13);
    # h = round(12 * 1.6384) = round(19.66) = 20
    anchors = B.generate_anchors(16, (1.6384,), (1.0,))
    assert anchors[0, 2] - anchors[0, 0] + 1 == 12
    assert anchors[0, 3] - anchors[0, 1] + 1 == 20


def test_shifted_anchor_layout_is_positions_by_anchors():
    base = B.generate_anchors()
    height, width, stride = 3, 4, 16
    shifted = B.shifted_anchors(base, stride, height, width)
    assert shifted.shape == (height * width * 9, 4)
    for y in range(height):
        for x in range(width):
            for a in range(9):
                expected = base[a] + [x * stride, y * stride, x * stride, y * stride]
                np.testing.assert_array_equal(shifted[(y * width + x) * 9 + a], expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bbox_overlaps_matches_plain_loops(dtype):
    rng = np.random.default_rng(0)
    a = random_boxes(rng, 40, dtype=dtype)
    b = random_boxes(rng, 30, dtype=dtype)
    b[:5] = a[:5]                                   # identical pairs
    b[5] = a[6] + np.array([41, 0, 41, 0], dtype)   # far apart
    b[6] = [a[7, 2] + 1, a[7, 1], a[7, 2] + 5, a[7, 3]]   # touching: no overlap
    b[7] = [a[8, 2], a[8, 1], a[8, 2] + 5, a[8, 3]]       # one shared column
    got = B.bbox_overlaps(a, b)
    assert got.dtype == dtype and got.shape == (40, 30)
    want = np.array([[plain_iou(p.astype(np.float64), q.astype(np.float64)) for q in b] for p in a])
    np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert np.all(np.diag(got[:5, :5]) == 1)
    assert got[7, 6] == 0 and got[8, 7] > 0


def test_bbox_overlaps_empty_and_degenerate():
    assert B.bbox_overlaps(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
    # a zero-area box (x2 = x1 - 1) overlaps nothing and yields no NaN
    degenerate = np.array([[5.0, 5.0, 4.0, 4.0]])
    with np.errstate(all="raise"):
        assert B.bbox_overlaps(degenerate, degenerate)[0, 0] == 0


def plain_transform(ex, gt):
    ew, eh = ex[2] - ex[0] + 1, ex[3] - ex[1] + 1
    gw, gh = gt[2] - gt[0] + 1, gt[3] - gt[1] + 1
    ecx, ecy = ex[0] + 0.5 * ew, ex[1] + 0.5 * eh
    gcx, gcy = gt[0] + 0.5 * gw, gt[1] + 0.5 * gh
    return [(gcx - ecx) / ew, (gcy - ecy) / eh, math.log(gw / ew), math.log(gh / eh)]


def plain_decode(box, d):
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    cx, cy = box[0] + 0.5 * w, box[1] + 0.5 * h
    pcx, pcy = d[0] * w + cx, d[1] * h + cy
    pw, ph = math.exp(d[2]) * w, math.exp(d[3]) * h
    return [pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph]


def test_bbox_transform_matches_plain_formula():
    rng = np.random.default_rng(1)
    ex, gt = random_boxes(rng, 25), random_boxes(rng, 25)
    got = B.bbox_transform(ex, gt)
    want = np.array([plain_transform(e, g) for e, g in zip(ex, gt)])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_bbox_transform_inv_matches_plain_formula_for_several_classes():
    rng = np.random.default_rng(2)
    box = random_boxes(rng, 20)
    deltas = rng.normal(0, 0.3, (20, 12))         # 3 classes x 4 deltas
    got = B.bbox_transform_inv(box, deltas)
    assert got.shape == (20, 12)
    for c in range(3):
        want = np.array([plain_decode(b, d) for b, d in zip(box, deltas[:, 4 * c:4 * c + 4])])
        np.testing.assert_allclose(got[:, 4 * c:4 * c + 4], want, rtol=1e-12, atol=1e-9)


def test_bbox_transform_inv_computes_in_the_deltas_dtype():
    box = np.array([[0.0, 0.0, 15.0, 15.0]])
    assert B.bbox_transform_inv(box, np.zeros((1, 4), np.float32)).dtype == np.float32


def test_round_trip_reproduces_the_reference_extra_pixel():
    # Decoding the targets of gt returns gt with x2, y2 one pixel larger:
    # the reference decodes x2 = cx + w / 2 (no "- 1").
    rng = np.random.default_rng(3)
    ex, gt = random_boxes(rng, 30), random_boxes(rng, 30)
    back = B.bbox_transform_inv(ex, B.bbox_transform(ex, gt))
    np.testing.assert_allclose(back, gt + [0, 0, 1, 1], rtol=1e-10, atol=1e-9)


def test_clip_and_filter():
    boxes = np.array([[-5.0, 3.0, 120.0, 40.0, -1.0, -2.0, 10.0, 300.0]])
    clipped = B.clip_boxes(boxes, 50, 100)      # height 50, width 100
    np.testing.assert_array_equal(clipped, [[0, 3, 99, 40, 0, 0, 10, 49]])
    keep = B.filter_small_boxes(np.array([[0, 0, 15, 15], [0, 0, 14, 30], [0, 0, 30, 14.]]), 16)
    np.testing.assert_array_equal(keep, [True, False, False])


@pytest.mark.gpu
def test_box_math_gpu_matches_cpu():
    import cupy
    rng = np.random.default_rng(4)
    a, b = random_boxes(rng, 50), random_boxes(rng, 40)
    d = rng.normal(0, 0.3, (50, 4))
    for fn, args in ((B.bbox_overlaps, (a, b)), (B.bbox_transform, (a, b[:1].repeat(50, 0))),
                     (B.bbox_transform_inv, (a, d))):
        got = fn(*(cupy.asarray(x) for x in args))
        np.testing.assert_allclose(cupy.asnumpy(got), fn(*args), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(
        cupy.asnumpy(B.shifted_anchors(B.generate_anchors(), 16, 3, 5, cupy)),
        B.shifted_anchors(B.generate_anchors(), 16, 3, 5))
