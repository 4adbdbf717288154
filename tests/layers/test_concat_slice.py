"""Concat and Slice: forward against plain loop references, float64
gradient checks, the GPU path on a GPU, every error. Their GPU path is their
CPU code (xp slicing), so there is no host-run test: it would compare that
code with itself."""
import re

import numpy as np
import pytest

from layers.concat_slice import ConcatLayer, SliceLayer
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import check_layer
from tests.kernel_harness import compare_devices
from tests.layer_checks import make, rand


def concat_reference(arrays, axis):
    """Element by element: bottom k's element idx goes to idx shifted by the
    sizes of bottoms 0..k-1 along ``axis``."""
    shape = list(arrays[0].shape)
    shape[axis] = sum(a.shape[axis] for a in arrays)
    out = np.full(shape, np.nan)
    offset = 0
    for a in arrays:
        for idx in np.ndindex(*a.shape):
            target = list(idx)
            target[axis] += offset
            out[tuple(target)] = a[idx]
        offset += a.shape[axis]
    return out


def slice_reference(x, axis, sizes):
    """Element by element: top k holds the elements whose index along
    ``axis`` lies in [start_k, start_k + sizes[k])."""
    outs, start = [], 0
    for size in sizes:
        shape = list(x.shape)
        shape[axis] = size
        out = np.full(shape, np.nan)
        for idx in np.ndindex(*shape):
            source = list(idx)
            source[axis] += start
            out[idx] = x[tuple(source)]
        outs.append(out)
        start += size
    return outs


def concat_spec(n, fields=""):
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(n))
    return f'name: "cat" type: "Concat" {bottoms} top: "y" concat_param {{ {fields} }}'


def slice_spec(n, fields=""):
    tops = " ".join(f'top: "t{i}"' for i in range(n))
    return f'name: "sl" type: "Slice" bottom: "x" {tops} slice_param {{ {fields} }}'


# -- Concat --------------------------------------------------------------------------

CONCAT_CASES = [
    ("", 1, [(2, 3, 2, 2), (2, 1, 2, 2), (2, 4, 2, 2)]),
    ("axis: 0", 0, [(1, 3, 2), (3, 3, 2)]),
    ("axis: -1", 2, [(2, 3, 1), (2, 3, 4)]),
    ("axis: -4", 0, [(1, 2, 2, 2), (2, 2, 2, 2)]),
    ("concat_dim: 2", 2, [(2, 2, 3), (2, 2, 1)]),
    ("concat_dim: 0", 0, [(2,), (5,)]),
    ("", 1, [(2, 3, 2)]),                         # a single bottom
]


@pytest.mark.parametrize("fields,axis,shapes", CONCAT_CASES)
def test_concat_forward(fields, axis, shapes):
    arrays = [rand(*s, seed=k) for k, s in enumerate(shapes)]
    layer, bottoms, tops = make(concat_spec(len(shapes), fields), arrays)
    layer.forward(bottoms, tops)
    assert np.array_equal(tops[0].data, concat_reference(arrays, axis))
    assert not any(np.shares_memory(tops[0].data, b.data) for b in bottoms)


@pytest.mark.parametrize("fields,axis,shapes", CONCAT_CASES)
def test_concat_gradient(fields, axis, shapes):
    arrays = [rand(*s, seed=k) for k, s in enumerate(shapes)]
    result = check_layer(concat_spec(len(shapes), fields), arrays)
    assert result.passed and result.checked > 0, result.report()


def test_concat_backward_respects_propagate_down():
    arrays = [rand(2, 2), rand(2, 3, seed=1), rand(2, 1, seed=2)]
    layer, bottoms, tops = make(concat_spec(3), arrays)
    layer.forward(bottoms, tops)
    g = rand(2, 6, seed=3)
    tops[0].diff[...] = g
    bottoms[1].diff[...] = 9.0
    layer.backward(tops, [True, False, True], bottoms)
    assert np.array_equal(bottoms[0].diff, g[:, 0:2])
    assert np.all(bottoms[1].diff == 9.0)
    assert np.array_equal(bottoms[2].diff, g[:, 5:6])


