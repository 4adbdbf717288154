"""Caffe's element-wise activations of layers/activations.py (ELU, Swish,
Clip, Power, Exp, Log, AbsVal, BNLL, Threshold): forward and backward
against plain per-element references, Caffe's special cases and
parameters, in-place use (CPU and the GPU path), float64 gradient checks,
error paths, nets, the GPU path host-run and on a GPU."""
import math

import numpy as np
import pytest

from netdef import Net
from netdef.blob import Blob
from netdef.errors import NetDefinitionError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host


def spec(kind, param=""):
    return f'name: "a" type: "{kind}" bottom: "x" top: "y" {param}'


def elementwise(function, *arrays):
    """Apply a scalar function element by element (the plain reference)."""
    out = np.empty(arrays[0].shape)
    for idx in np.ndindex(*arrays[0].shape):
        out[idx] = function(*(float(a[idx]) for a in arrays))
    return out


def run(text, x, dy=None, dtype=np.float64):
    layer = build_layer(text, dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.asarray(x, dtype=dtype)])
    layer.forward(bottoms, tops)
    if dy is not None:
        tops[0].diff[...] = dy
        layer.backward(tops, [True], bottoms)
    return layer, bottoms, tops


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def sign(v):
    return 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)


# Per case: spec, reference forward f(x), reference derivative f'(x), and a
# sampler of inputs inside the function's domain and away from its kinks.
# Parameters are exactly representable as the proto's float32.
def uniform(low, high):
    return lambda shape, rng: rng.uniform(low, high, shape)


def away_from_zero(shape, rng):
    return rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


def away_from(points, low, high):
    def sample(shape, rng):
        x = rng.uniform(low, high, shape)
        for p in points:
            x = np.where(np.abs(x - p) < 0.05, p + 0.1, x)
        return x
    return sample


CASES = {
    "elu": (spec("ELU"), lambda v: v if v > 0 else math.expm1(v),
            lambda v: 1.0 if v > 0 else math.exp(v), away_from_zero),
    "elu_alpha": (spec("ELU", "elu_param { alpha: 0.5 }"),
                  lambda v: v if v > 0 else 0.5 * math.expm1(v),
                  lambda v: 1.0 if v > 0 else 0.5 * math.exp(v), away_from_zero),
    "elu_negative_alpha": (spec("ELU", "elu_param { alpha: -0.75 }"),
                           lambda v: v if v > 0 else -0.75 * math.expm1(v),
                           lambda v: 1.0 if v > 0 else -0.75 * math.exp(v), away_from_zero),
    "swish": (spec("Swish"), lambda v: v * sigmoid(v),
              lambda v: sigmoid(v) + v * sigmoid(v) * (1 - sigmoid(v)), uniform(-4, 4)),
    "swish_beta": (spec("Swish", "swish_param { beta: 2.5 }"), lambda v: v * sigmoid(2.5 * v),
                   lambda v: sigmoid(2.5 * v) + 2.5 * v * sigmoid(2.5 * v) * (1 - sigmoid(2.5 * v)),
                   uniform(-3, 3)),
    "clip": (spec("Clip", "clip_param { min: -0.5 max: 0.75 }"),
             lambda v: min(max(v, -0.5), 0.75), lambda v: 1.0 if -0.5 <= v <= 0.75 else 0.0,
             away_from([-0.5, 0.75], -2, 2)),
    "power3": (spec("Power", "power_param { power: 3 scale: 0.5 shift: 2 }"),
               lambda v: (2 + 0.5 * v) ** 3, lambda v: 1.5 * (2 + 0.5 * v) ** 2, uniform(-2, 2)),
    "power2": (spec("Power", "power_param { power: 2 scale: -1.5 shift: 0.25 }"),
               lambda v: (0.25 - 1.5 * v) ** 2, lambda v: -3.0 * (0.25 - 1.5 * v),
               uniform(-2, 2)),
    "power_sqrt": (spec("Power", "power_param { power: 0.5 scale: 0.5 shift: 3 }"),
                   lambda v: math.sqrt(3 + 0.5 * v), lambda v: 0.25 / math.sqrt(3 + 0.5 * v),
                   uniform(-2, 2)),
    "power_inverse": (spec("Power", "power_param { power: -1 shift: 4 }"),
                      lambda v: 1.0 / (4 + v), lambda v: -1.0 / (4 + v) ** 2, uniform(-2, 2)),
    "power_affine": (spec("Power", "power_param { power: 1 scale: 2 shift: -1 }"),
                     lambda v: 2 * v - 1, lambda v: 2.0, uniform(-2, 2)),
    "power_default": (spec("Power"), lambda v: v, lambda v: 1.0, uniform(-2, 2)),
    "power_zero": (spec("Power", "power_param { power: 0 scale: 2 shift: 1 }"),
                   lambda v: 1.0, lambda v: 0.0, uniform(-2, 2)),
    "power_scale_zero": (spec("Power", "power_param { power: 2 scale: 0 shift: 3 }"),
                         lambda v: 9.0, lambda v: 0.0, uniform(-2, 2)),
    "exp": (spec("Exp"), math.exp, math.exp, uniform(-3, 3)),
    "exp_base": (spec("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }"),
                 lambda v: 2.0 ** (1 + 0.5 * v), lambda v: math.log(2) * 0.5 * 2.0 ** (1 + 0.5 * v),
                 uniform(-3, 3)),
    "exp_e_shift": (spec("Exp", "exp_param { scale: -2 shift: 0.5 }"),
                    lambda v: math.exp(0.5 - 2 * v), lambda v: -2 * math.exp(0.5 - 2 * v),
                    uniform(-2, 2)),
    "log": (spec("Log"), math.log, lambda v: 1.0 / v, uniform(0.2, 4)),
    "log_base": (spec("Log", "log_param { base: 10 scale: 0.5 shift: 3 }"),
                 lambda v: math.log10(3 + 0.5 * v), lambda v: 0.5 / (math.log(10) * (3 + 0.5 * v)),
                 uniform(-2, 2)),
    "log_e_scaled": (spec("Log", "log_param { scale: -2 shift: 5 }"),
                     lambda v: math.log(5 - 2 * v), lambda v: -2.0 / (5 - 2 * v), uniform(-2, 2)),
    "absval": (spec("AbsVal"), abs, sign, away_from_zero),
    "bnll": (spec("BNLL"),
             lambda v: v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v)),
             sigmoid, uniform(-6, 6)),
}
IN_PLACE_CASES = [c for c in CASES if not c.startswith("absval")]


