"""ROIPooling: forward, argmax and backward against a plain loop reference of
Caffe's rules (DESIGN.md section 4) over RoIs that lie outside the map, are
inverted, one pixel, the whole image, on rounding halves, in two images;
rounding halves away from zero; float64 gradient checks; the GPU path
host-run and on a GPU; every error.

The RoI set and helpers here are shared with the other RoI layer tests."""
import math

import numpy as np
import pytest

from layers import kernels
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

# Feature maps are 6 x 7 cells; at spatial_scale 1/8 the image is 48 x 56 pixels.
MAP_SHAPE = (2, 3, 6, 7)
SCALE = 0.125


def cuda_round(v):
    """CUDA's round(): halves away from zero."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def edge_rois():
    """(R, 5) RoIs [batch, x1, y1, x2, y2] in image pixels over both images."""
    fixed = [
        [0, 0, 0, 55, 47],        # the whole image
        [1, 0, 0, 55, 47],
        [1, 100, 90, 140, 120],   # entirely right of / below the map
        [0, -40, -30, -10, -5],   # entirely left of / above the map
        [1, -20, -10, 30, 25],    # partly outside
        [0, 30, 30, 10, 12],      # inverted (x2 < x1, y2 < y1)
        [1, 17, 9, 17, 9],        # one pixel
        [0, 4, 12, 36, 20],       # x * scale on halves: 0.5, 1.5, 4.5, 2.5
        [0, -12, -4, 20, 28],     # -1.5, -0.5 at scale 1/8
        [1, 2.5, 3.5, 20.5, 30.5],  # pixel coordinates on halves
        [0, -2.5, -0.5, 12.5, 7.5],
        [1, 0, 0, 400, 300],      # much larger than the image
    ]
    rng = np.random.default_rng(7)
    corners = rng.uniform(-10, 65, size=(8, 4)).round(1)
    random = np.column_stack([rng.integers(0, 2, 8), corners])
    return np.vstack([np.array(fixed, dtype=np.float64), random])


ROIS = edge_rois()


def distinct(shape, seed=0):
    """Values that are all different (no max ties), spaced 0.1 apart."""
    rng = np.random.default_rng(seed)
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 3.0


def run_layer(spec_text, arrays, dtype=np.float64, top_diff=None, gpu_path=False):
    """Forward (and backward when top_diff is given) of one layer on the CPU,
    or of its GPU path with host arrays (host-built kernels)."""
    layer = build_layer(spec_text, dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.asarray(a, dtype=dtype) for a in arrays])
    (layer.forward_gpu if gpu_path else layer.forward)(bottoms, tops)
    if top_diff is not None:
        tops[0].diff[...] = top_diff
        (layer.backward_gpu if gpu_path else layer.backward)(tops, [True, False], bottoms)
    return layer, bottoms, tops


def spec(pooled_h=3, pooled_w=2, scale=SCALE):
    return (f'name: "roi_pool" type: "ROIPooling" bottom: "feat" bottom: "rois" top: "pool" '
            f'roi_pooling_param {{ pooled_h: {pooled_h} pooled_w: {pooled_w} '
            f'spatial_scale: {scale} }}')


def reference(x, rois, pooled_h, pooled_w, scale):
    """Caffe's ROIPooling, one top element at a time. Returns (top, argmax)."""
    scale = float(np.float32(scale))   # the schema stores spatial_scale as a float
    _, channels, height, width = x.shape
    top = np.zeros((len(rois), channels, pooled_h, pooled_w))
    argmax = np.full(top.shape, -1, dtype=np.int64)
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        start_w, start_h = cuda_round(x1 * scale), cuda_round(y1 * scale)
        end_w, end_h = cuda_round(x2 * scale), cuda_round(y2 * scale)
        roi_w, roi_h = max(end_w - start_w + 1, 1), max(end_h - start_h + 1, 1)
        bin_h, bin_w = roi_h / pooled_h, roi_w / pooled_w
        for c in range(channels):
            for ph in range(pooled_h):
                h0 = min(max(math.floor(ph * bin_h) + start_h, 0), height)
                h1 = min(max(math.ceil((ph + 1) * bin_h) + start_h, 0), height)
                for pw in range(pooled_w):
                    w0 = min(max(math.floor(pw * bin_w) + start_w, 0), width)
                    w1 = min(max(math.ceil((pw + 1) * bin_w) + start_w, 0), width)
                    best = None
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            if best is None or x[int(b), c, h, w] > best:
                                best = x[int(b), c, h, w]
                                argmax[r, c, ph, pw] = h * width + w
                    top[r, c, ph, pw] = 0.0 if best is None else best
    return top, argmax