def test_concat_follows_new_bottom_shapes():
    layer, bottoms, tops = make(concat_spec(2), [rand(1, 2, 3), rand(1, 1, 3)])
    bottoms[0].reshape((2, 4, 5))
    bottoms[1].reshape((2, 2, 5))
    layer.reshape(bottoms, tops)
    assert tops[0].shape == (2, 6, 5)


def test_concat_gpu_path_is_its_cpu_code():
    assert ConcatLayer.forward_gpu is ConcatLayer.forward_cpu
    assert ConcatLayer.backward_gpu is ConcatLayer.backward_cpu


@pytest.mark.gpu
@pytest.mark.parametrize("fields,axis,shapes", CONCAT_CASES)
def test_concat_gpu_matches_cpu(fields, axis, shapes):
    compare_devices(concat_spec(len(shapes), fields),
                    [rand(*s, seed=k) for k, s in enumerate(shapes)])


@pytest.mark.parametrize("fields,shapes,error,message", [
    ("axis: 1 concat_dim: 1", [(2, 3), (2, 3)], NetDefinitionError,
     "layer 'cat' (type Concat): concat_param gives both axis and concat_dim; give one of them"),
    ("", [(2, 3, 4), (2, 3, 5)], ShapeError,
     "layer 'cat' (type Concat): bottom 'b1' expected the shape of bottom 'b0' (2, 3, 4) "
     "except along the concat axis 1, found shape (2, 3, 5)"),
    ("axis: 0", [(2, 3), (2, 3), (1, 4)], ShapeError,
     "bottom 'b2' expected the shape of bottom 'b0' (2, 3) except along the concat axis 0, "
     "found shape (1, 4)"),
    ("", [(2, 3, 4), (2, 3)], ShapeError,
     "bottom 'b1' expected the shape of bottom 'b0' (2, 3, 4) except along the concat axis 1, "
     "found shape (2, 3)"),
    ("axis: 3", [(2, 3, 4), (2, 3, 4)], ShapeError,
     "bottom 'b0' expected axis 3 to lie in [-3, 3) for a 3-D blob, found shape (2, 3, 4)"),
    ("axis: -4", [(2, 3, 4), (2, 3, 4)], ShapeError,
     "bottom 'b0' expected axis -4 to lie in [-3, 3) for a 3-D blob"),
    ("concat_dim: 3", [(2, 3, 4), (2, 3, 4)], ShapeError,
     "bottom 'b0' expected concat_dim 3 to be below its number of axes 3, found shape (2, 3, 4)"),
])
def test_concat_errors(fields, shapes, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make(concat_spec(len(shapes), fields), [rand(*s) for s in shapes])


# -- Slice ---------------------------------------------------------------------------

SLICE_CASES = [
    ("slice_point: 1 slice_point: 3", 3, 1, (2, 5, 2), [1, 2, 2]),
    ("", 3, 1, (2, 6, 2), [2, 2, 2]),                          # equal parts
    ("axis: 0 slice_point: 2", 2, 0, (3, 2), [2, 1]),
    ("axis: -1", 2, 2, (2, 1, 4), [2, 2]),
    ("slice_dim: 2 slice_point: 1", 2, 2, (2, 2, 3), [1, 2]),
    ("", 1, 1, (2, 3), [3]),                                   # a single top
    ("axis: 0", 4, 0, (4,), [1, 1, 1, 1]),
]


@pytest.mark.parametrize("fields,n,axis,shape,sizes", SLICE_CASES)
def test_slice_forward(fields, n, axis, shape, sizes):
    x = rand(*shape)
    layer, bottoms, tops = make(slice_spec(n, fields), [x])
    layer.forward(bottoms, tops)
    for top, expected in zip(tops, slice_reference(x, axis, sizes)):
        assert np.array_equal(top.data, expected)
        assert not np.shares_memory(top.data, bottoms[0].data)


@pytest.mark.parametrize("fields,n,axis,shape,sizes", SLICE_CASES)
def test_slice_gradient(fields, n, axis, shape, sizes):
    result = check_layer(slice_spec(n, fields), [rand(*shape)])
    assert result.passed and result.checked > 0, result.report()


def test_slice_then_concat_is_identity():
    x = rand(2, 7, 3)
    sl, s_bottoms, s_tops = make(slice_spec(3, "slice_point: 2 slice_point: 3"), [x])
    sl.forward(s_bottoms, s_tops)
    cat, c_bottoms, c_tops = make(concat_spec(3), [t.data for t in s_tops])
    cat.forward(c_bottoms, c_tops)
    assert np.array_equal(c_tops[0].data, x)


def test_slice_backward_overwrites_and_respects_propagate_down():
    layer, bottoms, tops = make(slice_spec(2, "slice_point: 1"), [rand(2, 3)])
    layer.forward(bottoms, tops)
    g0, g1 = rand(2, 1, seed=1), rand(2, 2, seed=2)
    tops[0].diff[...] = g0
    tops[1].diff[...] = g1
    bottoms[0].diff[...] = 5.0
    layer.backward(tops, [True], bottoms)
    assert np.array_equal(bottoms[0].diff, concat_reference([g0, g1], 1))
    bottoms[0].diff[...] = 5.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 5.0)


