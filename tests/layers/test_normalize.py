"""Normalize (Caffe-SSD): forward and gradients against plain references of
its formulas for the four flag combinations (SSD300's across_spatial false /
channel_shared false first), the default scale 1 and SSD's scale 20, the
scale blob's shape; float64 gradient checks of bottom and scale; the GPU
path host-run and on a GPU; the errors."""
import itertools
import math

import numpy as np
import pytest

from netdef.blob import Blob
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.fake_device import fake_gpus
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

FLAGS = [(False, False), (True, True), (True, False), (False, True)]  # (across, shared)
SHAPES = [(2, 3, 4, 5), (1, 4, 1, 1), (2, 3)]


def spec(across, shared, filler='scale_filler { type: "gaussian" std: 1 }', eps=None):
    fields = f"across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()} "
    fields += filler + (f" eps: {eps}" if eps is not None else "")
    return f'name: "norm" type: "Normalize" bottom: "x" top: "y" norm_param {{ {fields} }}'


def reference(x, scale, across, eps, dy):
    """y = s * x / sqrt(sum x^2 + eps) element by element, and the exact
    derivatives (dx by the chain rule over each group; ds summed)."""
    n, c = x.shape[:2]
    xs = x.reshape(n, c, -1)
    g = dy.reshape(n, c, -1)
    s = np.broadcast_to(np.asarray(scale, dtype=np.float64).reshape(-1), (c,))
    y, dx, ds = np.zeros_like(xs), np.zeros_like(xs), np.zeros(c)
    positions = xs.shape[2]
    for i in range(n):
        groups = [list(itertools.product(range(c), range(positions)))] if across else \
            [[(ch, p) for ch in range(c)] for p in range(positions)]
        for group in groups:
            r = math.sqrt(sum(xs[i, ch, p] ** 2 for ch, p in group) + eps)
            weighted = sum(g[i, ch, p] * s[ch] * xs[i, ch, p] for ch, p in group)
            for ch, p in group:
                y[i, ch, p] = s[ch] * xs[i, ch, p] / r
                dx[i, ch, p] = g[i, ch, p] * s[ch] / r - xs[i, ch, p] * weighted / r ** 3
                ds[ch] += g[i, ch, p] * xs[i, ch, p] / r
    return y.reshape(x.shape), dx.reshape(x.shape), ds


def run(text, x, dy):
    layer = build_layer(text)
    bottoms, tops = setup_layer(layer, [x])
    layer.forward(bottoms, tops)
    tops[0].diff[...] = dy
    layer.blobs[0].diff[...] = 0
    layer.backward(tops, [True], bottoms)
    return layer, bottoms, tops


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("across,shared", FLAGS)
def test_matches_reference(across, shared, shape):
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    layer, bottoms, tops = run(spec(across, shared), x, dy)
    scale = layer.blobs[0].data.copy()
    assert scale.shape == (() if shared else (shape[1],))
    y, dx, ds = reference(x, scale, across, float(np.float32(1e-10)), dy)
    np.testing.assert_allclose(tops[0].data, y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-10, atol=1e-12)
    expected_ds = ds.sum() if shared else ds
    np.testing.assert_allclose(layer.blobs[0].diff, expected_ds, rtol=1e-10, atol=1e-12)


def test_defaults_are_caffe_ssds():
    # across_spatial true, channel_shared true, scale 1: one image's values
    # divided by their L2 norm.
    x = np.random.default_rng(1).standard_normal((2, 3, 2, 2))
    layer = build_layer('name: "norm" type: "Normalize"')
    bottoms, tops = setup_layer(layer, [x])
    layer.forward(bottoms, tops)
    assert layer.blobs[0].shape == () and layer.blobs[0].data == 1.0
    norms = np.sqrt((x ** 2).reshape(2, -1).sum(axis=1) + float(np.float32(1e-10)))
    np.testing.assert_allclose(tops[0].data, x / norms[:, None, None, None], rtol=1e-14)


def test_ssd300_conv4_3_norm():
    # SSD300: per pixel over channels, one scale per channel, all 20.
    x = np.random.default_rng(2).standard_normal((1, 5, 3, 3))
    text = spec(False, False, filler='scale_filler { type: "constant" value: 20 }')
    layer = build_layer(text)
    bottoms, tops = setup_layer(layer, [x])
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(layer.blobs[0].data, np.full(5, 20.0))
    np.testing.assert_allclose(np.sqrt((tops[0].data ** 2).sum(axis=1)), 20.0, rtol=1e-9)


def test_float32_is_close_to_float64():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 4, 4)).astype(np.float32)
    results = []
    for dtype in (np.float32, np.float64):
        layer = build_layer(spec(False, False), dtype=dtype)
        bottoms, tops = setup_layer(layer, [x.astype(dtype)])
        layer.forward(bottoms, tops)
        results.append(tops[0].data.astype(np.float64))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_propagate_down_false_leaves_bottom_diff():
    layer, bottoms, tops = run(spec(False, False), np.ones((1, 2, 2, 2)), np.ones((1, 2, 2, 2)))
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