def reference_backward(x_shape, rois, top_diff, argmax):
    _, _, _, width = x_shape
    dx = np.zeros(x_shape)
    for r, c, ph, pw in np.ndindex(*top_diff.shape):
        a = argmax[r, c, ph, pw]
        if a >= 0:
            dx[int(rois[r, 0]), c, a // width, a % width] += top_diff[r, c, ph, pw]
    return dx


@pytest.mark.parametrize("pooled_h,pooled_w,scale", [(3, 2, SCALE), (2, 2, 0.25), (1, 1, SCALE),
                                                     (4, 5, SCALE), (2, 3, 1 / 3)])
def test_forward_backward_match_reference(pooled_h, pooled_w, scale):
    x = distinct(MAP_SHAPE)
    expected, argmax = reference(x, ROIS, pooled_h, pooled_w, scale)
    dy = np.random.default_rng(1).standard_normal(expected.shape)
    layer, bottoms, tops = run_layer(spec(pooled_h, pooled_w, scale), [x, ROIS], top_diff=dy)
    np.testing.assert_array_equal(tops[0].data, expected)
    np.testing.assert_array_equal(layer.argmax, argmax)
    np.testing.assert_allclose(bottoms[0].diff, reference_backward(x.shape, ROIS, dy, argmax),
                               rtol=1e-12, atol=1e-12)
    assert not bottoms[1].diff.any()


def test_float32_matches_reference():
    x = distinct(MAP_SHAPE)
    expected, argmax = reference(x, ROIS, 3, 2, SCALE)
    layer, _, tops = run_layer(spec(), [x, ROIS], dtype=np.float32)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-6)
    np.testing.assert_array_equal(layer.argmax, argmax)


def test_empty_bins_give_zero_and_argmax_minus_one():
    x = distinct(MAP_SHAPE) + 10.0   # all positive: a zero can only come from an empty bin
    rois = np.array([[1, 100, 90, 140, 120], [0, -40, -30, -10, -5]], dtype=np.float64)
    layer, _, tops = run_layer(spec(), [x, rois])
    assert not tops[0].data.any()
    assert (layer.argmax == -1).all()


def test_rounding_takes_halves_away_from_zero():
    # One row of 8 cells, scale 1: x1 = -1.5 rounds to -2 (np.round: -2 too),
    # x2 = 0.5 rounds to 1 (np.round: 0). Width 1 - (-2) + 1 = 4, bins of 2:
    # bin 0 is [-2, 0) -> empty, bin 1 is [0, 2) -> cells 0 and 1.
    # (With np.round, width 3, bin 1 would be [0, 1).)
    x = np.arange(8, dtype=np.float64).reshape(1, 1, 1, 8)
    layer, _, tops = run_layer(spec(1, 2, 1.0), [x, [[0, -1.5, 0, 0.5, 0]]])
    np.testing.assert_array_equal(tops[0].data.ravel(), [0.0, 1.0])
    np.testing.assert_array_equal(layer.argmax.ravel(), [-1, 1])
    # x1 = 2.5 -> 3, x2 = 4.5 -> 5: cells 3..5 (np.round: 2..4).
    layer, _, tops = run_layer(spec(1, 1, 1.0), [-x, [[0, 2.5, 0, 4.5, 0]]])
    assert layer.argmax.ravel()[0] == 3
    _, _, tops = run_layer(spec(1, 1, 1.0), [x, [[0, 2.5, 0, 4.5, 0]]])
    assert tops[0].data.ravel()[0] == 5.0


def test_max_ties_pick_first_cell_in_row_major_order():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 0] = x[0, 0, 0, 1] = 5.0
    layer, _, _ = run_layer(spec(1, 1, 1.0), [x, [[0, 0, 0, 3, 3]]])
    assert layer.argmax.ravel()[0] == 1


def test_shared_argmax_accumulates_diffs():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 9.0
    rois = [[0, 0, 0, 2, 2], [0, 1, 1, 2, 2], [0, 0, 0, 1, 1]]
    dy = np.array([1.0, 2.0, 4.0]).reshape(3, 1, 1, 1)
    _, bottoms, _ = run_layer(spec(1, 1, 1.0), [x, rois], top_diff=dy)
    assert bottoms[0].diff[0, 0, 1, 1] == 7.0
    assert bottoms[0].diff.sum() == 7.0


