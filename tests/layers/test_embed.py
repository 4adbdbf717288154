"""Embed: the table lookup and its parameter gradients against plain loops
(repeated indices add up), parameter shapes and fillers, float64 gradient
checks of weight and bias, accumulation and lr_mult 0, the weight-gradient
kernel host-run and on a GPU, and each error (parameters, indices out of
range or not whole, a gradient asked for the indices)."""
import re

import numpy as np
import pytest

from netdef.errors import DataError, NetDefinitionError
from netdef.gradcheck import check_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import make, rand

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "uniform" min: -1 max: 1 }'


def spec(num_output=3, input_dim=5, bias_term=None, fillers=FILLERS):
    bias = "" if bias_term is None else f" bias_term: {bias_term}"
    return (f'name: "emb" type: "Embed" bottom: "idx" top: "y" embed_param {{ '
            f'num_output: {num_output} input_dim: {input_dim}{bias} {fillers} }}')


def indices(shape, input_dim=5, seed=0):
    return np.random.default_rng(seed).integers(0, input_dim, shape).astype(np.float64)


def reference(idx, weight, bias, dy):
    """Top, weight diff and bias diff by loops over the indices."""
    n = weight.shape[1]
    top = np.zeros(idx.shape + (n,))
    dweight, dbias = np.zeros(weight.shape), np.zeros(n)
    for where in np.ndindex(*idx.shape):
        row = int(idx[where])
        for j in range(n):
            top[where + (j,)] = weight[row, j] + (bias[j] if bias is not None else 0.0)
            dweight[row, j] += dy[where + (j,)]
            dbias[j] += dy[where + (j,)]
    return top, dweight, dbias


def run(text, idx, seed=1):
    layer, bottoms, tops = make(text, [idx])
    layer.forward(bottoms, tops)
    dy = rand(*tops[0].shape, seed=seed)
    tops[0].diff[...] = dy
    layer.backward(tops, [False], bottoms)
    return layer, bottoms, tops, dy


@pytest.mark.parametrize("bias_term", [None, "false"])
@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 3, 4), (), (0, 2)])
def test_forward_backward_match_reference(shape, bias_term):
    idx = indices(shape)
    layer, _, tops, dy = run(spec(bias_term=bias_term), idx)
    bias = layer.blobs[1].data if bias_term is None else None
    top, dweight, dbias = reference(idx, layer.blobs[0].data, bias, dy)
    np.testing.assert_array_equal(tops[0].data, top)
    np.testing.assert_allclose(layer.blobs[0].diff, dweight, rtol=1e-14, atol=1e-15)
    if bias is not None:
        np.testing.assert_allclose(layer.blobs[1].diff, dbias, rtol=1e-14, atol=1e-15)


def test_repeated_index_gradients_add_up():
    idx = np.array([2.0, 2.0, 0.0, 2.0])
    layer, _, tops, dy = run(spec(num_output=2), idx)
    np.testing.assert_allclose(layer.blobs[0].diff[2], dy[0] + dy[1] + dy[3], rtol=1e-15)
    np.testing.assert_allclose(layer.blobs[0].diff[0], dy[2], rtol=1e-15)
    assert np.all(layer.blobs[0].diff[[1, 3, 4]] == 0)


def test_parameter_shapes_and_default_fillers():
    layer, _, tops = make(spec(num_output=4, input_dim=6, fillers=""), [indices((3,), 6)])
    assert [b.shape for b in layer.blobs] == [(6, 4), (4,)]
    assert tops[0].shape == (3, 4)
    # Caffe's default filler is constant 0.
    assert not np.any(layer.blobs[0].data) and not np.any(layer.blobs[1].data)
    layer, _, _ = make(spec(bias_term="false"), [indices((3,))])
    assert [b.shape for b in layer.blobs] == [(5, 3)]


def test_parameter_gradients_accumulate_and_respect_lr_mult_zero():
    idx = indices((2, 3))
    layer, bottoms, tops, _ = run(spec(), idx)
    once = [p.diff.copy() for p in layer.blobs]
    layer.backward(tops, [False], bottoms)
    for p, d in zip(layer.blobs, once):
        np.testing.assert_allclose(p.diff, 2 * d, rtol=1e-14)
    layer.param_propagate_down = (False, True)
    layer.backward(tops, [False], bottoms)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once[0], rtol=1e-14)
    np.testing.assert_allclose(layer.blobs[1].diff, 3 * once[1], rtol=1e-14)


@pytest.mark.parametrize("bias_term", [None, "false"])
@pytest.mark.parametrize("shape", [(6,), (2, 3)])
def test_gradient(shape, bias_term):
    idx = np.array([0, 4, 4, 1, 2, 4], dtype=np.float64).reshape(shape)
    result = check_layer(spec(bias_term=bias_term), [idx], check_bottoms=[])
    assert result.passed, result.report()
    assert result.checked == 15 + (3 if bias_term is None else 0)


def test_no_gradient_to_the_indices():
    layer, _, _ = make(spec(), [indices((3,))])
    assert not layer.allow_force_backward(0)


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4), (0,)])
def test_gpu_path_on_host(shape, dtype):
    run_gpu_path_on_host(spec(), [indices(shape, seed=2)], dtype=dtype, propagate=[False])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias_term", [None, "false"])
def test_gpu_matches_cpu(bias_term, dtype):
    # Many repeats of few rows: the atomicAdd collisions are exercised.
    compare_devices(spec(num_output=8, input_dim=5, bias_term=bias_term),
                    [indices((16, 25), seed=3)], dtype=dtype, propagate=[False])


@pytest.mark.parametrize("text,message", [
    (spec(num_output=0), "layer 'emb' (type Embed): embed_param.num_output must be >= 1, found 0"),
    (spec(input_dim=0), "layer 'emb' (type Embed): embed_param.input_dim must be >= 1, found 0"),
])
def test_parameter_errors(text, message):
    with pytest.raises(NetDefinitionError, match=re.escape(message)):
        make(text, [indices((3,))])


@pytest.mark.parametrize("bad,found", [(5.0, "5"), (-1.0, "-1"), (2.5, "2.5"),
                                       (float("nan"), "nan")])
def test_index_errors(bad, found):
    idx = indices((2, 3))
    idx[1, 2] = bad
    layer, bottoms, tops = make(spec(), [idx])
    with pytest.raises(DataError, match=re.escape(
            f"layer 'emb' (type Embed): bottom 'idx' expected integers in [0, 5), "
            f"found {found} at position (1, 2)")):
        layer.forward(bottoms, tops)


def test_gradient_to_the_indices_is_an_error():
    layer, bottoms, tops, _ = run(spec(), indices((3,)))
    with pytest.raises(NetDefinitionError, match=re.escape(
            "layer 'emb' (type Embed): cannot back-propagate to the indices bottom 'idx'; "
            "set propagate_down: false for it")):
        layer.backward(tops, [True], bottoms)
