"""Element-wise activations (ReLU, Sigmoid, TanH): forward and backward
against plain per-element references, negative_slope, Caffe's gradient at
x == 0, in-place use, float64 gradient checks (with kink skipping), the GPU
path host-run and on a GPU; ReLU's visualization backward modes (guided,
deconvnet) against their rule."""
import math

import numpy as np
import pytest

from layers.neuron import relu_mode_backward
from netdef.blob import Blob
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

SHAPES = [(2, 3, 4, 5), (7,), (1, 1, 1, 1), (3, 0, 2)]


def relu_spec(slope=None):
    param = "" if slope is None else f"relu_param {{ negative_slope: {slope} }}"
    return f'name: "r" type: "ReLU" bottom: "x" top: "y" {param}'


def spec_of(kind):
    return f'name: "a" type: "{kind}" bottom: "x" top: "y"'


def away_from_zero(shape, seed=0):
    """Values with |x| in [0.1, 2]: no kink of ReLU within the checker's eps."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def run(spec, x, dy=None, dtype=np.float64):
    layer = build_layer(spec, dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.asarray(x, dtype=dtype)])
    layer.forward(bottoms, tops)
    if dy is not None:
        tops[0].diff[...] = dy
        layer.backward(tops, [True], bottoms)
    return layer, bottoms, tops


def elementwise(function, *arrays):
    """Apply a scalar function element by element (the plain reference)."""
    out = np.empty(arrays[0].shape)
    for idx in np.ndindex(*arrays[0].shape):
        out[idx] = function(*(float(a[idx]) for a in arrays))
    return out


# -- ReLU ------------------------------------------------------------------------------

def relu_reference(slope):
    forward = lambda v: v if v > 0 else v * slope                 # noqa: E731
    backward = lambda v, g: g if v > 0 else g * slope             # noqa: E731
    return forward, backward


@pytest.mark.parametrize("slope", [None, 0.1, 1.5, -0.2])
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_forward_backward_match_reference(shape, slope):
    x = np.random.default_rng(0).standard_normal(shape)
    if x.size:
        x.flat[0] = 0.0  # Caffe: y(0) = 0 and dy/dx(0) = negative_slope
    dy = np.random.default_rng(1).standard_normal(shape)
    _, bottoms, tops = run(relu_spec(slope), x, dy)
    # negative_slope is a proto float: the layer sees its float32 value.
    forward, backward = relu_reference(0.0 if slope is None else float(np.float32(slope)))
    np.testing.assert_array_equal(tops[0].data, elementwise(forward, x))
    np.testing.assert_array_equal(bottoms[0].diff, elementwise(backward, x, dy))


def test_relu_default_slope_is_zero():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    _, bottoms, tops = run(relu_spec(), x, np.ones(5))
    np.testing.assert_array_equal(tops[0].data, [0, 0, 0, 0.5, 2])
    np.testing.assert_array_equal(bottoms[0].diff, [0, 0, 0, 1, 1])


def test_relu_negative_slope_values():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    _, bottoms, tops = run(relu_spec(0.25), x, np.full(5, 2.0))
    np.testing.assert_array_equal(tops[0].data, [-0.5, -0.125, 0, 0.5, 2])
    np.testing.assert_array_equal(bottoms[0].diff, [0.5, 0.5, 0.5, 2, 2])


@pytest.mark.parametrize("slope", [None, 0.1])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (1, 1, 1, 1)])
def test_relu_gradient(shape, slope):
    result = check_layer(relu_spec(slope), [away_from_zero(shape)])
    assert result.passed, result.report()
    assert result.skipped_kinks == 0


def test_relu_gradient_skips_the_kink_at_zero():
    x = away_from_zero((4, 5))
    x[0, :3] = 0.0
    result = check_layer(relu_spec(), [x])
    assert result.passed, result.report()
    assert result.skipped_kinks == 3


def check_in_place(spec, shape):
    """Top and bottom the same Blob: the top after forward, and the bottom
    diff and the unchanged top after backward, equal the out-of-place run's."""
    x = np.random.default_rng(0).standard_normal(shape)
    dy = np.random.default_rng(1).standard_normal(x.shape)
    _, separate_bottoms, separate_tops = run(spec, x, dy)
    layer = build_layer(spec, dtype=np.float64)
    blob = Blob.from_array(x.copy())
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    np.testing.assert_array_equal(blob.data, separate_tops[0].data)
    blob.diff[...] = dy
    layer.backward([blob], [True], [blob])
    np.testing.assert_array_equal(blob.data, separate_tops[0].data)
    np.testing.assert_array_equal(blob.diff, separate_bottoms[0].diff)


@pytest.mark.parametrize("slope", [None, 0.1])
def test_relu_in_place(slope):
    """Top and bottom the same Blob: equal to the out-of-place result
    (backward then sees y in place of x, which has the same sign for a
    non-negative slope, Caffe's in-place contract)."""
    check_in_place(relu_spec(slope), (3, 4, 5))


def test_relu_propagate_down_false_leaves_bottom_diff():
    layer, bottoms, tops = run(relu_spec(), np.ones(4))
    bottoms[0].diff[...] = 7.0
    tops[0].diff[...] = 1.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", [None, 0.1, -0.3])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1,), (3, 0)])
