"""LRN: forward and backward against plain references of Caffe's formulas
(ACROSS_CHANNELS: the channel window; WITHIN_CHANNEL: Caffe's chain of AVE
pooling with its divisor rule, Power and product) at the parameter sets of
AlexNet, ZF and VGG_CNN_M_1024, border channels and pixels included; float32
against a float64 reference; float64 gradient checks; the GPU path host-run
and on a GPU; the errors."""
import math

import numpy as np
import pytest

from netdef.blob import Blob
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

REGIONS = ["ACROSS_CHANNELS", "WITHIN_CHANNEL"]

# (local_size, alpha, beta, k) of real nets; k None: not given (default 1).
PARAMS = {
    "alexnet": (5, 1e-4, 0.75, None),      # also GoogLeNet
    "zf": (3, 5e-5, 0.75, None),           # py-faster-rcnn ZF (WITHIN_CHANNEL there)
    "vgg_cnn_m": (5, 5e-4, 0.75, 2.0),     # py-faster-rcnn VGG_CNN_M_1024 (ACROSS_CHANNELS)
    "defaults": (None, None, None, None),  # local_size 5, alpha 1, beta 0.75, k 1
}

# Border channels (C < local_size), maps smaller than the window, one element.
SHAPES = [(2, 7, 5, 6), (1, 3, 4, 4), (2, 2, 1, 3), (1, 1, 1, 1)]


def lrn_spec(region, params="defaults"):
    size, alpha, beta, k = PARAMS[params]
    fields = [f"norm_region: {region}"]
    for name, value in (("local_size", size), ("alpha", alpha), ("beta", beta), ("k", k)):
        if value is not None:
            fields.append(f"{name}: {value}")
    return f'name: "norm" type: "LRN" bottom: "x" top: "y" lrn_param {{ {" ".join(fields)} }}'


def as_layer_sees(params):
    """(local_size, alpha, beta, k) with the defaults filled in and the reals
    rounded to float32, as the proto fields hold them."""
    size, alpha, beta, k = PARAMS[params]
    f32 = lambda v, default: float(np.float32(default if v is None else v))  # noqa: E731
    return (5 if size is None else size), f32(alpha, 1.0), f32(beta, 0.75), f32(k, 1.0)


def inputs(shape, params, seed=0):
    """Values whose squares make alpha / n * (window sum) of order 1, so the
    normalization matters (a real net's activations after ReLU are that large)."""
    _, alpha, _, _ = as_layer_sees(params)
    return np.random.default_rng(seed).standard_normal(shape) / math.sqrt(alpha)


# -- the plain references ----------------------------------------------------------

def across_reference(x, dy, size, alpha, beta, k):
    """Caffe's ACROSS_CHANNELS forward, and backward by the chain rule
    dx_j = sum_i dy_i * dy_i/dx_j, element by element."""
    channels = x.shape[1]
    half = (size - 1) // 2
    scale = np.empty_like(x)
    for n, c, h, w in np.ndindex(*x.shape):
        total = 0.0
        for cc in range(c - half, c + half + 1):
            if 0 <= cc < channels:
                total += x[n, cc, h, w] ** 2
        scale[n, c, h, w] = k + alpha / size * total
    y = x * scale ** -beta
    dx = np.zeros_like(x)
    for n, c, h, w in np.ndindex(*x.shape):
        s, xi, g = scale[n, c, h, w], x[n, c, h, w], dy[n, c, h, w]
        dx[n, c, h, w] += g * s ** -beta
        for cc in range(max(c - half, 0), min(c + half, channels - 1) + 1):
            # d scale_i / d x_j = alpha / size * 2 x_j for j in i's window
            dx[n, cc, h, w] += g * xi * -beta * s ** (-beta - 1) * alpha / size * 2 * x[n, cc, h, w]
    return y, dx


