"""Greedy NMS (layers/nms.py, layers/cuda/nms.cu) against plain references."""
import numpy as np
import pytest

from layers import nms as nms_module
from layers.nms import nms, nms_sorted
from tests.kernel_harness import requires_cxx


def iou_plain(a, b, dtype):
    """One pair, in ``dtype``, with the operations of the documented formula."""
    one, zero = dtype(1), dtype(0)
    iw = max(min(a[2], b[2]) - max(a[0], b[0]) + one, zero)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]) + one, zero)
    inter = dtype(iw * ih)
    if not inter > 0:
        return zero
    area_a = dtype((a[2] - a[0] + one) * (a[3] - a[1] + one))
    area_b = dtype((b[2] - b[0] + one) * (b[3] - b[1] + one))
    return dtype(inter / dtype(dtype(area_a + area_b) - inter))


def nms_scalar_reference(boxes, scores, thresh):
    """The greedy rule, one pair at a time."""
    dtype = boxes.dtype.type
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(not iou_plain(boxes[k], boxes[i], dtype) > dtype(thresh) for k in keep):
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def nms_vector_reference(boxes, scores, thresh):
    """py-faster-rcnn's py_cpu_nms, with a stable sort: one kept box at a
    time against all remaining boxes."""
    thresh = boxes.dtype.type(thresh)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1, 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1, 0)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(inter > 0, inter / (areas[i] + areas[rest] - inter), 0)
        order = rest[~(iou > thresh)]
    return np.array(keep, dtype=np.int64)


