"""Reshape, Flatten, Split, Silence and Crop: forward against plain references,
float64 gradient checks, the GPU path on a GPU, every error. Their GPU path is
their CPU code (views and xp copies), so there is no host-run test: it would
compare that code with itself."""
import re

import numpy as np
import pytest

from layers.shape_ops import (CropLayer, FlattenLayer, ReshapeLayer, SilenceLayer,
                              SplitLayer)
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import check_layer
from tests.kernel_harness import compare_devices
from tests.layer_checks import make, rand


def reshape_spec(dims, axis=None, num_axes=None):
    extra = "" if axis is None else f" axis: {axis}"
    extra += "" if num_axes is None else f" num_axes: {num_axes}"
    shape = " ".join(f"dim: {d}" for d in dims)
    return (f'name: "rs" type: "Reshape" bottom: "x" top: "y" '
            f'reshape_param {{ shape {{ {shape} }}{extra} }}')


# -- Reshape -----------------------------------------------------------------------

RPN_SPEC = reshape_spec([0, 2, -1, 0])


def test_reshape_rpn_scores_layout():
    # py-faster-rcnn's rpn_cls_score_reshape: (1, 2A, H, W) -> (1, 2, A*H, W),
    # so that channel k of anchor a at (h, w) lands at [0, k, a*H + h, w].
    A, H, W = 9, 3, 5
    x = rand(1, 2 * A, H, W)
    layer, bottoms, tops = make(RPN_SPEC, [x])
    layer.forward(bottoms, tops)
    assert tops[0].shape == (1, 2, A * H, W)
    y = tops[0].data
    for k in range(2):
        for a in range(A):
            for h in range(H):
                for w in range(W):
                    assert y[0, k, a * H + h, w] == x[0, k * A + a, h, w]


@pytest.mark.parametrize("bottom_shape,dims,axis,num_axes,expected", [
    ((2, 3, 4, 5), [0, -1], None, None, (2, 60)),
    ((2, 3, 4, 5), [0, 0, 0, -1], None, None, (2, 3, 4, 5)),
    ((2, 3, 4, 5), [-1], None, None, (120,)),
    ((2, 6, 4), [2, 3], 1, 1, (2, 2, 3, 4)),           # split one axis
    ((2, 6, 4), [1], 0, 0, (1, 2, 6, 4)),              # insert a leading axis
    ((2, 3), [1], -1, 0, (2, 3, 1)),                   # axis -1: after the last
    ((2, 1, 3), [], 1, 1, (2, 3)),                     # drop a singleton axis
    ((2, 3, 4), [-1], 1, None, (2, 12)),
    ((2, 3, 4), [0, 2, -1], -3, 2, (2, 3, 2, 2)),      # axis -3 = 1; its 0 copies the 3
    ((4,), [2, 2], None, None, (2, 2)),
])
def test_reshape_shapes(bottom_shape, dims, axis, num_axes, expected):
    x = rand(*bottom_shape)
    layer, bottoms, tops = make(reshape_spec(dims, axis, num_axes), [x])
    layer.forward(bottoms, tops)
    assert tops[0].shape == expected
    # Reshape keeps C order: element k of the bottom is element k of the top.
    flat_x, flat_y = list(x.flat), list(tops[0].data.flat)
    assert flat_x == flat_y


def test_reshape_top_is_a_view_of_the_bottom():
    x = rand(1, 18, 2, 3)
    layer, bottoms, tops = make(RPN_SPEC, [x])
    layer.forward(bottoms, tops)
    assert np.shares_memory(tops[0].data, bottoms[0].data)
    bottoms[0].data[0, 9, 1, 2] = 42.0
    assert tops[0].data[0, 1, 1, 2] == 42.0
    # A replaced bottom array is picked up by the next forward.
    bottoms[0].data = rand(1, 18, 2, 3, seed=5)
    layer.forward(bottoms, tops)
    assert np.shares_memory(tops[0].data, bottoms[0].data)
    # The diffs are separate arrays: zeroing the bottom's keeps the top's.
    assert not np.shares_memory(tops[0].diff, bottoms[0].diff)