def inputs(case, shape=(2, 3, 4, 5), seed=0):
    return CASES[case][3](shape, np.random.default_rng(seed))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (1, 1, 1, 1), (3, 0, 2), ()])
@pytest.mark.parametrize("case", list(CASES))
def test_forward_backward_match_reference(case, shape):
    text, function, derivative, _ = CASES[case]
    x = inputs(case, shape)
    dy = np.random.default_rng(1).standard_normal(shape)
    _, bottoms, tops = run(text, x, dy)
    assert tops[0].shape == tuple(shape)
    np.testing.assert_allclose(tops[0].data, elementwise(function, x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(bottoms[0].diff, elementwise(lambda v, g: g * derivative(v), x, dy),
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("case", list(CASES))
def test_gradient(case):
    result = check_layer(CASES[case][0], [inputs(case, (2, 3, 3, 2), seed=2)])
    assert result.passed, result.report()
    assert result.skipped_kinks == 0


@pytest.mark.parametrize("case", list(CASES))
def test_propagate_down_false_leaves_bottom_diff(case):
    layer, bottoms, tops = run(CASES[case][0], inputs(case, (3, 4)))
    bottoms[0].diff[...] = 7.0
    tops[0].diff[...] = 1.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


# -- in place --------------------------------------------------------------------------

def in_place_run(text, x, dy, forward, backward, dtype=np.float64):
    """Top and bottom one Blob: (top data after forward, bottom diff and
    top data after backward), through the named methods of the layer."""
    layer = build_layer(text, dtype=dtype)
    blob = Blob.from_array(np.array(x, dtype=dtype))
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    getattr(layer, forward)([blob], [blob])
    after_forward = blob.data.copy()
    blob.diff[...] = dy
    getattr(layer, backward)([blob], [True], [blob])
    return after_forward, blob.diff.copy(), blob.data.copy()


@pytest.mark.parametrize("case", IN_PLACE_CASES)
def test_in_place_equals_out_of_place(case):
    """Caffe lets these run in place; forward and backward then equal the
    out-of-place run's (backward reads a saved copy of x, or Swish's slope)."""
    text = CASES[case][0]
    x = inputs(case, (3, 4, 5))
    dy = np.random.default_rng(1).standard_normal(x.shape)
    _, bottoms, tops = run(text, x, dy)
    top, diff, data = in_place_run(text, x, dy, "forward", "backward")
    np.testing.assert_array_equal(top, tops[0].data)
    np.testing.assert_array_equal(data, tops[0].data)
    np.testing.assert_array_equal(diff, bottoms[0].diff)


def test_clip_in_place_keeps_the_input_for_backward():
    """In place the top holds min/max where x was outside: backward must
    still see x (a plain in-place Clip, as Caffe's, would pass the gradient
    at every clipped element)."""
    x = np.array([-3.0, -0.5, 0.0, 0.75, 3.0])
    _, diff, _ = in_place_run(spec("Clip", "clip_param { min: -0.5 max: 0.75 }"), x,
                              np.ones(5), "forward", "backward")
    np.testing.assert_array_equal(diff, [0, 1, 1, 1, 0])


@pytest.mark.parametrize("case,copies", [("elu", True), ("elu_negative_alpha", True),
                                         ("swish", False), ("exp", True), ("clip", True),
                                         ("power3", True), ("power_affine", False),
                                         ("power_zero", False), ("log", True), ("bnll", True)])
def test_in_place_copies_the_input_only_when_backward_needs_it(case, copies):
    layer = build_layer(CASES[case][0])
    blob = Blob.from_array(np.ones((2, 3)))
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    assert (layer.saved_bottom is not None) == copies
    separate, _, _ = run(CASES[case][0], np.ones((2, 3)))
    assert separate.saved_bottom is None


@pytest.mark.parametrize("case,in_place", [(c, False) for c in CASES] +
                         [(c, True) for c in IN_PLACE_CASES])
def test_backward_never_reads_the_top(case, in_place):
    """A later layer working in place on the top (Dropout, say) changes its
    data before this layer's backward runs; the gradient must not change."""
    text = CASES[case][0]
    x = inputs(case, (3, 4))
    dy = np.random.default_rng(1).standard_normal(x.shape)
    _, bottoms, _ = run(text, x, dy)
    layer = build_layer(text)
    bottom = Blob.from_array(x.copy())
    top = bottom if in_place else Blob.from_array(np.empty_like(x))
    layer.setup([bottom], [top])
    layer.reshape([bottom], [top])
    layer.forward([bottom], [top])
    top.data[...] = np.nan
    top.diff[...] = dy
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, bottoms[0].diff)


def test_absval_refuses_in_place():
    layer = build_layer(spec("AbsVal").replace('top: "y"', 'top: "x"'))
    blob = Blob.from_array(np.ones(3))
    with pytest.raises(NetDefinitionError, match=r"layer 'a' \(type AbsVal\): does not work "
                       r"in place .* other than its bottom 'x'"):
        layer.setup([blob], [blob])


def test_absval_in_place_in_a_net_is_an_error():
    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "abs" type: "AbsVal" bottom: "x" top: "x" }
    """
    with pytest.raises(NetDefinitionError, match="layer 'abs' .*does not work in place"):
        Net(text, "TRAIN")


# -- special cases and parameters ------------------------------------------------------

def test_elu_values():
    x = np.array([-1.0, 0.0, 2.0])
    _, bottoms, tops = run(spec("ELU", "elu_param { alpha: 2 }"), x, np.ones(3))
    np.testing.assert_allclose(tops[0].data, [2 * (math.exp(-1) - 1), 0, 2], rtol=1e-15)
    # Caffe: at x == 0 the slope is alpha + y = alpha.
    np.testing.assert_allclose(bottoms[0].diff, [2 * math.exp(-1), 2, 1], rtol=1e-15)


def test_clip_gradient_passes_at_both_bounds_and_nan_stays_nan():
    x = np.array([-2.0, -0.5, 0.1, 0.75, 2.0, np.nan])
    _, bottoms, tops = run(spec("Clip", "clip_param { min: -0.5 max: 0.75 }"), x, np.full(6, 3.0))
    np.testing.assert_array_equal(tops[0].data, [-0.5, -0.5, 0.1, 0.75, 0.75, np.nan])
    np.testing.assert_array_equal(bottoms[0].diff, [0, 3, 3, 3, 0, 0])


def test_clip_with_equal_bounds():
    _, bottoms, tops = run(spec("Clip", "clip_param { min: 1 max: 1 }"), [0.0, 1.0, 2.0],
                           np.ones(3))
    np.testing.assert_array_equal(tops[0].data, [1, 1, 1])
    np.testing.assert_array_equal(bottoms[0].diff, [0, 1, 0])


def test_power_special_cases():
    x = np.array([-2.0, 0.0, 3.0])
    # power 0: 1 everywhere, even where the base is 0; no gradient.
    _, b, t = run(spec("Power", "power_param { power: 0 shift: 2 }"), x, np.ones(3))
    np.testing.assert_array_equal(t[0].data, [1, 1, 1])
    np.testing.assert_array_equal(b[0].diff, [0, 0, 0])
    # scale 0: shift ^ power, as C's pow (0 ^ -1 is inf); no gradient.
    _, b, t = run(spec("Power", "power_param { power: -1 scale: 0 }"), x, np.ones(3))
    np.testing.assert_array_equal(t[0].data, [np.inf] * 3)
    np.testing.assert_array_equal(b[0].diff, [0, 0, 0])
    # A zero base with power > 1: derivative 0 (Caffe's y / base is 0/0).
    _, b, t = run(spec("Power", "power_param { power: 3 }"), x, np.ones(3))
    np.testing.assert_array_equal(t[0].data, [-8, 0, 27])
    np.testing.assert_array_equal(b[0].diff, [12, 0, 27])
    # An odd integer power of a negative base is defined.
    _, b, t = run(spec("Power", "power_param { power: 2 scale: -1 shift: 1 }"), x, np.ones(3))
    np.testing.assert_array_equal(t[0].data, [9, 1, 4])
    np.testing.assert_array_equal(b[0].diff, [-6, -2, 4])


def test_exp_and_log_bases():
    x = np.array([-1.0, 0.0, 2.0])
    _, _, t = run(spec("Exp", "exp_param { base: -1 }"), x)
    np.testing.assert_allclose(t[0].data, np.exp(x), rtol=1e-15)
    _, _, t = run(spec("Exp", "exp_param { base: 10 }"), x)
    np.testing.assert_allclose(t[0].data, [0.1, 1, 100], rtol=1e-14)
    _, b, t = run(spec("Log", "log_param { base: 2 }"), [0.5, 1.0, 8.0], np.ones(3))
    np.testing.assert_allclose(t[0].data, [-1, 0, 3], rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(b[0].diff, 1 / (np.log(2) * np.array([0.5, 1.0, 8.0])), rtol=1e-15)


def test_log_of_zero_is_minus_infinity():
    with np.errstate(divide="ignore"):
        _, b, t = run(spec("Log"), [0.0, 1.0], np.ones(2))
    np.testing.assert_array_equal(t[0].data, [-np.inf, 0])
    np.testing.assert_array_equal(b[0].diff, [np.inf, 1])


def test_absval_sign_at_zero_is_zero():
    _, b, t = run(spec("AbsVal"), [-2.0, 0.0, 3.0], np.full(3, 5.0))
    np.testing.assert_array_equal(t[0].data, [2, 0, 3])
    np.testing.assert_array_equal(b[0].diff, [-5, 0, 5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bnll_never_overflows_and_uses_caffes_threshold(dtype):
    x = np.array([-1000.0, -40.0, 0.0, 40.0, 100.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        _, b, t = run(spec("BNLL"), x, np.ones(6), dtype=dtype)
    np.testing.assert_allclose(t[0].data, [0, math.exp(-40), math.log(2), 40, 100, 1000],
                               rtol=1e-6 if dtype == np.float32 else 1e-15)
    # exp(min(x, 50)): past the threshold the slope is e^50 / (e^50 + 1) == 1.
    np.testing.assert_allclose(b[0].diff, [0, math.exp(-40), 0.5, 1, 1, 1],
                               rtol=1e-6 if dtype == np.float32 else 1e-15)
    assert b[0].diff[-1] == 1 and b[0].diff[-2] == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_swish_does_not_overflow(dtype):
    x = np.array([-1000.0, 0.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        _, b, t = run(spec("Swish"), x, np.ones(3), dtype=dtype)
    np.testing.assert_array_equal(t[0].data, [0, 0, 1000])
    np.testing.assert_allclose(b[0].diff, [0, 0.5, 1])


# -- Threshold -------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [None, 0.5, -1.25])
def test_threshold_forward(threshold):
    param = "" if threshold is None else f"threshold_param {{ threshold: {threshold} }}"
    t = 0.0 if threshold is None else threshold
    x = np.random.default_rng(0).uniform(-2, 2, (2, 3, 4))
    x.flat[:2] = t  # equal to the threshold: 0
    _, _, tops = run(spec("Threshold", param), x)
    np.testing.assert_array_equal(tops[0].data, elementwise(lambda v: 1.0 if v > t else 0.0, x))
    assert tops[0].data.flat[0] == 0


def test_threshold_has_no_gradient():
    """Caffe defines no backward: no forced backward into the bottom, and a
    backward run anyway gives zeros (as Accuracy and ArgMax do)."""
    layer, bottoms, tops = run(spec("Threshold"), [-1.0, 2.0], np.array([3.0, 4.0]))
    assert not layer.allow_force_backward(0)
    np.testing.assert_array_equal(bottoms[0].diff, [0, 0])
    assert check_layer(spec("Threshold"), [np.array([-1.0, 2.0])]).checked == 0


def test_threshold_in_place():
    x = np.array([-1.0, 0.0, 0.5, 2.0])
    top, diff, _ = in_place_run(spec("Threshold", "threshold_param { threshold: 0.25 }"), x,
                                np.ones(4), "forward", "backward")
    np.testing.assert_array_equal(top, [0, 0, 1, 1])
    np.testing.assert_array_equal(diff, [0, 0, 0, 0])


def test_threshold_in_a_net_stops_the_gradient():
    text = """
    force_backward: true
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "s" type: "Scale" bottom: "x" top: "s" scale_param { filler { value: 2 } } }
    layer { name: "t" type: "Threshold" bottom: "s" top: "s" }
    layer { name: "p" type: "Power" bottom: "s" top: "p" loss_weight: 1 }
    """
    net = Net(text, "TRAIN", dtype=np.float64)
    x = np.array([[-1.0, 0.5, 2.0], [0.1, -0.2, 3.0]])
    out = net.forward(x=x)
    assert out.loss == 4
    diffs = net.backward()
    np.testing.assert_array_equal(diffs["x"], np.zeros((2, 3)))
    np.testing.assert_array_equal(net.params["s"][0].diff, np.zeros(3))


# -- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("param,message", [
    ("", "clip_param needs min and max; min and max not given"),
    ("clip_param { max: 1 }", "clip_param needs min and max; min not given"),
    ("clip_param { min: 1 }", "clip_param needs min and max; max not given"),
    ("clip_param { min: 2 max: 1 }", r"clip_param.min \(2\) must not exceed clip_param.max \(1\)"),
])
def test_clip_parameter_errors(param, message):
    with pytest.raises(NetDefinitionError, match=r"layer 'a' \(type Clip\): " + message):
        run(spec("Clip", param), np.ones(2))


@pytest.mark.parametrize("kind,param,message", [
    ("Exp", "exp_param { base: 0 }", r"base must be -1 \(for e\) or a finite number > 0, found 0"),
    ("Exp", "exp_param { base: -2 }", "found -2"),
    ("Exp", "exp_param { base: inf }", "found inf"),
    ("Log", "log_param { base: -0.5 }", "found -0.5"),
    ("Log", "log_param { base: 1 }", "log_param.base must not be 1"),
])
def test_base_errors(kind, param, message):
    with pytest.raises(NetDefinitionError, match=rf"layer 'a' \(type {kind}\): .*" + message):
        run(spec(kind, param), np.ones(2))


def test_exp_base_one_is_a_constant():
    _, b, t = run(spec("Exp", "exp_param { base: 1 shift: 3 }"), [-1.0, 5.0], np.ones(2))
    np.testing.assert_array_equal(t[0].data, [1, 1])
    np.testing.assert_array_equal(b[0].diff, [0, 0])


# -- nets ------------------------------------------------------------------------------

CHAIN = """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
layer { name: "scale" type: "Scale" bottom: "x" top: "a"
        scale_param { filler { type: "uniform" min: 0.5 max: 1.5 } bias_term: true } }
