"""Filter and BatchReindex: forward and backward against plain per-item
loops (Filter: tops resized to the selected count on each forward, diffs of
unselected items zero; BatchReindex: repeated indices add up, fractional
ones truncated), float64 gradient checks, BatchReindex's backward kernel
host-run, both on a GPU, and each error (shapes, indices out of range, a
gradient asked for the selector or the indices)."""
import re

import numpy as np
import pytest

from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import check_layer
from netdef.net import Net
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import make, rand


# -- Filter ----------------------------------------------------------------------------

def filter_spec(num_data=1):
    bottoms = "".join(f' bottom: "x{i}"' for i in range(num_data))
    tops = "".join(f' top: "y{i}"' for i in range(num_data))
    return f'name: "flt" type: "Filter"{bottoms} bottom: "sel"{tops}'


def filter_reference(data, selector, top_diffs):
    """Tops and bottom diffs by a loop over the items."""
    chosen = [n for n in range(selector.shape[0]) if selector.reshape(-1)[n] != 0]
    tops = [np.array([x[n] for n in chosen]).reshape((len(chosen),) + x.shape[1:]) for x in data]
    diffs = [np.zeros(x.shape) for x in data]
    for diff, dy in zip(diffs, top_diffs):
        for row, n in enumerate(chosen):
            diff[n] = dy[row]
    return tops, diffs


def run_filter(data, selector, seed=1):
    layer, bottoms, tops = make(filter_spec(len(data)), list(data) + [selector])
    layer.forward(bottoms, tops)
    dys = [rand(*t.shape, seed=seed + i) for i, t in enumerate(tops)]
    for top, dy in zip(tops, dys):
        top.diff[...] = dy
    for bottom in bottoms:
        bottom.diff[...] = 7.0  # overwritten (selected) or zeroed (the rest)
    layer.backward(tops, [True] * len(data) + [False], bottoms)
    return layer, bottoms, tops, dys


@pytest.mark.parametrize("selector", [[1, 0, 0, 2, -0.5], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1],
                                      [0, 0, 0, 0, 3]])
@pytest.mark.parametrize("shape", [(5,), (5, 1), (5, 1, 1, 1)])
def test_filter_matches_reference(selector, shape):
    data = [rand(5, 3, 2), rand(5, seed=2), rand(5, 4, seed=3)]
    sel = np.reshape(np.asarray(selector, dtype=np.float64), shape)
    _, bottoms, tops, dys = run_filter(data, sel)
    expected_tops, expected_diffs = filter_reference(data, sel, dys)
    for top, expected in zip(tops, expected_tops):
        assert top.shape == expected.shape
        np.testing.assert_array_equal(top.data, expected)
    for bottom, expected in zip(bottoms, expected_diffs):
        np.testing.assert_array_equal(bottom.diff, expected)
    assert np.all(bottoms[-1].diff == 7.0)


def test_filter_resizes_its_tops_on_each_forward():
    x = rand(4, 3)
    layer, bottoms, tops = make(filter_spec(), [x, np.zeros(4)])
    assert tops[0].shape == (4, 3)  # reshape: room for every item
    for selector, count in (([1, 0, 1, 0], 2), ([0, 0, 0, 0], 0), ([1, 1, 1, 1], 4)):
        bottoms[1].data[...] = selector
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
        np.testing.assert_array_equal(tops[0].data, x[np.flatnonzero(selector)])
        assert tops[0].shape == (count, 3)


def test_filter_selector_takes_no_gradient():
    layer, _, _ = make(filter_spec(2), [rand(3), rand(3), np.ones(3)])
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]


@pytest.mark.parametrize("selector", [[1, 0, 1, 1, 0], [0, 1, 0, 0, 0]])
def test_filter_gradient(selector):
    data = [rand(5, 2, 3, seed=4), rand(5, 2, seed=5)]
    result = check_layer(filter_spec(2), data + [np.asarray(selector, dtype=np.float64)],
                         check_bottoms=[0, 1])
    assert result.passed, result.report()


def test_filter_in_a_net_with_a_changing_selector():
    """Filter then a SUMSQ loss: each pass sees its own selection (the
    loss layer reshaped to it) and only the selected items get 2 x."""
    net = Net('''
        input: "x" input_shape { dim: 4 dim: 3 }
        input: "sel" input_shape { dim: 4 }
        layer { name: "flt" type: "Filter" bottom: "x" bottom: "sel" top: "y"
                propagate_down: true propagate_down: false }
        layer { name: "loss" type: "Reduction" bottom: "y" top: "loss"
                reduction_param { operation: SUMSQ } loss_weight: 1 }
        force_backward: true''', "TRAIN", dtype=np.float64)
    x = rand(4, 3, seed=8)
    for selector in ([1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]):
        mask = np.asarray(selector, dtype=bool)
        out = net.forward(x=x, sel=np.asarray(selector, dtype=np.float64))
        net.backward()
        assert net.blobs["y"].shape == (int(mask.sum()), 3)
        assert float(out["loss"]) == pytest.approx(float(np.sum(x[mask] ** 2)), rel=1e-13)
        np.testing.assert_allclose(net.blobs["x"].diff, 2 * x * mask[:, None], rtol=1e-13)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_filter_gpu_matches_cpu(dtype):
    selector = (np.random.default_rng(6).random(32) < 0.4).astype(np.float64)
    compare_devices(filter_spec(2), [rand(32, 3, 5, 5), rand(32, 7, seed=7), selector],
                    dtype=dtype, propagate=[True, True, False])