def clustered_boxes(rng, n, dtype, clusters=40):
    """Boxes around a few centres (many suppressions), tied scores and
    exact duplicates."""
    centres = rng.uniform(0, 500, (clusters, 2))[rng.integers(0, clusters, n)]
    xy = centres + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(20, 80, (n, 2))
    boxes = np.round(np.concatenate([xy, xy + wh], axis=1), 1).astype(dtype)
    dup = rng.choice(n, n // 8, replace=False)
    boxes[dup] = boxes[rng.choice(n, n // 8)]            # identical boxes
    scores = (rng.integers(0, 25, n) / 25).astype(dtype)  # many ties
    return boxes, scores


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("thresh", [0.3, 0.7])
def test_nms_matches_vector_reference_on_thousands_of_boxes(dtype, thresh):
    rng = np.random.default_rng(0)
    boxes, scores = clustered_boxes(rng, 3000, dtype)
    want = nms_vector_reference(boxes, scores, thresh)
    got = nms(boxes, scores, thresh)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert 40 < got.size < 3000
    # with a limit the blocks are scheduled the other way ("lazy"): same boxes
    np.testing.assert_array_equal(nms(boxes, scores, thresh, max_output=want.size - 1), want[:-1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nms_matches_scalar_reference(dtype):
    rng = np.random.default_rng(1)
    boxes, scores = clustered_boxes(rng, 300, dtype, clusters=8)
    for thresh in (0.0, 0.5, 0.9):
        np.testing.assert_array_equal(nms(boxes, scores, thresh),
                                      nms_scalar_reference(boxes, scores, thresh))


# The decision rules below are checked on both paths: the NumPy one and the
# CUDA kernels run on the host (use_kernel=True), each against the answer.
PATHS = [pytest.param(False, id="numpy"), pytest.param(True, id="kernel", marks=requires_cxx)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_kernel", PATHS)
def test_ties_go_to_the_lower_index_and_duplicates_suppress_each_other(use_kernel, dtype):
    box = [10.0, 10.0, 50.0, 50.0]
    boxes = np.array([box, box, [200, 200, 220, 220], box], dtype=dtype)
    scores = np.array([0.5, 0.9, 0.1, 0.9], dtype=dtype)
    np.testing.assert_array_equal(nms(boxes, scores, 0.7, use_kernel=use_kernel), [1, 2])
    # IoU 1 is not > 1: with thresh 1 nothing is suppressed, ties by index
    np.testing.assert_array_equal(nms(boxes, scores, 1.0, use_kernel=use_kernel), [1, 3, 0, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("use_kernel", PATHS)
def test_suppression_is_strictly_greater_than_thresh(use_kernel, dtype):
    # IoU exactly 0.5: [0, 0, 9, 9] (area 100) and [0, 0, 9, 19] (area 200)
    boxes = np.array([[0.0, 0.0, 9.0, 19.0], [0.0, 0.0, 9.0, 9.0]], dtype=dtype)
    scores = np.array([2.0, 1.0], dtype=dtype)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5, use_kernel=use_kernel), [0, 1])
    np.testing.assert_array_equal(nms(boxes, scores, 0.49, use_kernel=use_kernel), [0])
    # the same pair 70 boxes apart: the decision in a later 64-box mask word
    far = np.concatenate([boxes[:1], 1000.0 + 30.0 * np.arange(69, dtype=dtype)[:, None]
                          + np.array([0, 0, 9, 9], dtype=dtype), boxes[1:]])
    far_scores = np.linspace(2, 1, 71).astype(dtype)
    np.testing.assert_array_equal(nms(far, far_scores, 0.5, use_kernel=use_kernel), np.arange(71))
    np.testing.assert_array_equal(nms(far, far_scores, 0.49, use_kernel=use_kernel), np.arange(70))


def test_max_output_is_a_prefix_and_edge_sizes():
    rng = np.random.default_rng(2)
    boxes, scores = clustered_boxes(rng, 2 * nms_module.BLOCK + 1, np.float32)
    full = nms(boxes, scores, 0.5)
    for limit in (1, 7, full.size - 1, full.size, full.size + 5):
        np.testing.assert_array_equal(nms(boxes, scores, 0.5, max_output=limit), full[:limit])
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    np.testing.assert_array_equal(nms(boxes[:1], scores[:1], 0.5), [0])


def test_nms_sorted_returns_positions_of_sorted_boxes():
    rng = np.random.default_rng(3)
    boxes, scores = clustered_boxes(rng, 500, np.float64)
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_array_equal(order[nms_sorted(boxes[order], 0.6)], nms(boxes, scores, 0.6))


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_host_run_kernels_equal_numpy_path(dtype):
    rng = np.random.default_rng(4)
    # 1000 boxes: 16 column blocks of 64, the last one partial
    boxes, scores = clustered_boxes(rng, 1000, dtype)
    for thresh in (0.3, 0.7):
        want = nms(boxes, scores, thresh)
        np.testing.assert_array_equal(nms(boxes, scores, thresh, use_kernel=True), want)
        np.testing.assert_array_equal(
            nms(boxes, scores, thresh, max_output=50, use_kernel=True), want[:50])
    assert nms(boxes[:0], scores[:0], 0.5, use_kernel=True).shape == (0,)


@requires_cxx
def test_host_run_mask_kernel_bits():
    # box 0 overlaps box 1 (IoU 0.9) and box 65 (identical); nothing else
    boxes = np.tile(np.array([[1000.0, 1000.0, 1001.0, 1001.0]]), (70, 1))
    boxes += np.arange(70)[:, None] * 10
    boxes[0] = [0, 0, 99, 99]
    boxes[1] = [0, 0, 99, 89]
    boxes[65] = boxes[0]
    col_blocks = 2
    mask = np.zeros((70, col_blocks), dtype=np.uint64)
    from layers.kernels import launch
    launch("nms.cu", "nms_mask", np.float64, 70 * col_blocks,
           (np.int64(70), np.int32(col_blocks), boxes, np.float64(0.5), mask))
    assert mask[0, 0] == 1 << 1 and mask[0, 1] == 1 << 1
    assert mask[1, 1] == 1 << 1          # box 1 vs box 65: IoU 0.9
    assert np.count_nonzero(mask[2:65]) == 0 and np.count_nonzero(mask[66:]) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_nms_matches_cpu(dtype):
    import cupy
    rng = np.random.default_rng(5)
    boxes, scores = clustered_boxes(rng, 5000, dtype)
    for thresh, limit in ((0.7, None), (0.3, 300)):
        want = nms(boxes, scores, thresh, max_output=limit)
        got = nms(cupy.asarray(boxes), cupy.asarray(scores), thresh, max_output=limit)
        assert isinstance(got, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(got), want)
