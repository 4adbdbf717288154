"""Tile: forward and backward (the copies' diffs summed) against plain
per-element references over axes and tile counts, float64 gradient checks,
the backward kernel host-run and on a GPU, and the errors."""
import re

import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import check_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import make, rand


def spec(tiles=None, axis=None):
    fields = "".join(f" {name}: {value}" for name, value in (("axis", axis), ("tiles", tiles))
                     if value is not None)
    return f'name: "t" type: "Tile" bottom: "x" top: "y" tile_param {{{fields} }}'


def source_of(index, axis, size):
    """The bottom element that top element ``index`` copies."""
    return index[:axis] + (index[axis] % size,) + index[axis + 1:]


def reference(x, tiles, axis, dy):
    """Top and bottom diff by loops over the top's elements."""
    axis %= x.ndim
    shape = list(x.shape)
    shape[axis] *= tiles
    top, dx = np.zeros(shape), np.zeros(x.shape)
    for index in np.ndindex(*shape):
        source = source_of(index, axis, x.shape[axis])
        top[index] = x[source]
        dx[source] += dy[index]
    return top, dx


CASES = [((2, 3, 4), 3, 1), ((2, 3, 4), 2, 0), ((2, 3, 4), 4, 2), ((2, 3, 4), 2, -1),
         ((2, 3, 4), 1, 1), ((5,), 3, 0), ((2, 0, 3), 2, 1), ((1, 2, 1, 3), 5, 2)]


@pytest.mark.parametrize("shape,tiles,axis", CASES)
def test_forward_backward_match_reference(shape, tiles, axis):
    x = rand(*shape)
    layer, bottoms, tops = make(spec(tiles, axis), [x])
    layer.forward(bottoms, tops)
    dy = rand(*tops[0].shape, seed=1)
    tops[0].diff[...] = dy
    bottoms[0].diff[...] = 7.0  # overwritten, not added to
    layer.backward(tops, [True], bottoms)
    top, dx = reference(x, tiles, axis, dy)
    np.testing.assert_array_equal(tops[0].data, top)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-14, atol=0)


def test_default_axis_is_one():
    layer, bottoms, tops = make(spec(2), [rand(2, 3, 4)])
    assert tops[0].shape == (2, 6, 4)


def test_propagate_down_false_leaves_bottom_diff():
    layer, bottoms, tops = make(spec(2), [rand(2, 3)])
    layer.forward(bottoms, tops)
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


@pytest.mark.parametrize("shape,tiles,axis", CASES[:6])
def test_gradient(shape, tiles, axis):
    result = check_layer(spec(tiles, axis), [rand(*shape, seed=2)])
    assert result.passed, result.report()


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,tiles,axis", CASES)
def test_gpu_path_on_host(shape, tiles, axis, dtype):
    run_gpu_path_on_host(spec(tiles, axis), [rand(*shape, seed=3)], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,tiles,axis", [((4, 5, 6, 7), 3, 1), ((4, 5, 6, 7), 2, -1),
                                              ((3, 8), 6, 0)])
def test_gpu_matches_cpu(shape, tiles, axis, dtype):
    compare_devices(spec(tiles, axis), [rand(*shape, seed=4)], dtype=dtype)


@pytest.mark.parametrize("text,error,message", [
    (spec(), NetDefinitionError, "layer 't' (type Tile): tile_param.tiles must be given"),
    (spec(0), NetDefinitionError, "layer 't' (type Tile): tile_param.tiles must be >= 1, found 0"),
    (spec(-2), NetDefinitionError,
     "layer 't' (type Tile): tile_param.tiles must be >= 1, found -2"),
    (spec(2, 3), ShapeError,
     "layer 't' (type Tile): bottom 'x' expected tile_param.axis 3 to lie in [-3, 3) for a "
     "3-D blob, found shape (2, 3, 4)"),
])
def test_errors(text, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make(text, [rand(2, 3, 4)])