def test_reshape_backward_passes_the_diff_reshaped():
    x = rand(1, 18, 2, 3)
    layer, bottoms, tops = make(RPN_SPEC, [x])
    layer.forward(bottoms, tops)
    g = rand(*tops[0].shape, seed=1)
    tops[0].diff[...] = g
    layer.backward(tops, [True], bottoms)
    for k in range(2):
        for a in range(9):
            for h in range(2):
                for w in range(3):
                    assert bottoms[0].diff[0, k * 9 + a, h, w] == g[0, k, a * 2 + h, w]
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


def test_reshape_follows_a_new_bottom_shape():
    layer, bottoms, tops = make(RPN_SPEC, [rand(1, 18, 2, 3)])
    bottoms[0].reshape((1, 18, 4, 5))
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    assert tops[0].shape == (1, 2, 36, 5) and tops[0].diff.shape == (1, 2, 36, 5)


@pytest.mark.parametrize("spec,shape", [
    (RPN_SPEC, (1, 18, 3, 4)),
    (RPN_SPEC, (2, 4, 1, 1)),
    (reshape_spec([2, 3], 1, 1), (2, 6, 2)),
    (reshape_spec([-1]), (3, 2, 2)),
])
def test_reshape_gradient(spec, shape):
    result = check_layer(spec, [rand(*shape)])
    assert result.passed and result.checked > 0, result.report()


@pytest.mark.gpu
def test_reshape_gpu_matches_cpu():
    compare_devices(RPN_SPEC, [rand(1, 18, 3, 4)])


