"""PSROIPooling: forward and backward against a plain loop reference of
py-R-FCN's rules (DESIGN.md section 4) over RoIs outside the map, inverted,
one pixel, the whole image, on rounding halves, in two images; the channel
layout; float64 gradient checks; the GPU path host-run and on a GPU; every
error."""
import math

import numpy as np
import pytest

from layers import kernels
from layers.roi_pooling import round_half_away
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layers.test_roi_pooling import ROIS, SCALE, cuda_round, run_layer


def spec(output_dim=2, group_size=3, scale=SCALE):
    return (f'name: "psroi" type: "PSROIPooling" bottom: "score" bottom: "rois" top: "pooled" '
            f'psroi_pooling_param {{ spatial_scale: {scale} output_dim: {output_dim} '
            f'group_size: {group_size} }}')


def features(output_dim=2, group_size=3, num=2, height=6, width=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num, output_dim * group_size ** 2, height, width))


def bin_bounds(low, high, scale, k, p, size):
    """[start, end) of bin p along one axis, py-R-FCN's rule."""
    first = cuda_round(low) * scale
    last = (cuda_round(high) + 1) * scale
    bin_size = max(last - first, 0.1) / k
    start = min(max(math.floor(p * bin_size + first), 0), size)
    end = min(max(math.ceil((p + 1) * bin_size + first), 0), size)
    return start, end


def reference(x, rois, output_dim, k, scale):
    scale = float(np.float32(scale))   # the schema stores spatial_scale as a float
    _, _, height, width = x.shape
    top = np.zeros((len(rois), output_dim, k, k))
    for r, (b, x1, y1, x2, y2) in enumerate(rois):
        for c in range(output_dim):
            for ph in range(k):
                h0, h1 = bin_bounds(y1, y2, scale, k, ph, height)
                for pw in range(k):
                    w0, w1 = bin_bounds(x1, x2, scale, k, pw, width)
                    channel = (c * k + ph) * k + pw
                    total, area = 0.0, (h1 - h0) * (w1 - w0)
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            total += x[int(b), channel, h, w]
                    top[r, c, ph, pw] = total / area if area > 0 else 0.0
    return top


def reference_backward(x_shape, rois, top_diff, k, scale):
    scale = float(np.float32(scale))
    _, _, height, width = x_shape
    dx = np.zeros(x_shape)
    for r, c, ph, pw in np.ndindex(*top_diff.shape):
        b, x1, y1, x2, y2 = rois[r]
        h0, h1 = bin_bounds(y1, y2, scale, k, ph, height)
        w0, w1 = bin_bounds(x1, x2, scale, k, pw, width)
        if (h1 - h0) * (w1 - w0) > 0:
            dx[int(b), (c * k + ph) * k + pw, h0:h1, w0:w1] += \
                top_diff[r, c, ph, pw] / ((h1 - h0) * (w1 - w0))
    return dx


@pytest.mark.parametrize("output_dim,k,scale", [(2, 3, SCALE), (1, 2, 0.25), (3, 1, SCALE),
                                                (1, 7, SCALE), (2, 2, 1 / 3)])
def test_forward_backward_match_reference(output_dim, k, scale):
    x = features(output_dim, k)
    expected = reference(x, ROIS, output_dim, k, scale)
    dy = np.random.default_rng(1).standard_normal(expected.shape)
    _, bottoms, tops = run_layer(spec(output_dim, k, scale), [x, ROIS], top_diff=dy)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, reference_backward(x.shape, ROIS, dy, k, scale),
                               rtol=1e-12, atol=1e-12)
    assert not bottoms[1].diff.any()


def test_float32_matches_reference():
    x = features()
    _, _, tops = run_layer(spec(), [x, ROIS], dtype=np.float32)
    np.testing.assert_allclose(tops[0].data, reference(x, ROIS, 2, 3, SCALE), rtol=1e-5, atol=1e-6)


