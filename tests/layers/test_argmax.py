"""ArgMax: indices and values of the top_k largest entries per item or along
an axis, against a plain per-line reference with Caffe's tie rule (higher
index first); top shapes with and without an axis; no gradient; the errors;
the device path on a GPU (the layer is xp code, so there is no host-run
kernel test)."""
import re

import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from tests.kernel_harness import compare_devices
from tests.layer_checks import make


def spec(top_k=None, out_max_val=None, axis=None):
    fields = "".join(f" {name}: {value}" for name, value in
                     (("top_k", top_k), ("out_max_val", out_max_val), ("axis", axis))
                     if value is not None)
    return f'name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param {{{fields} }}'


def ranked(line, top_k):
    """(index, value) of the top_k largest of ``line``, as Caffe ranks them:
    (value, index) pairs in descending order."""
    pairs = sorted(((float(v), j) for j, v in enumerate(line)), reverse=True)
    return [(j, v) for v, j in pairs[:top_k]]


def reference_per_item(x, top_k, out_max_val):
    n = x.shape[0]
    flat = x.reshape(n, int(np.prod(x.shape[1:])))
    shape = [1] * max(x.ndim, 3)
    shape[0], shape[1], shape[2] = n, 2 if out_max_val else 1, top_k
    out = np.zeros(shape)
    rest = (0,) * (len(shape) - 3)
    for i in range(n):
        for r, (j, v) in enumerate(ranked(flat[i], top_k)):
            out[(i, 0, r) + rest] = j
            if out_max_val:
                out[(i, 1, r) + rest] = v
    return out


def reference_along_axis(x, top_k, out_max_val, axis):
    axis %= x.ndim
    shape = list(x.shape)
    shape[axis] = top_k
    out = np.zeros(shape)
    for where in np.ndindex(*(x.shape[:axis] + x.shape[axis + 1:])):
        line = [x[where[:axis] + (j,) + where[axis:]] for j in range(x.shape[axis])]
        for r, (j, v) in enumerate(ranked(line, top_k)):
            out[where[:axis] + (r,) + where[axis:]] = v if out_max_val else j
    return out


def with_ties(shape, seed=0):
    """Small integers: many equal values, so the tie rule matters."""
    return np.random.default_rng(seed).integers(-3, 4, shape).astype(np.float64)


@pytest.mark.parametrize("out_max_val", [False, True])
@pytest.mark.parametrize("shape,top_k", [((2, 3, 4, 5), 1), ((2, 3, 4, 5), 7), ((3, 4), 4),
                                         ((5,), 1), ((2, 1, 3, 2, 2), 3), ((0, 3, 2), 2)])
def test_per_item_matches_reference(shape, top_k, out_max_val):
    for x in (np.random.default_rng(1).standard_normal(shape), with_ties(shape)):
        layer, bottoms, tops = make(spec(top_k, str(out_max_val).lower()), [x])
        layer.forward(bottoms, tops)
        np.testing.assert_array_equal(tops[0].data, reference_per_item(x, top_k, out_max_val))


@pytest.mark.parametrize("out_max_val", [False, True])
@pytest.mark.parametrize("shape,axis,top_k", [((2, 3, 4, 5), 1, 1), ((2, 3, 4, 5), 1, 3),
                                              ((2, 3, 4, 5), -1, 2), ((4, 3), 0, 4),
                                              ((2, 3, 4), 2, 4), ((6,), 0, 2)])
def test_along_axis_matches_reference(shape, axis, top_k, out_max_val):
    for x in (np.random.default_rng(2).standard_normal(shape), with_ties(shape, 3)):
        layer, bottoms, tops = make(spec(top_k, str(out_max_val).lower(), axis), [x])
        layer.forward(bottoms, tops)
        np.testing.assert_array_equal(
            tops[0].data, reference_along_axis(x, top_k, out_max_val, axis))


def test_ties_rank_the_higher_index_first():
    x = np.array([[1.0, 5.0, 2.0, 5.0, 5.0]])
    layer, bottoms, tops = make(spec(4, "true"), [x])
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data[0], [[4, 3, 1, 2], [5, 5, 5, 2]])


def test_top_shapes():
    x = np.zeros((2, 3, 4, 5))
    assert make(spec(), [x])[2][0].shape == (2, 1, 1, 1)
    assert make(spec(3, "true"), [x])[2][0].shape == (2, 2, 3, 1)
    assert make(spec(), [np.zeros((4,))])[2][0].shape == (4, 1, 1)
    assert make(spec(2, "true", 2), [x])[2][0].shape == (2, 3, 2, 5)


def test_float32_indices_and_values():
    x = np.random.default_rng(4).standard_normal((3, 10)).astype(np.float32)
    layer, bottoms, tops = make(spec(2, "true"), [x], dtype=np.float32)
    layer.forward(bottoms, tops)
    assert tops[0].data.dtype == np.float32
    np.testing.assert_array_equal(tops[0].data, reference_per_item(x, 2, True))


def test_no_gradient():
    layer, bottoms, tops = make(spec(), [np.ones((2, 3))])
    assert not layer.allow_force_backward(0)


@pytest.mark.parametrize("text,shape,error,message", [
    (spec(0), (2, 3), NetDefinitionError,
     "layer 'am' (type ArgMax): argmax_param.top_k must be >= 1, found 0"),
    (spec(7), (2, 3, 2), ShapeError,
     "layer 'am' (type ArgMax): bottom 'x' expected at least top_k = 7 values per item "
     "(all axes after the first), found shape (2, 3, 2)"),
    (spec(4, axis=1), (2, 3, 2), ShapeError,
     "layer 'am' (type ArgMax): bottom 'x' expected at least top_k = 4 values along axis 1, "
     "found shape (2, 3, 2)"),
    (spec(axis=3), (2, 3, 2), ShapeError,
     "layer 'am' (type ArgMax): bottom 'x' expected argmax_param.axis 3 to lie in [-3, 3) "
     "for a 3-D blob, found shape (2, 3, 2)"),
    (spec(), (), ShapeError,
     "layer 'am' (type ArgMax): bottom 'x' expected at least 1 axis (items along axis 0), "
     "found shape ()"),
])
def test_errors(text, shape, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make(text, [np.zeros(shape)])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("text", [spec(3, "true"), spec(2, "false", 1), spec(1)])
def test_gpu_matches_cpu(text, dtype):
    x = with_ties((4, 5, 3, 3), 5)
    compare_devices(text, [x], dtype=dtype, backward=False, rtol=0, atol=0)