def caffe_ave_windows(size, height, width):
    """Caffe's AVE pooling windows for kernel ``size``, pad (size - 1) / 2,
    stride 1: per output (ph, pw) the clipped row and column ranges and the
    divisor (the area clipped to the padded input, before clipping to the map)."""
    pad = (size - 1) // 2
    pooled_h = math.ceil((height + 2 * pad - size) / 1) + 1
    pooled_w = math.ceil((width + 2 * pad - size) / 1) + 1
    if (pooled_h - 1) >= height + pad:
        pooled_h -= 1
    if (pooled_w - 1) >= width + pad:
        pooled_w -= 1
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            hstart, wstart = ph - pad, pw - pad
            hend, wend = min(hstart + size, height + pad), min(wstart + size, width + pad)
            area = (hend - hstart) * (wend - wstart)
            rows = range(max(hstart, 0), min(hend, height))
            cols = range(max(wstart, 0), min(wend, width))
            yield ph, pw, rows, cols, area


def within_reference(x, dy, size, alpha, beta):
    """Caffe's WITHIN_CHANNEL: x^2 -> AVE pooling -> Power(-beta, alpha, 1)
    -> product with x; backward through the same chain, layer by layer."""
    height, width = x.shape[2:]
    square = x * x
    pooled = np.zeros_like(x)
    windows = list(caffe_ave_windows(size, height, width))
    assert pooled.shape[2:] == (windows[-1][0] + 1, windows[-1][1] + 1)  # same size as x
    for ph, pw, rows, cols, area in windows:
        for h in rows:
            for w in cols:
                pooled[:, :, ph, pw] += square[:, :, h, w] / area
    base = 1 + alpha * pooled
    power = base ** -beta
    y = x * power
    d_power = dy * x
    d_pooled = d_power * -beta * alpha * base ** (-beta - 1)
    d_square = np.zeros_like(x)
    for ph, pw, rows, cols, area in windows:
        for h in rows:
            for w in cols:
                d_square[:, :, h, w] += d_pooled[:, :, ph, pw] / area
    dx = dy * power + 2 * x * d_square
    return y, dx


def reference(region, params, x, dy):
    size, alpha, beta, k = as_layer_sees(params)
    if region == "ACROSS_CHANNELS":
        return across_reference(x, dy, size, alpha, beta, k)
    return within_reference(x, dy, size, alpha, beta)


def run(spec, x, dy, dtype=np.float64):
    layer = build_layer(spec, dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.asarray(x, dtype=dtype)])
    layer.forward(bottoms, tops)
    tops[0].diff[...] = dy
    layer.backward(tops, [True], bottoms)
    return layer, bottoms, tops


# -- forward and backward ------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("params", list(PARAMS))
@pytest.mark.parametrize("region", REGIONS)
def test_matches_reference_in_float64(region, params, shape):
    x = inputs(shape, params)
    dy = np.random.default_rng(1).standard_normal(shape)
    _, bottoms, tops = run(lrn_spec(region, params), x, dy)
    y_ref, dx_ref = reference(region, params, x, dy)
    np.testing.assert_allclose(tops[0].data, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, dx_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (1, 3, 4, 4), (2, 2, 1, 3)])
@pytest.mark.parametrize("params", ["alexnet", "zf"])
@pytest.mark.parametrize("region", REGIONS)
def test_float32_is_close_to_float64_reference(region, params, shape):
    x = inputs(shape, params)
    dy = np.random.default_rng(1).standard_normal(shape)
    _, bottoms, tops = run(lrn_spec(region, params), x, dy, dtype=np.float32)
    y_ref, dx_ref = reference(region, params, x.astype(np.float32).astype(np.float64),
                              dy.astype(np.float32).astype(np.float64))
    for found, expected in ((tops[0].data, y_ref), (bottoms[0].diff, dx_ref)):
        error = np.abs(found.astype(np.float64) - expected)
        assert error.max() <= 1e-4 and error.mean() <= 1e-5, (error.max(), error.mean())


