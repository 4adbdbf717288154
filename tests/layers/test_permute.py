"""Permute (Caffe-SSD): forward against a plain element-by-element
reference, backward as the inverse permutation, unlisted axes kept in
order, float64 gradient check, the GPU path host-run and on a GPU, errors."""
import itertools

import numpy as np
import pytest

from netdef.blob import Blob
from netdef.errors import NetDefinitionError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.fake_device import fake_gpus
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host


def spec(order):
    fields = " ".join(f"order: {a}" for a in order)
    return f'name: "perm" type: "Permute" bottom: "x" top: "y" permute_param {{ {fields} }}'


def reference(x, order):
    """y[i_order[0], i_order[1], ...] = x[i_0, i_1, ...], element by element."""
    full = list(order) + [a for a in range(x.ndim) if a not in order]
    y = np.empty(tuple(x.shape[a] for a in full))
    for index in itertools.product(*(range(d) for d in x.shape)):
        y[tuple(index[a] for a in full)] = x[index]
    return y


CASES = [((2, 3, 4, 5), (0, 2, 3, 1)),   # SSD's NCHW -> NHWC
         ((2, 3, 4, 5), (3, 1)),         # unlisted axes follow in order: 3, 1, 0, 2
         ((2, 3, 4), ()),                # no order: identity
         ((1, 2, 3, 4), (1, 0, 2, 3))]


@pytest.mark.parametrize("shape,order", CASES)
def test_forward_and_backward_match_reference(shape, order):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    layer = build_layer(spec(order))
    bottoms, tops = setup_layer(layer, [x])
    layer.forward(bottoms, tops)
    expected = reference(x, order)
    assert tops[0].shape == expected.shape
    np.testing.assert_array_equal(tops[0].data, expected)
    dy = rng.standard_normal(expected.shape)
    tops[0].diff[...] = dy
    layer.backward(tops, [True], bottoms)
    # Backward routes every diff back to where its value came from.
    full = list(order) + [a for a in range(x.ndim) if a not in order]
    for index in itertools.product(*(range(d) for d in shape)):
        assert bottoms[0].diff[index] == dy[tuple(index[a] for a in full)]


def test_ssd_layout_is_channels_last():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2)
    layer = build_layer(spec((0, 2, 3, 1)))
    bottoms, tops = setup_layer(layer, [x])
    layer.forward(bottoms, tops)
    assert tops[0].shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(tops[0].data[1, 0, 1], x[1, :, 0, 1])


def test_propagate_down_false_leaves_bottom_diff():
    layer = build_layer(spec((0, 2, 3, 1)))
    bottoms, tops = setup_layer(layer, [np.ones((1, 2, 3, 4))])
    layer.forward(bottoms, tops)
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


@pytest.mark.parametrize("shape,order", CASES)
def test_gradient(shape, order):
    x = np.random.default_rng(2).standard_normal(shape)
    result = check_layer(spec(order), [x])
    assert result.passed, result.report()


# The kernel's index arithmetic for other axis counts than SSD's four.
HOST_CASES = CASES + [((3, 4), (1, 0)), ((2, 1, 3, 2, 4), (4, 0, 3)), ((5,), ())]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,order", HOST_CASES)
def test_gpu_path_on_host(shape, order, dtype):
    run_gpu_path_on_host(spec(order), [np.random.default_rng(1).standard_normal(shape)],
                         dtype=dtype)


@pytest.mark.parametrize("shape,order", HOST_CASES)
def test_gpu_path_on_host_matches_reference(shape, order):
    # Not only equal to the NumPy path: equal to the element-by-element
    # reference, forward and backward.
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    layer = build_layer(spec(order))
    bottoms, tops = setup_layer(layer, [x])
    layer.forward_gpu(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, reference(x, order))
    dy = rng.standard_normal(tops[0].shape)
    tops[0].diff[...] = dy
    layer.backward_gpu(tops, [True], bottoms)
    full = list(order) + [a for a in range(x.ndim) if a not in order]
    np.testing.assert_array_equal(bottoms[0].diff, np.transpose(dy, np.argsort(full)))


def test_gpu_path_on_host_follows_a_new_shape():
    # The kernel's index arrays are rebuilt when the bottom changes shape.
    layer = build_layer(spec((0, 2, 3, 1)))
    bottoms, tops = setup_layer(layer, [np.ones((1, 2, 3, 4))])
    x = np.random.default_rng(4).standard_normal((2, 3, 5, 2))
    bottoms[0].reshape(x.shape)
    bottoms[0].data[...] = x
    layer.reshape(bottoms, tops)
    layer.forward_gpu(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, reference(x, (0, 2, 3, 1)))


@requires_cxx
@pytest.mark.parametrize("shape,order", HOST_CASES)
def test_layer_on_a_stand_in_gpu_launches_the_kernels(shape, order):
    # The layer's own dispatch on CuPy's stand-in (tests/fake_device.py, its
    # kernels the host build): the index arrays live on the device, the
    # launcher's GPU-side argument checks pass, one launch each way.
    x = np.random.default_rng(5).standard_normal(shape)
    with fake_gpus(1) as fake:
        compare_devices(spec(order), [x], dtype=np.float32, rtol=0, atol=0)
    assert fake.launches[0] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,order", HOST_CASES + [((8, 512, 38, 38), (0, 2, 3, 1))])
def test_gpu_matches_cpu(shape, order, dtype):
    compare_devices(spec(order), [np.random.default_rng(1).standard_normal(shape)], dtype=dtype)


def test_axis_out_of_range_is_refused():
    with pytest.raises(NetDefinitionError, match=r"layer 'perm'.*order \[0, 4\] names axis 4, "
                                                 r"but bottom 'x' has 4 axes"):
        setup_layer(build_layer(spec((0, 4))), [np.ones((1, 2, 3, 4))])


def test_repeated_axis_is_refused():
    with pytest.raises(NetDefinitionError, match=r"layer 'perm'.*order \[0, 1, 1\] repeats"):
        setup_layer(build_layer(spec((0, 1, 1))), [np.ones((1, 2, 3, 4))])


def test_in_place_is_refused():
    layer = build_layer('name: "perm" type: "Permute" bottom: "x" top: "x"')
    blob = Blob.from_array(np.ones((1, 2, 3, 3)))
    with pytest.raises(NetDefinitionError, match="layer 'perm'.*Permute does not work in place"):
        layer.setup([blob], [blob])