def test_channel_layout_is_class_major_then_bin():
    # Channel (c * k + ph) * k + pw holds the constant 100 c + 10 ph + pw, so
    # every bin of a RoI inside the map reads back its own (c, ph, pw).
    k, dim = 3, 2
    code = np.array([100 * c + 10 * ph + pw for c in range(dim) for ph in range(k) for pw in range(k)])
    x = np.broadcast_to(code[None, :, None, None], (1, dim * k * k, 6, 7)).astype(np.float64)
    _, _, tops = run_layer(spec(dim, k, 1.0), [x, [[0, 0, 0, 5, 4]]])
    np.testing.assert_array_equal(tops[0].data[0], code.reshape(dim, k, k))


def test_rounding_takes_halves_away_from_zero():
    # Coordinates are rounded in image pixels: x1 = 2.5 -> 3 (np.round: 2),
    # x2 = 4.5 -> 5 (np.round: 4); at scale 1 with k = 1 the bin is [3, 6).
    x = np.arange(8, dtype=np.float64).reshape(1, 1, 1, 8)
    _, _, tops = run_layer(spec(1, 1, 1.0), [x, [[0, 2.5, 0, 4.5, 0]]])
    assert tops[0].data.ravel()[0] == 4.0   # mean of 3, 4, 5
    np.testing.assert_array_equal(round_half_away(np.array([-2.5, -0.5, 0.5, 1.5, 2.5])),
                                  [-3, -1, 1, 2, 3])
    # Exact for the float just below one half, where floor(x + 0.5) is not.
    below = np.nextafter(np.float32(0.5), np.float32(0))
    assert round_half_away(np.array([below, -below], np.float32)).tolist() == [0.0, -0.0]


def test_tiny_roi_has_at_least_a_tenth_of_a_cell():
    # An inverted RoI spans (round(x2) + 1 - round(x1)) * scale < 0: its size
    # becomes 0.1, so each bin is [floor(start), ceil(start + 0.1)): one cell.
    x = np.arange(7 * 6, dtype=np.float64).reshape(1, 1, 6, 7)
    _, _, tops = run_layer(spec(1, 1, 0.5), [x, [[0, 9, 5, 3, 1]]])
    assert tops[0].data.ravel()[0] == x[0, 0, 2, 4]


def test_empty_bins_give_zero():
    x = features() + 10.0
    rois = np.array([[1, 100, 90, 140, 120], [0, -40, -30, -10, -5]], dtype=np.float64)
    _, _, tops = run_layer(spec(), [x, rois])
    assert not tops[0].data.any()


def test_no_rois_give_empty_top():
    _, bottoms, tops = run_layer(spec(), [features(), np.zeros((0, 5))],
                                 top_diff=np.zeros((0, 2, 3, 3)))
    assert tops[0].shape == (0, 2, 3, 3)
    assert not bottoms[0].diff.any()


