"""LSTMUnit: forward against a per-element reference of Caffe's cell
(binary and fractional cont), float64 gradient checks, propagate_down,
cont taking no gradient, the recurrent.cu kernels host-run and on a GPU,
and the shape errors."""
import math

import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

SPEC = 'name: "unit" type: "LSTMUnit" bottom: "c_prev" bottom: "x" bottom: "cont" top: "c" top: "h"'


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def unit_reference(c_prev, x, cont):
    """Caffe's LSTMUnit, one stream and one unit at a time."""
    _, n, dim = c_prev.shape
    c, h = np.empty(c_prev.shape), np.empty(c_prev.shape)
    for s in range(n):
        for d in range(dim):
            i = sigmoid(x[0, s, d])
            f = sigmoid(x[0, s, dim + d])
            o = sigmoid(x[0, s, 2 * dim + d])
            g = math.tanh(x[0, s, 3 * dim + d])
            c[0, s, d] = cont[0, s] * f * c_prev[0, s, d] + i * g
            h[0, s, d] = o * math.tanh(c[0, s, d])
    return c, h


def inputs(n, dim, cont, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (1, n, dim)), 2 * rng.standard_normal((1, n, 4 * dim)),
            np.asarray(cont, dtype=np.float64).reshape(1, n)]


def run(arrays, dtype=np.float64):
    layer = build_layer(SPEC, dtype=dtype)
    bottoms, tops = setup_layer(layer, arrays)
    layer.forward(bottoms, tops)
    return layer, bottoms, tops


@pytest.mark.parametrize("n, dim, cont", [
    (1, 1, [1]), (1, 1, [0]), (3, 5, [0, 1, 1]), (4, 2, [1, 0, 0.5, 1]), (2, 7, [0, 0])])
def test_forward_matches_reference(n, dim, cont):
    arrays = inputs(n, dim, cont)
    _, _, tops = run(arrays)
    c, h = unit_reference(*arrays)
    assert tops[0].shape == (1, n, dim) and tops[1].shape == (1, n, dim)
    np.testing.assert_allclose(tops[0].data, c, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(tops[1].data, h, rtol=1e-13, atol=1e-15)


def test_cont_zero_forgets_the_previous_cell():
    arrays = inputs(2, 3, [0, 0])
    _, _, tops = run(arrays)
    arrays[0] = 100 * arrays[0]
    _, _, again = run(arrays)
    np.testing.assert_array_equal(again[0].data, tops[0].data)
    np.testing.assert_array_equal(again[1].data, tops[1].data)


def test_saturated_gates_do_not_overflow():
    arrays = inputs(2, 2, [1, 1])
    arrays[1][...] = np.array([-1000.0, 1000.0] * 8).reshape(1, 2, 8)
    with np.errstate(all="raise"):
        _, _, tops = run(arrays)
    assert np.all(np.isfinite(tops[0].data)) and np.all(np.isfinite(tops[1].data))


@pytest.mark.parametrize("cont", [[0, 0, 0], [1, 0, 1], [1, 0.5, 1]])
def test_gradient(cont):
    # cont is never checked: the layer refuses it a gradient.
    result = check_layer(SPEC, inputs(3, 3, cont, seed=1))
    assert result.passed, result.report()
    assert set(result.worst_per_blob) == {"bottom 0 'c_prev'", "bottom 1 'x'"}


@pytest.mark.parametrize("down", [[True, False, False], [False, True, False], [False, False, False]])
def test_propagate_down_false_leaves_that_bottom_diff(down):
    layer, bottoms, tops = run(inputs(2, 3, [1, 1]))
    for b in bottoms:
        b.diff[...] = 7.0
    for t in tops:
        t.diff[...] = 1.0
    layer.backward(tops, down, bottoms)
    for b, wanted in zip(bottoms, down):
        assert wanted != bool(np.all(b.diff == 7.0))


def test_cont_takes_no_gradient():
    layer, bottoms, tops = run(inputs(2, 3, [1, 1]))
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]
    with pytest.raises(NetDefinitionError, match=r"layer 'unit'.*sequence indicators 'cont'"):
        layer.backward(tops, [True, True, True], bottoms)


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, dim, cont", [(3, 4, [0, 1, 0.5]), (1, 1, [1])])
def test_gpu_path_on_host(n, dim, cont, dtype):
    arrays = inputs(n, dim, cont)
    run_gpu_path_on_host(SPEC, arrays, dtype=dtype, propagate=[True, True, False])
    run_gpu_path_on_host(SPEC, arrays, dtype=dtype, propagate=[False, True, False])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_matches_cpu(dtype):
    compare_devices(SPEC, inputs(5, 9, [0, 1, 1, 0.5, 0]), dtype=dtype,
                    propagate=[True, True, False])


@pytest.mark.parametrize("shapes, index, message", [
    ([(2, 3), (1, 2, 12), (1, 2)], 0, r"bottom 'c_prev' expected \(1, N, D\).*\(2, 3\)"),
    ([(2, 2, 3), (1, 2, 12), (1, 2)], 0, r"bottom 'c_prev' expected \(1, N, D\).*\(2, 2, 3\)"),
    ([(1, 2, 3), (1, 2, 9), (1, 2)], 1, r"bottom 'x' expected \(1, N, 4D\) = \(1, 2, 12\).*\(1, 2, 9\)"),
    ([(1, 2, 3), (1, 3, 12), (1, 2)], 1, r"bottom 'x' expected .*found shape \(1, 3, 12\)"),
    ([(1, 2, 3), (1, 2, 12), (2,)], 2, r"bottom 'cont' expected \(1, N\) = \(1, 2\).*\(2,\)"),
    ([(1, 2, 3), (1, 2, 12), (1, 3)], 2, r"bottom 'cont' expected .*found shape \(1, 3\)"),
])
def test_shape_errors(shapes, index, message):
    layer = build_layer(SPEC)
    with pytest.raises(ShapeError, match=r"layer 'unit' \(type LSTMUnit\): " + message):
        setup_layer(layer, [np.zeros(s) for s in shapes])
