"""Parameter: the blob's shape and zero start, the top equal to the blob,
backward adding the top diff into the blob's diff (and nothing for lr_mult
0), a float64 gradient check, a Net that learns through it (net.params,
loss gradient), the error, and the device path on a GPU (xp code, so there
is no host-run kernel test)."""
import re

import numpy as np
import pytest

from netdef.errors import NetDefinitionError
from netdef.gradcheck import check_layer
from netdef.net import Net
from tests.kernel_harness import compare_devices
from tests.layer_checks import make, rand


def spec(*dims):
    shape = " ".join(f"dim: {d}" for d in dims)
    return f'name: "p" type: "Parameter" top: "w" parameter_param {{ shape {{ {shape} }} }}'


@pytest.mark.parametrize("dims", [(2, 3), (4,), (1, 2, 3, 4), (), (0, 3)])
def test_top_is_the_parameter(dims):
    layer, _, tops = make(spec(*dims), [])
    assert [b.shape for b in layer.blobs] == [dims]
    assert tops[0].shape == dims
    assert not np.any(layer.blobs[0].data)  # Caffe fills it with nothing: zeros
    values = rand(*dims)
    layer.blobs[0].data[...] = values
    layer.forward([], tops)
    np.testing.assert_array_equal(tops[0].data, values)


def test_backward_adds_the_top_diff():
    layer, _, tops = make(spec(2, 3), [])
    layer.forward([], tops)
    dy = rand(2, 3, seed=1)
    tops[0].diff[...] = dy
    layer.backward(tops, [], [])
    layer.backward(tops, [], [])
    np.testing.assert_array_equal(layer.blobs[0].diff, 2 * dy)
    layer.param_propagate_down = (False,)
    layer.backward(tops, [], [])
    np.testing.assert_array_equal(layer.blobs[0].diff, 2 * dy)


def test_gradient():
    result = check_layer(spec(3, 4), [], param_arrays=[rand(3, 4, seed=2)])
    assert result.passed, result.report()
    assert result.checked == 12


def test_learns_in_a_net():
    """A Parameter feeding a SUMSQ Reduction loss: the loss is ||w||^2 and
    the parameter's gradient 2 w, reached through net.params."""
    net = Net('''
        layer { name: "p" type: "Parameter" top: "w"
                parameter_param { shape { dim: 2 dim: 3 } } }
        layer { name: "loss" type: "Reduction" bottom: "w" top: "loss"
                reduction_param { operation: SUMSQ } loss_weight: 1 }''',
              "TRAIN", dtype=np.float64)
    w = rand(2, 3, seed=3)
    net.params["p"][0].data[...] = w
    net.forward()
    assert float(net.blobs["loss"].data) == pytest.approx(float(np.sum(w * w)), rel=1e-13)
    net.params["p"][0].diff[...] = 0
    net.backward()
    np.testing.assert_allclose(net.params["p"][0].diff, 2 * w, rtol=1e-13)


def test_negative_dim_is_an_error():
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'p' (type Parameter): parameter_param.shape dims must be >= 0, found [2, -1]")):
        make(spec(2, -1), [])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_matches_cpu(dtype):
    compare_devices(spec(3, 5, 2), [], dtype=dtype)