@pytest.mark.parametrize("spec,shape,error,message", [
    (reshape_spec([-1, 2, -1]), (2, 3, 4), NetDefinitionError,
     "reshape_param shape (-1, 2, -1) has more than one -1"),
    (reshape_spec([2, -2]), (2, 3, 4), NetDefinitionError,
     "reshape_param shape (2, -2) has a dim below -1"),
    (reshape_spec([2], 0, -2), (2, 3, 4), NetDefinitionError,
     "reshape_param num_axes must be >= 0, or -1 for all, found -2"),
    (reshape_spec([0, 0, 0, 0]), (2, 3, 4), ShapeError,
     "layer 'rs' (type Reshape): bottom 'x' expected an axis 3 to copy for the 0 at "
     "position 3 of the requested shape (0, 0, 0, 0) (reshape_param axis 0, num_axes -1), "
     "found shape (2, 3, 4)"),
    (reshape_spec([0, 5, -1]), (2, 3, 4), ShapeError,
     "bottom 'x' expected a count divisible by 10, the product of the known dims of the "
     "requested shape (0, 5, -1) (reshape_param axis 0, num_axes -1); its count is 24, "
     "found shape (2, 3, 4)"),
    (reshape_spec([5, 5]), (2, 3, 4), ShapeError,
     "bottom 'x' expected 25 elements to fit the requested shape (5, 5) (reshape_param "
     "axis 0, num_axes -1), which makes (5, 5); its count is 24, found shape (2, 3, 4)"),
    (reshape_spec([1], 4), (2, 3, 4), ShapeError,
     "bottom 'x' expected reshape_param axis 4 to lie in [-4, 3] for a 3-D blob"),
    (reshape_spec([1], -5), (2, 3, 4), ShapeError,
     "bottom 'x' expected reshape_param axis -5 to lie in [-4, 3] for a 3-D blob"),
    (reshape_spec([1], 2, 2), (2, 3, 4), ShapeError,
     "bottom 'x' expected axis + num_axes = 4 to be at most its 3 axes"),
])
def test_reshape_errors(spec, shape, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make(spec, [rand(*shape)])


def test_reshape_refuses_in_place():
    spec = 'name: "rs" type: "Reshape" bottom: "x" top: "x" reshape_param { shape { dim: -1 } }'
    with pytest.raises(NetDefinitionError,
                       match=re.escape("layer 'rs' (type Reshape): top 'x' is also a bottom; "
                                       "this layer does not work in place")):
        make(spec, [rand(2, 3)])


# -- Flatten -----------------------------------------------------------------------

def flatten_spec(axis=None, end_axis=None):
    fields = "" if axis is None else f"axis: {axis} "
    fields += "" if end_axis is None else f"end_axis: {end_axis}"
    return f'name: "fl" type: "Flatten" bottom: "x" top: "y" flatten_param {{ {fields} }}'


@pytest.mark.parametrize("axis,end_axis,shape,expected", [
    (None, None, (2, 3, 4, 5), (2, 60)),
    (2, None, (2, 3, 4, 5), (2, 3, 20)),
    (None, -2, (2, 3, 4, 5), (2, 12, 5)),
    (-3, -2, (2, 3, 4, 5), (2, 12, 5)),
    (0, 0, (2, 3, 4, 5), (2, 3, 4, 5)),
    (0, -1, (2, 3, 4, 5), (120,)),
    (None, None, (2, 3), (2, 3)),
    (None, None, (4, 1, 1, 1), (4, 1)),
])
def test_flatten_shapes(axis, end_axis, shape, expected):
    x = rand(*shape)
    layer, bottoms, tops = make(flatten_spec(axis, end_axis), [x])
    layer.forward(bottoms, tops)
    assert tops[0].shape == expected
    assert list(x.flat) == list(tops[0].data.flat)
    assert np.shares_memory(tops[0].data, bottoms[0].data)


def test_flatten_values_against_loops():
    x = rand(2, 3, 4, 5)
    layer, bottoms, tops = make(flatten_spec(), [x])
    layer.forward(bottoms, tops)
    for n in range(2):
        for c in range(3):
            for h in range(4):
                for w in range(5):
                    assert tops[0].data[n, (c * 4 + h) * 5 + w] == x[n, c, h, w]


@pytest.mark.parametrize("axis,end_axis,shape", [
    (None, None, (2, 3, 2, 2)), (2, -1, (2, 3, 2, 2)), (0, 1, (3, 2, 2))])
def test_flatten_gradient(axis, end_axis, shape):
    result = check_layer(flatten_spec(axis, end_axis), [rand(*shape)])
    assert result.passed and result.checked > 0, result.report()


@pytest.mark.gpu
def test_flatten_gpu_matches_cpu():
    compare_devices(flatten_spec(), [rand(2, 3, 2, 2)])


@pytest.mark.parametrize("axis,end_axis,message", [
    (4, None, "layer 'fl' (type Flatten): bottom 'x' expected flatten_param axis 4 to lie "
              "in [-4, 4) for a 4-D blob, found shape (2, 3, 4, 5)"),
    (None, -5, "bottom 'x' expected flatten_param end_axis -5 to lie in [-4, 4) for a 4-D blob"),
    (2, 1, "bottom 'x' expected flatten_param end_axis 1 (axis 1) not before axis 2 (axis 2), "
           "found shape (2, 3, 4, 5)"),
])
def test_flatten_errors(axis, end_axis, message):
    with pytest.raises(ShapeError, match=re.escape(message)):
        make(flatten_spec(axis, end_axis), [rand(2, 3, 4, 5)])


def test_flatten_refuses_in_place():
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'fl' (type Flatten): top 'x' is also a bottom")):
        make('name: "fl" type: "Flatten" bottom: "x" top: "x"', [rand(2, 3)])


# -- Split ---------------------------------------------------------------------------

SPLIT3 = 'name: "sp" type: "Split" bottom: "x" top: "a" top: "b" top: "c"'


def test_split_copies_into_independent_tops():
    x = rand(2, 3, 4)
    layer, bottoms, tops = make(SPLIT3, [x])
    layer.forward(bottoms, tops)
    for top in tops:
        assert top.shape == x.shape
        assert np.array_equal(top.data, x)
        assert not np.shares_memory(top.data, bottoms[0].data)
    # An in-place layer on one top must not change the others or the bottom.
    tops[0].data[...] = 0
    assert np.array_equal(tops[1].data, x) and np.array_equal(bottoms[0].data, x)


def test_split_backward_sums_top_diffs():
    layer, bottoms, tops = make(SPLIT3, [rand(2, 3)])
    layer.forward(bottoms, tops)
    diffs = [rand(2, 3, seed=s) for s in (1, 2, 3)]
    for top, d in zip(tops, diffs):
        top.diff[...] = d
    bottoms[0].diff[...] = 100.0       # overwritten, not accumulated
    layer.backward(tops, [True], bottoms)
    for i in range(2):
        for j in range(3):
            assert bottoms[0].diff[i, j] == pytest.approx(diffs[0][i, j] + diffs[1][i, j] + diffs[2][i, j])
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


@pytest.mark.parametrize("spec", [
    SPLIT3, 'name: "sp" type: "Split" bottom: "x" top: "a"',
    'name: "sp" type: "Split" bottom: "x" top: "a" top: "b"'])
def test_split_gradient(spec):
    result = check_layer(spec, [rand(2, 3, 2)])
    assert result.passed and result.checked > 0, result.report()


@pytest.mark.gpu
def test_split_gpu_matches_cpu():
    compare_devices(SPLIT3, [rand(2, 3, 2)])


def test_split_refuses_in_place():
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'sp' (type Split): top 'x' is also a bottom")):
        make('name: "sp" type: "Split" bottom: "x" top: "a" top: "x"', [rand(2)])


def test_split_needs_a_top():
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'sp' (type Split): needs at least 1 top blob(s), found 0")):
        make('name: "sp" type: "Split" bottom: "x"', [rand(2)], num_tops=0)


# -- Silence -------------------------------------------------------------------------

SILENCE = 'name: "si" type: "Silence" bottom: "a" bottom: "b"'


def test_silence_forward_leaves_bottoms_and_backward_zeroes_diffs():
    a, b = rand(2, 3), rand(4, seed=1)
    layer, bottoms, tops = make(SILENCE, [a, b], num_tops=0)
    assert tops == []
    layer.forward(bottoms, tops)
    assert np.array_equal(bottoms[0].data, a) and np.array_equal(bottoms[1].data, b)
    bottoms[0].diff[...] = 3.0
    bottoms[1].diff[...] = 4.0
    layer.backward(tops, [True, False], bottoms)
    assert np.all(bottoms[0].diff == 0) and np.all(bottoms[1].diff == 4.0)


def test_silence_gradient_is_zero():
    result = check_layer(SILENCE, [rand(2, 3), rand(4)], num_tops=0)
    assert result.passed and result.checked > 0, result.report()


@pytest.mark.gpu
def test_silence_gpu_matches_cpu():
    compare_devices(SILENCE, [rand(2, 3), rand(4)], num_tops=0)


def test_silence_errors():
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'si' (type Silence): needs exactly 0 top blob(s), found 1")):
        make('name: "si" type: "Silence" bottom: "a" top: "t"', [rand(2)])
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'si' (type Silence): needs at least 1 bottom blob(s), found 0")):
        make('name: "si" type: "Silence"', [], num_tops=0)


# -- Crop ------------------------------------------------------------------------------

def crop_spec(fields=""):
    return f'name: "cr" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param {{ {fields} }}'


def crop_reference(a, top_shape, offsets):
    out = np.full(top_shape, np.nan)
    for idx in np.ndindex(*top_shape):
        out[idx] = a[tuple(i + o for i, o in zip(idx, offsets))]
    return out


CROP_CASES = [
    ("offset: 1 offset: 2", (1, 2, 7, 8), (1, 5, 4, 5), (1, 2, 4, 5), (0, 0, 1, 2)),
    ("", (1, 2, 7, 8), (3, 3, 4, 5), (1, 2, 4, 5), (0, 0, 0, 0)),
    ("axis: 1 offset: 1", (2, 4, 5), (2, 2, 3), (2, 2, 3), (0, 1, 1)),
    ("axis: -1 offset: 3", (2, 3, 6), (9, 9, 2), (2, 3, 2), (0, 0, 3)),
    ("axis: 0 offset: 1 offset: 0", (3, 4), (2, 4), (2, 4), (1, 0)),
    ("offset: 0", (1, 1, 3, 3), (1, 1, 3, 3), (1, 1, 3, 3), (0, 0, 0, 0)),
]


@pytest.mark.parametrize("fields,a_shape,b_shape,top_shape,offsets", CROP_CASES)
def test_crop_forward(fields, a_shape, b_shape, top_shape, offsets):
    a, b = rand(*a_shape), rand(*b_shape, seed=1)
    layer, bottoms, tops = make(crop_spec(fields), [a, b])
    layer.forward(bottoms, tops)
    assert tops[0].shape == top_shape
    assert np.array_equal(tops[0].data, crop_reference(a, top_shape, offsets))


@pytest.mark.parametrize("fields,a_shape,b_shape,top_shape,offsets", CROP_CASES)
def test_crop_gradient(fields, a_shape, b_shape, top_shape, offsets):
    result = check_layer(crop_spec(fields), [rand(*a_shape), rand(*b_shape, seed=1)])
    assert result.passed and result.checked > 0, result.report()


def test_crop_backward_zero_outside_and_never_into_the_reference():
    layer, bottoms, tops = make(crop_spec("offset: 1"), [rand(1, 1, 4, 4), rand(1, 1, 2, 2)])
    assert not layer.allow_force_backward(1)
    layer.forward(bottoms, tops)
    tops[0].diff[...] = [[[[1.0, 2.0], [3.0, 4.0]]]]
    bottoms[0].diff[...] = 9.0
    bottoms[1].diff[...] = 5.0
    layer.backward(tops, [True, True], bottoms)
    expected = np.zeros((4, 4))
    expected[1:3, 1:3] = [[1.0, 2.0], [3.0, 4.0]]
    assert np.array_equal(bottoms[0].diff[0, 0], expected)
    assert np.all(bottoms[1].diff == 5.0)


@pytest.mark.gpu
def test_crop_gpu_matches_cpu():
    compare_devices(crop_spec("offset: 1 offset: 2"), [rand(1, 2, 7, 8), rand(1, 5, 4, 5)],
                    propagate=[True, False])


@pytest.mark.parametrize("fields,a_shape,b_shape,error,message", [
    ("offset: 1 offset: 2 offset: 3", (1, 2, 7, 8), (1, 2, 4, 5), NetDefinitionError,
     "layer 'cr' (type Crop): crop_param gives 3 offsets [1, 2, 3]; expected none, one, or one "
     "per cropped axis (2: axes 2..3 of bottom 'a' (1, 2, 7, 8))"),
    ("offset: 4", (1, 2, 7, 8), (1, 2, 4, 5), ShapeError,
     "layer 'cr' (type Crop): bottom 'a' expected room along axis 2 for a crop of size 4 (from "
     "bottom 'b' (1, 2, 4, 5)) at offset 4, found shape (1, 2, 7, 8)"),
    ("", (1, 2, 7, 8), (1, 2, 4, 9), ShapeError,
     "bottom 'a' expected room along axis 3 for a crop of size 9"),
    ("", (1, 2, 7, 8), (1, 4, 5), ShapeError,
     "layer 'cr' (type Crop): bottom 'b' expected as many axes as bottom 'a' (1, 2, 7, 8), "
     "found shape (1, 4, 5)"),
    ("axis: 4", (1, 2, 7, 8), (1, 2, 4, 5), ShapeError,
     "bottom 'a' expected crop_param axis 4 to lie in [-4, 4) for a 4-D blob"),
])
def test_crop_errors(fields, a_shape, b_shape, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make(crop_spec(fields), [rand(*a_shape), rand(*b_shape)])


@pytest.mark.parametrize("kind", [ReshapeLayer, FlattenLayer, SplitLayer, SilenceLayer, CropLayer])
def test_gpu_path_is_the_cpu_code(kind):
    assert kind.forward_gpu is kind.forward_cpu and kind.backward_gpu is kind.backward_cpu