@pytest.mark.parametrize("arrays,num_tops,error,message", [
    ([rand(3), np.ones(3)], 2, NetDefinitionError,
     "layer 'flt' (type Filter): needs one top per data bottom (1: every bottom but the "
     "selector, last), found 2 top(s)"),
    ([rand(3, 2), np.ones((3, 2))], 1, ShapeError,
     "layer 'flt' (type Filter): bottom 'sel' expected a selector (N,) or (N, 1, ..., 1), "
     "found shape (3, 2)"),
    ([rand(3, 2), np.ones(())], 1, ShapeError,
     "layer 'flt' (type Filter): bottom 'sel' expected a selector (N,) or (N, 1, ..., 1), "
     "found shape ()"),
    ([rand(4, 2), np.ones(3)], 1, ShapeError,
     "layer 'flt' (type Filter): bottom 'x0' expected 3 items along axis 0, as the selector "
     "'sel' has, found shape (4, 2)"),
])
def test_filter_errors(arrays, num_tops, error, message):
    text = 'name: "flt" type: "Filter" bottom: "x0" bottom: "sel"'
    with pytest.raises(error, match=re.escape(message)):
        make(text, arrays, num_tops=num_tops)


def test_filter_gradient_to_the_selector_is_an_error():
    layer, bottoms, tops = make(filter_spec(), [rand(3), np.ones(3)])
    layer.forward(bottoms, tops)
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'flt' (type Filter): cannot back-propagate to the selector bottom 'sel'; "
            "set propagate_down: false for it")):
        layer.backward(tops, [True, True], bottoms)


# -- BatchReindex ----------------------------------------------------------------------

REINDEX = 'name: "ri" type: "BatchReindex" bottom: "x" bottom: "permut" top: "y"'


def reindex_reference(x, permut, dy):
    """Top and data diff by a loop over the top's items."""
    top = np.zeros((len(permut),) + x.shape[1:])
    dx = np.zeros(x.shape)
    for m, value in enumerate(permut):
        top[m] = x[int(value)]
        dx[int(value)] += dy[m]
    return top, dx


@pytest.mark.parametrize("permut", [[2, 0, 1], [1, 1, 1, 0, 1], [0], [], [2.7, 0.2, 1.9]])
@pytest.mark.parametrize("shape", [(3, 2, 4), (3,), (3, 0)])
def test_reindex_matches_reference(shape, permut):
    x, permut = rand(*shape), np.asarray(permut, dtype=np.float64)
    layer, bottoms, tops = make(REINDEX, [x, permut])
    layer.forward(bottoms, tops)
    dy = rand(*tops[0].shape, seed=1)
    tops[0].diff[...] = dy
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [True, False], bottoms)
    top, dx = reindex_reference(x, permut, dy)
    assert tops[0].shape == (len(permut),) + shape[1:]
    np.testing.assert_array_equal(tops[0].data, top)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-14, atol=0)


def test_reindex_propagate_down_false_leaves_data_diff():
    layer, bottoms, tops = make(REINDEX, [rand(3, 2), np.array([0.0, 2.0])])
    layer.forward(bottoms, tops)
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False, False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)
    assert not layer.allow_force_backward(1)


@pytest.mark.parametrize("permut", [[2, 0, 1], [1, 1, 3, 1, 0]])
def test_reindex_gradient(permut):
    result = check_layer(REINDEX, [rand(4, 2, 3, seed=2), np.asarray(permut, dtype=np.float64)])
    assert result.passed, result.report()


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("permut", [[2, 0, 1, 1, 2, 2], [], [0.5, 3.9]])
def test_reindex_gpu_path_on_host(permut, dtype):
    run_gpu_path_on_host(REINDEX, [rand(4, 3, 2, seed=3), np.asarray(permut, dtype=np.float64)],
                         dtype=dtype, propagate=[True, False])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reindex_gpu_matches_cpu(dtype):
    # Many repeats of few items: the atomicAdd collisions are exercised.
    permut = np.random.default_rng(4).integers(0, 5, 200).astype(np.float64)
    compare_devices(REINDEX, [rand(5, 3, 4, 4, seed=5), permut], dtype=dtype,
                    propagate=[True, False])


@pytest.mark.parametrize("arrays,message", [
    ([rand(3, 2), np.zeros((2, 1))],
     "layer 'ri' (type BatchReindex): bottom 'permut' expected item indices of shape (M,), "
     "found shape (2, 1)"),
    ([rand(), np.zeros(2)],
     "layer 'ri' (type BatchReindex): bottom 'x' expected items along axis 0, found shape ()"),
])
def test_reindex_shape_errors(arrays, message):
    with pytest.raises(ShapeError, match=re.escape(message)):
        make(REINDEX, arrays)


@pytest.mark.parametrize("bad,found", [(3.0, "3"), (-0.5, "-0.5"), (float("nan"), "nan")])
def test_reindex_index_errors(bad, found):
    layer, bottoms, tops = make(REINDEX, [rand(3, 2), np.array([0.0, 1.0, bad])])
    with pytest.raises(DataError, match=re.escape(
            f"layer 'ri' (type BatchReindex): bottom 'permut' expected values in [0, 3), "
            f"found {found} at position (2,)")):
        layer.forward(bottoms, tops)


def test_reindex_gradient_to_the_indices_is_an_error():
    layer, bottoms, tops = make(REINDEX, [rand(3, 2), np.array([0.0, 2.0])])
    layer.forward(bottoms, tops)
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'ri' (type BatchReindex): cannot back-propagate to the permut bottom "
            "'permut'; set propagate_down: false for it")):
        layer.backward(tops, [True, True], bottoms)
