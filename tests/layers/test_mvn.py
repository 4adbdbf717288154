"""MVN: forward and Caffe's backward against a plain per-row reference for
every combination of normalize_variance and across_channels, eps included;
Caffe's 4-axis top for blobs of fewer axes; float32 against a float64
reference, also where E(X^2) - (EX)^2 would cancel; in place; float64
gradient checks; the GPU path host-run and on a GPU; the error."""
import math
import warnings

import numpy as np
import pytest

from netdef.blob import Blob
from netdef.errors import ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

FLAGS = [(True, False), (True, True), (False, False), (False, True)]
SHAPES = [(2, 3, 4, 5), (3, 2, 1, 7), (1, 1, 1, 1), (2, 5), (4,)]


def mvn_spec(normalize=True, across=False, eps=None, top="y"):
    fields = f"normalize_variance: {str(normalize).lower()} across_channels: {str(across).lower()}"
    if eps is not None:
        fields += f" eps: {eps}"
    return f'name: "mvn" type: "MVN" bottom: "x" top: "{top}" mvn_param {{ {fields} }}'


def legacy_shape(shape):
    """Caffe's num, channels, height, width of a blob of at most 4 axes."""
    return tuple(shape) + (1,) * (4 - len(shape))


def mvn_reference(x, dy, normalize, across, eps):
    """Caffe's MVN, row by row and value by value; returns (y, dx), both of
    the legacy 4-axis shape."""
    x = x.reshape(legacy_shape(x.shape))
    dy = dy.reshape(x.shape)
    num, channels = x.shape[:2]
    groups = [(n, slice(None)) for n in range(num)] if across else \
        [(n, slice(c, c + 1)) for n in range(num) for c in range(channels)]
    y, dx = np.empty_like(x), np.empty_like(x)
    for n, cs in groups:
        values, grads = x[n, cs].ravel(), dy[n, cs].ravel()
        dim = len(values)
        mean = sum(values) / dim
        centered = [v - mean for v in values]
        std = math.sqrt(sum(c * c for c in centered) / dim) + eps if normalize else 1.0
        out = [c / std for c in centered]
        mean_grad = sum(grads) / dim
        mean_out_grad = sum(o * g for o, g in zip(out, grads)) / dim if normalize else 0.0
        back = [(g - mean_grad - o * mean_out_grad) / std for o, g in zip(out, grads)]
        y[n, cs] = np.reshape(out, y[n, cs].shape)
        dx[n, cs] = np.reshape(back, dx[n, cs].shape)
    return y, dx


def run(spec, x, dy=None, dtype=np.float64):
    layer = build_layer(spec, dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.asarray(x, dtype=dtype)])
    layer.forward(bottoms, tops)
    if dy is not None:
        tops[0].diff[...] = np.reshape(dy, tops[0].shape)
        layer.backward(tops, [True], bottoms)
    return layer, bottoms, tops


def data(shape, seed=0, offset=3.0):
    return offset + 2 * np.random.default_rng(seed).standard_normal(shape)


# -- forward and backward ------------------------------------------------------------