@pytest.mark.parametrize("output_dim,k", [(2, 3), (1, 1)])
def test_gradient(output_dim, k):
    assert not build_layer(spec(output_dim, k)).allow_force_backward(1)
    result = check_layer(spec(output_dim, k), [features(output_dim, k, height=5, width=6), ROIS])
    assert result.passed, result.report()
    assert list(result.worst_per_blob) == ["bottom 0 'score'"]


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("output_dim,k,scale", [(2, 3, SCALE), (1, 7, SCALE), (2, 2, 1 / 3)])
def test_gpu_path_on_host(dtype, output_dim, k, scale):
    run_gpu_path_on_host(spec(output_dim, k, scale), [features(output_dim, k), ROIS], dtype=dtype)


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_sums_in_the_kernels_order(dtype):
    # Both paths add a bin's cells in row-major order in the layer's dtype
    # (Caffe's order), so their float32 results agree to the last bit.
    x = features(2, 3, height=13, width=17) * 1e3
    run_gpu_path_on_host(spec(), [x, ROIS], dtype=dtype, backward=False, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_matches_cpu(dtype):
    compare_devices(spec(), [features(), ROIS], dtype=dtype)


# -- errors -------------------------------------------------------------------------

def test_channels_must_be_output_dim_times_group_size_squared():
    with pytest.raises(ShapeError, match=r"layer 'psroi'.*bottom 'score' expected 18 channels "
                                         r"\(output_dim 2 x group_size 3 x 3\), found 17 "
                                         r"channels \(shape \(2, 17, 6, 7\)\)"):
        run_layer(spec(), [np.zeros((2, 17, 6, 7)), ROIS])


def test_rois_must_be_r_by_5():
    with pytest.raises(ShapeError, match=r"bottom 'rois' expected RoIs of shape \(R, 5\)"):
        run_layer(spec(), [features(), np.zeros((3, 4))])


@pytest.mark.parametrize("gpu_path", [False, True])
def test_batch_index_out_of_range(gpu_path):
    if gpu_path and kernels.host_compiler() is None:
        pytest.skip("no C++ compiler for the host shim")
    rois = np.vstack([ROIS[:2], [[5, 0, 0, 8, 8]]])
    with pytest.raises(DataError, match=r"layer 'psroi'.*bottom 'rois' RoI 2 is \[5\.0, 0\.0, "
                                        r"0\.0, 8\.0, 8\.0\]: expected a batch index in \[0, 2\)"):
        run_layer(spec(), [features(), rois], gpu_path=gpu_path)


@pytest.mark.parametrize("fields,found", [("output_dim: 2 group_size: 3", "spatial_scale 0"),
                                          ("spatial_scale: 0.0625 group_size: 3", "output_dim 0"),
                                          ("spatial_scale: 0.0625 output_dim: 2 group_size: 0",
                                           "group_size 0")])
def test_parameters_must_be_positive(fields, found):
    text = f'name: "psroi" type: "PSROIPooling" psroi_pooling_param {{ {fields} }}'
    with pytest.raises(NetDefinitionError, match=f"layer 'psroi'.*psroi_pooling_param: "
                                                 f"expected positive values, found {found}"):
        run_layer(text, [features(), ROIS])


HEAD = """
name: "rfcn_head"
force_backward: true
layer { name: "input" type: "Input" top: "rfcn_cls" top: "rois"
  input_param { shape { dim: 2 dim: 18 dim: 6 dim: 7 } shape { dim: 20 dim: 5 } } }
layer { name: "psroipooled_cls_rois" type: "PSROIPooling" bottom: "rfcn_cls" bottom: "rois"
  top: "psroipooled_cls_rois"
  psroi_pooling_param { spatial_scale: 0.125 output_dim: 2 group_size: 3 } }
layer { name: "ave_cls_score_rois" type: "Pooling" bottom: "psroipooled_cls_rois"
  top: "cls_score" pooling_param { pool: AVE kernel_size: 3 stride: 3 } }
"""


def test_in_a_net_as_py_rfcn_declares_it():
    from netdef.device import CPU
    from netdef.net import Net
    net = Net(HEAD, "TRAIN", device=CPU, dtype=np.float64)
    x = features()
    out = net.forward(rfcn_cls=x, rois=ROIS)
    pooled = reference(x, ROIS, 2, 3, SCALE)
    np.testing.assert_allclose(out["cls_score"], pooled.mean(axis=(2, 3), keepdims=True),
                               rtol=1e-12, atol=1e-12)
    d_score = np.random.default_rng(2).standard_normal((len(ROIS), 2, 1, 1))
    diffs = net.backward(diffs=["rfcn_cls"], cls_score=d_score)
    expected = reference_backward(x.shape, ROIS, np.broadcast_to(d_score / 9, pooled.shape), 3, SCALE)
    np.testing.assert_allclose(diffs["rfcn_cls"], expected, rtol=1e-12, atol=1e-12)
    assert not net.blobs["rois"].diff.any()   # RoIs never take a gradient