@pytest.mark.parametrize("region,expected_scale", [
    ("ACROSS_CHANNELS", 1 + 1 / 5),    # k + alpha / local_size * x^2
    ("WITHIN_CHANNEL", 1 + 1 / 25),    # 1 + alpha * x^2 / (5 * 5): pad cells count
])
def test_single_element_by_hand(region, expected_scale):
    _, bottoms, tops = run(lrn_spec(region), np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1)))
    np.testing.assert_allclose(tops[0].data, expected_scale ** -0.75, rtol=1e-15)
    # dx = s^-b - 2 b alpha / n * x * (y / s) = s^-b * (1 - 2 b (s - 1) / s)
    by_hand = expected_scale ** -0.75 * (1 - 1.5 * (expected_scale - 1) / expected_scale)
    np.testing.assert_allclose(bottoms[0].diff, by_hand, rtol=1e-14)


def test_within_channel_ignores_k():
    x = inputs((1, 2, 4, 5), "defaults")
    dy = np.ones(x.shape)
    spec = 'name: "n" type: "LRN" lrn_param {{ norm_region: WITHIN_CHANNEL k: {} }}'
    _, b1, t1 = run(spec.format(1), x, dy)
    _, b5, t5 = run(spec.format(5), x, dy)
    np.testing.assert_array_equal(t1[0].data, t5[0].data)
    np.testing.assert_array_equal(b1[0].diff, b5[0].diff)


@pytest.mark.parametrize("region", REGIONS)
def test_propagate_down_false_leaves_bottom_diff(region):
    layer, bottoms, tops = run(lrn_spec(region), np.ones((1, 2, 3, 3)), np.ones((1, 2, 3, 3)))
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


# -- gradients -----------------------------------------------------------------------

@pytest.mark.parametrize("params", ["alexnet", "zf", "vgg_cnn_m", "defaults"])
@pytest.mark.parametrize("region", REGIONS)
def test_gradient(region, params):
    result = check_layer(lrn_spec(region, params), [inputs((2, 6, 3, 4), params, seed=3)])
    assert result.passed, result.report()


# -- GPU path --------------------------------------------------------------------------

@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (1, 2, 1, 3)])
@pytest.mark.parametrize("params", ["alexnet", "zf"])
@pytest.mark.parametrize("region", REGIONS)
def test_gpu_path_on_host(region, params, shape, dtype):
    run_gpu_path_on_host(lrn_spec(region, params), [inputs(shape, params)], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", ["alexnet", "zf", "vgg_cnn_m"])
@pytest.mark.parametrize("region", REGIONS)
def test_gpu_matches_cpu(region, params, dtype):
    compare_devices(lrn_spec(region, params), [inputs((2, 9, 13, 11), params)], dtype=dtype)


# -- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [4, 0])
def test_even_local_size_is_refused(size):
    spec = f'name: "norm" type: "LRN" lrn_param {{ local_size: {size} }}'
    with pytest.raises(NetDefinitionError, match=f"layer 'norm'.*local_size must be odd, found {size}"):
        setup_layer(build_layer(spec), [np.ones((1, 2, 3, 3))])


def test_bottom_must_have_four_axes():
    with pytest.raises(ShapeError, match=r"layer 'norm'.*bottom 'x' expected 4 axes "
                                         r"\(N, C, H, W\), found shape \(2, 3, 4\)"):
        setup_layer(build_layer(lrn_spec("ACROSS_CHANNELS")), [np.ones((2, 3, 4))])


def test_in_place_is_refused():
    layer = build_layer('name: "norm" type: "LRN" bottom: "x" top: "x"')
    blob = Blob.from_array(np.ones((1, 2, 3, 3)))
    layer.setup([blob], [blob])
    with pytest.raises(NetDefinitionError, match="layer 'norm'.*cannot work in place: top 'x'"):
        layer.reshape([blob], [blob])