@pytest.mark.parametrize("eps", [None, 0.5])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize,across", FLAGS)
def test_matches_reference_in_float64(normalize, across, shape, eps):
    x, dy = data(shape), np.random.default_rng(1).standard_normal(shape)
    _, bottoms, tops = run(mvn_spec(normalize, across, eps), x, dy)
    # eps is a proto float: the layer sees its float32 value (default 1e-9).
    y_ref, dx_ref = mvn_reference(x, dy, normalize, across, float(np.float32(eps or 1e-9)))
    assert tops[0].shape == legacy_shape(shape)
    np.testing.assert_allclose(tops[0].data, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, dx_ref.reshape(shape), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("offset", [3.0, 100.0])
@pytest.mark.parametrize("normalize,across", FLAGS)
def test_float32_is_close_to_float64_reference(normalize, across, offset):
    """Also where the mean is 100 standard deviations from 0: the variance
    as E((X - EX)^2) stays accurate in float32, where E(X^2) - (EX)^2 would
    lose about 1e-3 of it."""
    shape = (2, 3, 20, 20)
    x = (offset + np.random.default_rng(0).standard_normal(shape)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    _, bottoms, tops = run(mvn_spec(normalize, across), x, dy, dtype=np.float32)
    y_ref, dx_ref = mvn_reference(x.astype(np.float64), dy.astype(np.float64), normalize,
                                  across, float(np.float32(1e-9)))
    for found, expected in ((tops[0].data, y_ref), (bottoms[0].diff, dx_ref)):
        error = np.abs(found.astype(np.float64) - expected)
        assert error.max() <= 1e-4 and error.mean() <= 1e-5, (error.max(), error.mean())


def test_old_variance_formula_would_fail_the_float32_check():
    """The float32 check above can tell the two variance formulas apart."""
    x = (100.0 + np.random.default_rng(0).standard_normal((6, 400))).astype(np.float32)
    mean = x.mean(axis=1, keepdims=True)
    old_std = np.sqrt((x * x).mean(axis=1, keepdims=True) - mean * mean)
    exact = x.astype(np.float64)
    exact = (exact - exact.mean(axis=1, keepdims=True)) / exact.std(axis=1, keepdims=True)
    assert np.abs((x - mean) / old_std - exact).max() > 1e-4


def test_backward_is_caffes_formula_not_the_exact_derivative():
    """With a large eps the difference (a factor (std + eps) / std on the
    y * mean(y * dy) term) shows: the finite differences disagree."""
    x = data((1, 2, 3, 4))
    assert not check_layer(mvn_spec(eps=0.5), [x]).passed
    assert check_layer(mvn_spec(eps=0), [x]).passed


def test_constant_rows_give_zeros():
    x = np.full((2, 3, 2, 2), 4.0)
    _, bottoms, tops = run(mvn_spec(), x, np.ones(x.shape))
    np.testing.assert_array_equal(tops[0].data, 0.0)
    np.testing.assert_array_equal(bottoms[0].diff, 0.0)


@pytest.mark.parametrize("normalize,across", FLAGS)
def test_in_place_equals_out_of_place(normalize, across):
    x, dy = data((2, 3, 4, 5)), np.random.default_rng(1).standard_normal((2, 3, 4, 5))
    _, separate_bottoms, separate_tops = run(mvn_spec(normalize, across), x, dy)
    layer = build_layer(mvn_spec(normalize, across, top="x"), dtype=np.float64)
    blob = Blob.from_array(x.copy())
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    np.testing.assert_array_equal(blob.data, separate_tops[0].data)
    blob.diff[...] = dy
    layer.backward([blob], [True], [blob])
    np.testing.assert_array_equal(blob.diff, separate_bottoms[0].diff)


def test_empty_blob_runs_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, bottoms, tops = run(mvn_spec(), np.zeros((2, 3, 0, 4)), np.zeros((2, 3, 0, 4)))
    assert tops[0].shape == (2, 3, 0, 4) and bottoms[0].diff.size == 0


def test_propagate_down_false_leaves_bottom_diff():
    layer, bottoms, tops = run(mvn_spec(), data((1, 2, 3, 3)), np.ones((1, 2, 3, 3)))
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


# -- gradients -----------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (3, 4)])
@pytest.mark.parametrize("normalize,across", FLAGS)
def test_gradient(normalize, across, shape):
    result = check_layer(mvn_spec(normalize, across), [data(shape, seed=2)])
    assert result.passed, result.report()


# -- GPU path --------------------------------------------------------------------------

@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4)])
@pytest.mark.parametrize("normalize,across", FLAGS)
def test_gpu_path_on_host(normalize, across, shape, dtype):
    run_gpu_path_on_host(mvn_spec(normalize, across), [data(shape)], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("normalize,across", FLAGS)
def test_gpu_matches_cpu(normalize, across, dtype):
    compare_devices(mvn_spec(normalize, across), [data((2, 5, 17, 13))], dtype=dtype)


# -- errors ----------------------------------------------------------------------------

def test_more_than_four_axes_is_refused():
    with pytest.raises(ShapeError, match=r"layer 'mvn'.*bottom 'x' expected at most 4 axes "
                                         r".*found shape \(1, 2, 3, 4, 5\)"):
        setup_layer(build_layer(mvn_spec()), [np.ones((1, 2, 3, 4, 5))])