layer { name: "elu" type: "ELU" bottom: "a" top: "b" elu_param { alpha: -0.5 } }
layer { name: "swish" type: "Swish" bottom: "b" top: "c" swish_param { beta: 1.5 } }
layer { name: "clip" type: "Clip" bottom: "c" top: "d" clip_param { min: -0.5 max: 1.5 } }
layer { name: "power" type: "Power" bottom: "d" top: "e" power_param { power: 3 shift: 0.25 } }
layer { name: "bnll" type: "BNLL" bottom: "e" top: "f" }
layer { name: "log" type: "Log" bottom: "f" top: "g" log_param { base: 2 shift: 0.5 } }
layer { name: "exp" type: "Exp" bottom: "g" top: "h" exp_param { scale: 0.5 } }
layer { name: "abs" type: "AbsVal" bottom: "h" top: "i" loss_weight: 1 }
"""


def in_place_chain():
    text = CHAIN
    for name in "bcdefgh":
        text = text.replace(f'top: "{name}"', 'top: "a"').replace(f'bottom: "{name}"',
                                                                   'bottom: "a"')
    return text


def test_in_place_chain_in_a_net_equals_the_separate_one():
    x = np.random.default_rng(0).uniform(-2, 2, (2, 3, 4))
    results = []
    for text in (CHAIN, in_place_chain()):
        net = Net(text, "TRAIN", dtype=np.float64, seed=5)
        out = net.forward(x=x)
        net.clear_param_diffs()
        diffs = net.backward()
        results.append((out.loss, diffs["x"].copy(),
                        [p.diff.copy() for p in net.params["scale"]]))
    assert len(Net(in_place_chain(), "TRAIN").blobs) == 3  # x, a, i
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    for p, q in zip(results[0][2], results[1][2]):
        np.testing.assert_array_equal(p, q)
    assert np.all(np.isfinite(results[0][1])) and np.any(results[0][1] != 0)


def test_legacy_v1_layer_types_build():
    text = """
    input: "x" input_dim: 1 input_dim: 2 input_dim: 2 input_dim: 2
    layers { name: "abs" type: ABSVAL bottom: "x" top: "a" }
    layers { name: "pow" type: POWER bottom: "a" top: "a" power_param { power: 2 shift: 1 } }
    layers { name: "exp" type: EXP bottom: "a" top: "a" exp_param { scale: -1 } }
    layers { name: "bnll" type: BNLL bottom: "a" top: "a" }
    layers { name: "thr" type: THRESHOLD bottom: "a" top: "t" threshold_param { threshold: 0.5 } }
    """
    net = Net(text, "TEST", dtype=np.float64)
    x = np.linspace(-1, 1, 8).reshape(1, 2, 2, 2)
    out = net.forward(x=x)
    expected = np.log1p(np.exp(np.exp(-(np.abs(x) + 1) ** 2)))
    np.testing.assert_allclose(net.blobs["a"].data, expected, rtol=1e-14)
    np.testing.assert_array_equal(out["t"], expected > 0.5)


# -- the GPU path ----------------------------------------------------------------------

@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_path_on_host(case, dtype):
    x = inputs(case, (2, 3, 4, 5))
    tolerance = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    run_gpu_path_on_host(CASES[case][0], [x], dtype=dtype, **tolerance)
    run_gpu_path_on_host(CASES[case][0], [x[:0]], dtype=dtype)


@requires_cxx
@pytest.mark.parametrize("case", IN_PLACE_CASES)
def test_gpu_path_in_place_on_host(case):
    """The GPU path in place (host-run kernels) equals the CPU out of place."""
    text = CASES[case][0]
    x = inputs(case, (3, 4, 5))
    dy = np.random.default_rng(1).standard_normal(x.shape)
    _, bottoms, tops = run(text, x, dy)
    top, diff, data = in_place_run(text, x, dy, "forward_gpu", "backward_gpu")
    np.testing.assert_allclose(top, tops[0].data, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(data, tops[0].data, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(diff, bottoms[0].diff, rtol=1e-12, atol=1e-14)


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_gpu_path_on_host(dtype):
    x = np.random.default_rng(0).uniform(-2, 2, (2, 3, 4, 5))
    x.flat[:3] = 0.5
    run_gpu_path_on_host(spec("Threshold", "threshold_param { threshold: 0.5 }"), [x],
                         dtype=dtype, rtol=0, atol=0)


@requires_cxx
def test_clip_and_bnll_edges_gpu_path_on_host():
    x = np.array([-1000.0, -0.5, 0.0, 0.75, 100.0, 1000.0, np.nan])
    run_gpu_path_on_host(spec("Clip", "clip_param { min: -0.5 max: 0.75 }"), [x], rtol=0, atol=0)
    run_gpu_path_on_host(spec("BNLL"), [x[:-1]], rtol=1e-6, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_gpu_matches_cpu(case, dtype):
    compare_devices(CASES[case][0], [inputs(case, (2, 3, 9, 7))], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_gpu_matches_cpu(dtype):
    x = np.random.default_rng(0).uniform(-2, 2, (2, 3, 9, 7))
    compare_devices(spec("Threshold", "threshold_param { threshold: 0.5 }"), [x], dtype=dtype)