def test_slice_gpu_path_is_its_cpu_code():
    assert SliceLayer.forward_gpu is SliceLayer.forward_cpu
    assert SliceLayer.backward_gpu is SliceLayer.backward_cpu


@pytest.mark.gpu
@pytest.mark.parametrize("fields,n,axis,shape,sizes", SLICE_CASES)
def test_slice_gpu_matches_cpu(fields, n, axis, shape, sizes):
    compare_devices(slice_spec(n, fields), [rand(*shape)])


@pytest.mark.parametrize("n,fields,shape,error,message", [
    (2, "axis: 1 slice_dim: 1", (2, 4), NetDefinitionError,
     "layer 'sl' (type Slice): slice_param gives both axis and slice_dim; give one of them"),
    (3, "slice_point: 1", (2, 4), NetDefinitionError,
     "layer 'sl' (type Slice): slice_param gives 1 slice_point(s) [1] for 3 tops; expected 2 "
     "(one fewer than the tops)"),
    (3, "slice_point: 2 slice_point: 2", (2, 4), NetDefinitionError,
     "layer 'sl' (type Slice): slice_param slice_point [2, 2] must be positive and strictly "
     "increasing"),
    (3, "slice_point: 3 slice_point: 1", (2, 4), NetDefinitionError,
     "slice_param slice_point [3, 1] must be positive and strictly increasing"),
    (2, "slice_point: 0", (2, 4), NetDefinitionError,
     "slice_param slice_point [0] must be positive and strictly increasing"),
    (3, "slice_point: 1 slice_point: 4", (2, 4), ShapeError,
     "layer 'sl' (type Slice): bottom 'x' expected slice_point [1, 4] to lie inside its axis 1 "
     "of length 4 (every top non-empty), found shape (2, 4)"),
    (3, "", (2, 4), ShapeError,
     "layer 'sl' (type Slice): bottom 'x' expected axis 1 divisible into 3 equal parts (one per "
     "top; no slice_point given), found shape (2, 4)"),
    (2, "axis: 2", (2, 4), ShapeError,
     "bottom 'x' expected axis 2 to lie in [-2, 2) for a 2-D blob, found shape (2, 4)"),
    (2, "slice_dim: 2", (2, 4), ShapeError,
     "bottom 'x' expected slice_dim 2 to be below its number of axes 2, found shape (2, 4)"),
])
def test_slice_errors(n, fields, shape, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make(slice_spec(n, fields), [rand(*shape)])