@pytest.mark.parametrize("across,shared", FLAGS)
def test_gradient(across, shared):
    x = np.random.default_rng(4).standard_normal((2, 3, 3, 2))
    result = check_layer(spec(across, shared), [x])
    assert result.passed, result.report()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("across,shared", FLAGS)
def test_gpu_path_on_host(across, shared, shape, dtype):
    run_gpu_path_on_host(spec(across, shared),
                         [np.random.default_rng(5).standard_normal(shape)], dtype=dtype)


@pytest.mark.parametrize("across,shared", FLAGS)
def test_gpu_path_on_host_matches_reference(across, shared):
    # The kernels against the plain reference itself, not only the NumPy path.
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    layer = build_layer(spec(across, shared))
    bottoms, tops = setup_layer(layer, [x])
    layer.forward_gpu(bottoms, tops)
    tops[0].diff[...] = dy
    layer.blobs[0].diff[...] = 0
    layer.backward_gpu(tops, [True], bottoms)
    y, dx, ds = reference(x, layer.blobs[0].data, across, float(np.float32(1e-10)), dy)
    np.testing.assert_allclose(tops[0].data, y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].diff, ds.sum() if shared else ds,
                               rtol=1e-10, atol=1e-12)


def test_gpu_path_on_host_accumulates_the_scale_gradient():
    # Param diffs accumulate over backward calls (iter_size), on this path too.
    x = np.random.default_rng(7).standard_normal((2, 3, 2, 2))
    layer = build_layer(spec(False, False))
    bottoms, tops = setup_layer(layer, [x])
    layer.forward_gpu(bottoms, tops)
    tops[0].diff[...] = 1.0
    layer.blobs[0].diff[...] = 0
    layer.backward_gpu(tops, [False], bottoms)
    once = layer.blobs[0].diff.copy()
    layer.backward_gpu(tops, [False], bottoms)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once, rtol=1e-14)
    assert np.abs(once).max() > 0


@requires_cxx
@pytest.mark.parametrize("across,shared", FLAGS)
def test_layer_on_a_stand_in_gpu_launches_the_kernels(across, shared):
    # The layer's own dispatch on CuPy's stand-in (tests/fake_device.py, its
    # kernels the host build): the GPU path takes its arrays from the device
    # (the scale, the workspace), passes the launcher's argument checks for
    # the GPU side, and runs as kernels only. Forward: sums of squares, group
    # norms, forward; backward: scale terms, scaled dots, the group sums when
    # across_spatial, backward.
    x = np.random.default_rng(9).standard_normal((2, 5, 3, 4))
    with fake_gpus(1) as fake:
        compare_devices(spec(across, shared), [x], dtype=np.float64, rtol=1e-12, atol=1e-13)
    assert fake.launches[0] == 3 + (4 if across else 3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("across,shared", FLAGS)
def test_gpu_matches_cpu(across, shared, dtype):
    compare_devices(spec(across, shared),
                    [np.random.default_rng(5).standard_normal((2, 16, 9, 7))], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float32, 1e-4, 1e-5), (np.float64, 1e-9, 1e-12)])
@pytest.mark.parametrize("across,shared", FLAGS)
def test_gpu_matches_cpu_ssd300_conv4_3(across, shared, dtype, rtol, atol):
    # SSD300's conv4_3 size: the two-stage sums at a realistic width. Across
    # all 739k values of an image the top is ~1e-3, below float32's atol:
    # float64 is the tight check there.
    compare_devices(spec(across, shared),
                    [np.random.default_rng(8).standard_normal((2, 512, 38, 38))],
                    dtype=dtype, rtol=rtol, atol=atol)


def test_bottom_needs_two_axes():
    with pytest.raises(ShapeError, match=r"layer 'norm'.*bottom 'x' expected at least 2 axes "
                                         r"\(N, C, \.\.\.\), found shape \(5,\)"):
        setup_layer(build_layer(spec(False, False)), [np.ones(5)])


def test_channels_must_match_the_scale():
    layer = build_layer(spec(False, False))
    bottoms, tops = setup_layer(layer, [np.ones((1, 3, 2, 2))])
    bottoms[0].reshape((1, 4, 2, 2))
    with pytest.raises(ShapeError, match=r"layer 'norm'.*expected 3 channels \(the scale's "
                                         r"length\), found shape \(1, 4, 2, 2\)"):
        layer.reshape(bottoms, tops)


def test_in_place_is_refused():
    layer = build_layer('name: "norm" type: "Normalize" bottom: "x" top: "x"')
    blob = Blob.from_array(np.ones((1, 2, 3, 3)))
    with pytest.raises(NetDefinitionError, match="layer 'norm'.*does not work in place"):
        layer.setup([blob], [blob])
