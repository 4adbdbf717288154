"""Reduction (SUM, ASUM, SUMSQ, MEAN): forward and backward against plain
per-row references over axes and coefficients, the scalar top of axis 0,
float64 gradient checks, a Net using it as a loss, the errors, and the
device path on a GPU (the layer is xp code, so there is no host-run kernel
test)."""
import re

import numpy as np
import pytest

from netdef.errors import ShapeError
from netdef.gradcheck import check_layer
from netdef.net import Net
from tests.kernel_harness import compare_devices
from tests.layer_checks import make

OPERATIONS = ["SUM", "ASUM", "SUMSQ", "MEAN"]


def spec(operation=None, axis=None, coeff=None):
    fields = "".join(f" {name}: {value}" for name, value in
                     (("operation", operation), ("axis", axis), ("coeff", coeff))
                     if value is not None)
    return f'name: "red" type: "Reduction" bottom: "x" top: "y" reduction_param {{{fields} }}'


def reference(x, dy, operation, axis, coeff):
    """Top and bottom diff, one row (the values from ``axis`` on) at a time."""
    axis %= x.ndim
    num, dim = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    rows, dy_rows = x.reshape(num, dim), np.reshape(dy, num)
    top, dx = np.zeros(num), np.zeros((num, dim))
    for i in range(num):
        total = 0.0
        for j in range(dim):
            v = rows[i, j]
            total += {"SUM": v, "MEAN": v, "ASUM": abs(v), "SUMSQ": v * v}[operation]
            slope = {"SUM": 1.0, "MEAN": 1.0 / dim, "ASUM": float(np.sign(v)),
                     "SUMSQ": 2 * v}[operation]
            dx[i, j] = coeff * slope * dy_rows[i]
        if operation == "MEAN":
            total = total / dim if dim else float("nan")  # Caffe: 0 * (coeff / 0)
        top[i] = coeff * total
    return top.reshape(x.shape[:axis]), dx.reshape(x.shape)


def values(shape, seed=0):
    """Standard normal values with |x| >= 0.1: no kink of |x| in reach of
    the checker, and a few exact zeros elsewhere to see sign(0) = 0."""
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.where(np.abs(x) < 0.1, 0.5, x)


@pytest.mark.parametrize("coeff", [1.0, 0.5, -2.0])
@pytest.mark.parametrize("shape,axis", [((2, 3, 4), 0), ((2, 3, 4), 1), ((2, 3, 4), 2),
                                        ((2, 3, 4), -1), ((5,), 0), ((3, 0, 2), 1)])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_forward_backward_match_reference(operation, shape, axis, coeff):
    x = values(shape)
    if x.size:
        x.flat[0] = 0.0
    layer, bottoms, tops = make(spec(operation, axis, coeff), [x])
    layer.forward(bottoms, tops)
    dy = np.random.default_rng(1).standard_normal(tops[0].shape)
    tops[0].diff[...] = dy
    bottoms[0].diff[...] = 7.0  # overwritten, not added to
    layer.backward(tops, [True], bottoms)
    top, dx = reference(x, dy, operation, axis, coeff)
    assert tops[0].shape == x.shape[:axis % x.ndim]
    np.testing.assert_allclose(tops[0].data, top, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-13, atol=1e-13)


def test_defaults_sum_everything_to_a_scalar():
    x = np.arange(24.0).reshape(2, 3, 4)
    layer, bottoms, tops = make('name: "red" type: "Reduction"', [x])
    layer.forward(bottoms, tops)
    assert tops[0].shape == ()
    assert float(tops[0].data) == 276.0


def test_coeff_is_the_float32_value_of_the_proto_field():
    x = np.ones((2, 5))
    layer, bottoms, tops = make(spec("SUM", 1, 0.1), [x])
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, [5 * float(np.float32(0.1))] * 2)


def test_propagate_down_false_leaves_bottom_diff():
    layer, bottoms, tops = make(spec("SUMSQ", 1), [values((2, 3))])
    layer.forward(bottoms, tops)
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, 0.5), (-1, -3.0)])
def test_gradient(operation, axis, coeff):
    result = check_layer(spec(operation, axis, coeff), [values((2, 3, 4), 2)])
    assert result.passed, result.report()
    assert result.skipped_kinks == 0


def test_as_a_loss_in_a_net():
    """SUMSQ over everything with loss_weight 1 is ||x||^2: the net's loss
    and the input's diff."""
    net = Net('''
        input: "x" input_shape { dim: 2 dim: 3 }
        layer { name: "red" type: "Reduction" bottom: "x" top: "loss"
                reduction_param { operation: SUMSQ } loss_weight: 1 }
        force_backward: true''', "TRAIN", dtype=np.float64)
    x = values((2, 3), 3)
    net.forward(x=x)
    assert float(net.blobs["loss"].data) == pytest.approx(float(np.sum(x * x)), rel=1e-13)
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, 2 * x, rtol=1e-13)


@pytest.mark.parametrize("shape,axis,message", [
    ((2, 3, 4), 3, "layer 'red' (type Reduction): bottom 'x' expected reduction_param.axis 3 "
                   "to lie in [-3, 3) for a 3-D blob, found shape (2, 3, 4)"),
    ((2, 3, 4), -4, "layer 'red' (type Reduction): bottom 'x' expected reduction_param.axis -4 "
                    "to lie in [-3, 3) for a 3-D blob, found shape (2, 3, 4)"),
    ((), 0, "layer 'red' (type Reduction): bottom 'x' expected reduction_param.axis 0 "
            "to lie in [0, 0) for a 0-D blob, found shape ()"),
])
def test_axis_errors(shape, axis, message):
    with pytest.raises(ShapeError, match=re.escape(message)):
        make(spec("SUM", axis), [np.zeros(shape)])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gpu_matches_cpu(operation, axis, dtype):
    compare_devices(spec(operation, axis, 0.5), [values((4, 5, 6, 7), 4)], dtype=dtype)