def test_relu_gpu_path_on_host(shape, slope, dtype):
    x = np.random.default_rng(0).standard_normal(shape)
    if x.size:
        x.flat[0] = 0.0
    run_gpu_path_on_host(relu_spec(slope), [x], dtype=dtype, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slope", [None, 0.1])
def test_relu_gpu_matches_cpu(slope, dtype):
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 7))
    x.flat[:5] = 0.0
    compare_devices(relu_spec(slope), [x], dtype=dtype)


# -- ReLU's visualization modes -------------------------------------------------------

MODE_RULES = {
    "guided": lambda x, g: g if (x > 0 and g > 0) else 0.0,
    "deconvnet": lambda x, g: g if g > 0 else 0.0,
}


@pytest.mark.parametrize("mode", ["guided", "deconvnet"])
@pytest.mark.parametrize("in_place", [False, True])
def test_relu_mode_backward_follows_the_rule(mode, in_place):
    x = np.random.default_rng(0).standard_normal((3, 4, 5))
    dy = np.random.default_rng(1).standard_normal(x.shape)
    dx = dy.copy() if in_place else np.full(x.shape, 9.0)
    relu_mode_backward(x, dx if in_place else dy, dx, mode)
    np.testing.assert_array_equal(dx, elementwise(MODE_RULES[mode], x, dy))


@pytest.mark.parametrize("mode", ["normal", "guided", "deconvnet"])
@pytest.mark.parametrize("slope", [None, 0.1])
def test_relu_backward_in_mode(mode, slope):
    """A ReLU layer's backward under each mode, out of place and in place
    (where the bottom holds y, of x's sign); "normal" is Caffe's backward."""
    x = away_from_zero((2, 3, 4))
    dy = np.random.default_rng(1).standard_normal(x.shape)
    layer, bottoms, tops = run(relu_spec(slope), x)
    tops[0].diff[...] = dy
    layer.backward_in_mode(tops, [True], bottoms, mode)
    if mode == "normal":
        _, reference = relu_reference(0.0 if slope is None else float(np.float32(slope)))
        expected = elementwise(reference, x, dy)
    else:
        expected = elementwise(MODE_RULES[mode], x, dy)
    np.testing.assert_allclose(bottoms[0].diff, expected, rtol=1e-15)
    blob = Blob.from_array(x.copy())
    layer.forward([blob], [blob])
    blob.diff[...] = dy
    layer.backward_in_mode([blob], [True], [blob], mode)
    np.testing.assert_allclose(blob.diff, expected, rtol=1e-15)


def test_relu_backward_in_mode_respects_propagate_down():
    layer, bottoms, tops = run(relu_spec(), np.ones(4))
    bottoms[0].diff[...] = 7.0
    tops[0].diff[...] = 1.0
    layer.backward_in_mode(tops, [False], bottoms, "guided")
    assert np.all(bottoms[0].diff == 7.0)


def test_relu_mode_backward_unknown_mode():
    x = np.ones(3)
    with pytest.raises(ValueError, match=r"mode must be one of \('guided', 'deconvnet'\), "
                                         r"found 'normal'"):
        relu_mode_backward(x, x, x.copy(), "normal")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["guided", "deconvnet"])
def test_relu_mode_backward_gpu_matches_cpu(mode, dtype):
    import cupy
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 7)).astype(dtype)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    dx = np.empty_like(dy)
    relu_mode_backward(x, dy, dx, mode)
    dx_gpu = cupy.empty(dy.shape, dtype)
    relu_mode_backward(cupy.asarray(x), cupy.asarray(dy), dx_gpu, mode)
    np.testing.assert_array_equal(cupy.asnumpy(dx_gpu), dx)


# -- Sigmoid and TanH -----------------------------------------------------------------

REFERENCES = {
    "Sigmoid": (lambda v: 1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0,
                lambda v: (1.0 / (1.0 + math.exp(-v))) * (1.0 - 1.0 / (1.0 + math.exp(-v)))),
    "TanH": (math.tanh, lambda v: 1.0 - math.tanh(v) ** 2),
}


@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
@pytest.mark.parametrize("shape", SHAPES)
def test_saturating_forward_backward_match_reference(kind, shape):
    x = 3 * np.random.default_rng(0).standard_normal(shape)
    dy = np.random.default_rng(1).standard_normal(shape)
    _, bottoms, tops = run(spec_of(kind), x, dy)
    function, derivative = REFERENCES[kind]
    np.testing.assert_allclose(tops[0].data, elementwise(function, x), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(bottoms[0].diff, elementwise(lambda v, g: g * derivative(v), x, dy),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_does_not_overflow(dtype):
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with np.errstate(all="raise"):
        _, bottoms, tops = run(spec_of("Sigmoid"), x, np.ones(5), dtype=dtype)
    np.testing.assert_allclose(tops[0].data, [0, 0, 0.5, 1, 1], atol=1e-7)
    np.testing.assert_allclose(bottoms[0].diff, [0, 0, 0.25, 0, 0], atol=1e-7)


@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1,)])
def test_saturating_gradient(kind, shape):
    result = check_layer(spec_of(kind), [2 * np.random.default_rng(2).standard_normal(shape)])
    assert result.passed, result.report()


@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
def test_saturating_in_place(kind):
    check_in_place(spec_of(kind), (3, 4))


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
def test_saturating_gpu_path_on_host(kind, dtype):
    x = 3 * np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    run_gpu_path_on_host(spec_of(kind), [x], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["Sigmoid", "TanH"])
def test_saturating_gpu_matches_cpu(kind, dtype):
    x = 3 * np.random.default_rng(0).standard_normal((2, 3, 9, 7))
    compare_devices(spec_of(kind), [x], dtype=dtype)