def test_no_rois_give_empty_top():
    layer, bottoms, tops = run_layer(spec(), [distinct(MAP_SHAPE), np.zeros((0, 5))],
                                     top_diff=np.zeros((0, 3, 3, 2)))
    assert tops[0].shape == (0, 3, 3, 2)
    assert not bottoms[0].diff.any()


def test_reshape_follows_roi_count():
    layer = build_layer(spec())
    bottoms, tops = setup_layer(layer, [distinct(MAP_SHAPE), ROIS[:3]])
    bottoms[1].data = ROIS.copy()
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    assert tops[0].shape == layer.argmax.shape == (len(ROIS), 3, 3, 2)
    np.testing.assert_array_equal(tops[0].data, reference(bottoms[0].data, ROIS, 3, 2, SCALE)[0])


@pytest.mark.parametrize("pooled_h,pooled_w", [(3, 2), (1, 1)])
def test_gradient(pooled_h, pooled_w):
    layer = build_layer(spec(pooled_h, pooled_w), dtype=np.float64)
    assert not layer.allow_force_backward(1)
    result = check_layer(spec(pooled_h, pooled_w), [distinct((2, 2, 6, 7)), ROIS])
    assert result.passed, result.report()
    assert list(result.worst_per_blob) == ["bottom 0 'feat'"]


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pooled_h,pooled_w,scale", [(3, 2, SCALE), (1, 1, SCALE), (2, 3, 1 / 3)])
def test_gpu_path_on_host(dtype, pooled_h, pooled_w, scale):
    x = distinct(MAP_SHAPE)
    run_gpu_path_on_host(spec(pooled_h, pooled_w, scale), [x, ROIS], dtype=dtype)
    # The kernel's argmax must be the NumPy path's too.
    layers = [run_layer(spec(pooled_h, pooled_w, scale), [x, ROIS], dtype=dtype, gpu_path=g)[0]
              for g in (False, True)]
    np.testing.assert_array_equal(layers[0].argmax, layers[1].argmax)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_matches_cpu(dtype):
    compare_devices(spec(), [distinct(MAP_SHAPE), ROIS], dtype=dtype)


# -- errors -------------------------------------------------------------------------

@pytest.mark.parametrize("rois_shape", [(4, 4), (4, 5, 1), (5,)])
def test_rois_must_be_r_by_5(rois_shape):
    with pytest.raises(ShapeError, match=r"layer 'roi_pool'.*bottom 'rois' expected RoIs of "
                                         r"shape \(R, 5\).*found shape"):
        run_layer(spec(), [distinct(MAP_SHAPE), np.zeros(rois_shape)])


def test_features_must_be_4d():
    with pytest.raises(ShapeError, match=r"bottom 'feat' expected a 4-D feature map.*\(2, 3, 6\)"):
        run_layer(spec(), [np.zeros((2, 3, 6)), ROIS])


@pytest.mark.parametrize("gpu_path", [False, True])
@pytest.mark.parametrize("bad_roi", [[2, 0, 0, 8, 8], [-1, 0, 0, 8, 8], [np.nan, 0, 0, 8, 8],
                                     [0, 0, np.inf, 8, 8],
                                     # Beyond 2^30 map cells the kernels' int cast overflows.
                                     [0, 0, 0, 3e10, 3e10]])
def test_batch_index_out_of_range_or_non_finite_roi(bad_roi, gpu_path):
    if gpu_path and kernels.host_compiler() is None:
        pytest.skip("no C++ compiler for the host shim")
    rois = np.vstack([ROIS[:3], [bad_roi]])
    with pytest.raises(DataError, match=r"layer 'roi_pool'.*bottom 'rois' RoI 3 is .*batch "
                                        r"index in \[0, 2\) \(the images of bottom 'feat'\)"):
        run_layer(spec(), [distinct(MAP_SHAPE), rois], gpu_path=gpu_path)


@pytest.mark.parametrize("fields,found", [("pooled_h: 0 pooled_w: 2", "pooled_h 0"),
                                          ("pooled_h: 2", "pooled_w 0"),
                                          ("pooled_h: 2 pooled_w: 2 spatial_scale: 0",
                                           "spatial_scale 0")])
def test_parameters_must_be_positive(fields, found):
    text = f'name: "roi_pool" type: "ROIPooling" roi_pooling_param {{ {fields} }}'
    with pytest.raises(NetDefinitionError, match=f"layer 'roi_pool'.*roi_pooling_param: "
                                                 f"expected positive values, found {found}"):
        run_layer(text, [distinct(MAP_SHAPE), ROIS])
