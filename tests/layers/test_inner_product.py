"""InnerProduct: forward against a plain-loop reference (axis, transpose,
bias_term), float64 gradient checks, GPU parity, errors. The GPU path is the
CPU code (xp matmul), so there is no host-run test: it would compare that
code with itself."""
import numpy as np
import pytest

from layers.inner_product import InnerProductLayer
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices
from tests.layer_checks import check_param_diffs_accumulate

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def spec(params):
    return f'name: "fc" type: "InnerProduct" inner_product_param {{ {params} {FILLERS} }}'


# (id, inner_product_param fields, bottom shape, top shape)
CASES = [
    ("2d", "num_output: 3", (4, 5), (4, 3)),
    ("4d_axis1", "num_output: 4", (2, 3, 2, 2), (2, 4)),
    ("axis2", "num_output: 3 axis: 2", (2, 3, 4, 2), (2, 3, 3)),
    ("axis_negative", "num_output: 2 axis: -1", (2, 3, 5), (2, 3, 2)),
    ("axis0", "num_output: 2 axis: 0", (3, 2), (2,)),
    ("transpose", "num_output: 3 transpose: true", (2, 3, 2), (2, 3)),
    ("transpose_axis2_no_bias", "num_output: 4 axis: 2 transpose: true bias_term: false",
     (3, 2, 5), (3, 2, 4)),
    ("no_bias", "num_output: 1 bias_term: false", (3, 4), (3, 1)),
]
IDS = [c[0] for c in CASES]


def reference(x, weight, bias, axis, transpose):
    """Plain loops: out[m, n] = sum_k x[m, k] * W[n, k] + b[n]."""
    axis = axis % x.ndim
    m = int(np.prod(x.shape[:axis]))
    k = int(np.prod(x.shape[axis:]))
    rows = x.reshape(m, k)
    w = weight.T if transpose else weight
    out = np.zeros((m, w.shape[0]))
    for i in range(m):
        for n in range(w.shape[0]):
            total = bias[n] if bias is not None else 0.0
            for j in range(k):
                total += rows[i, j] * w[n, j]
            out[i, n] = total
    return out.reshape(x.shape[:axis] + (w.shape[0],))


def make(params, shape, dtype=np.float64):
    layer = build_layer(spec(params), dtype=dtype)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    bottoms, tops = setup_layer(layer, [x])
    return layer, bottoms, tops


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_reference(case):
    _, params, shape, top_shape = case
    layer, bottoms, tops = make(params, shape)
    layer.forward(bottoms, tops)
    assert tops[0].shape == top_shape
    bias = layer.blobs[1].data if layer.bias_term else None
    expected = reference(bottoms[0].data, layer.blobs[0].data, bias,
                         layer.param.inner_product_param.axis, layer.transpose)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)


def test_weight_layout():
    assert make("num_output: 3", (2, 4, 5))[0].blobs[0].shape == (3, 20)
    assert make("num_output: 3 transpose: true", (2, 4, 5))[0].blobs[0].shape == (20, 3)
    assert make("num_output: 3 axis: 2", (2, 4, 5))[0].blobs[0].shape == (3, 5)
    assert [b.shape for b in make("num_output: 3", (2, 4))[0].blobs] == [(3, 4), (3,)]
    assert len(make("num_output: 3 bias_term: false", (2, 4))[0].blobs) == 1


def test_float32_end_to_end():
    layer, bottoms, tops = make("num_output: 3 axis: 2", (2, 3, 4), dtype=np.float32)
    layer.forward(bottoms, tops)
    tops[0].diff[...] = 1
    layer.backward(tops, [True], bottoms)
    for array in (tops[0].data, bottoms[0].diff, layer.blobs[0].diff, layer.blobs[1].diff):
        assert array.dtype == np.float32


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_check(case):
    _, params, shape, _ = case
    result = check_layer(spec(params), [np.random.default_rng(1).standard_normal(shape)])
    assert result.passed, result.report()


def test_parameter_gradients_accumulate_and_propagate_down_false():
    layer, bottoms, tops = make("num_output: 2 transpose: true", (3, 4))
    check_param_diffs_accumulate(layer, bottoms, tops, seed=2, sentinel=5.0)


def test_gpu_path_is_its_cpu_code():
    assert InnerProductLayer.forward_gpu is InnerProductLayer.forward_cpu
    assert InnerProductLayer.backward_gpu is InnerProductLayer.backward_cpu


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_matches_cpu(case):
    _, params, shape, _ = case
    compare_devices(spec(params), [np.random.default_rng(4).standard_normal(shape)])


def test_flattened_size_differs_from_weights():
    layer, bottoms, tops = make("num_output: 2 axis: 1", (2, 3, 4))
    bottoms[0].reshape((2, 3, 5))
    with pytest.raises(ShapeError, match=r"layer 'fc' \(type InnerProduct\): bottom 'bottom\[0\]' "
                                         r"expected K = 12 .*weights \(2, 12\).*found K = 15 "
                                         r"\(shape \(2, 3, 5\)\)"):
        layer.reshape(bottoms, tops)
    # The batch axes may change freely.
    bottoms[0].reshape((5, 3, 4))
    layer.reshape(bottoms, tops)
    assert tops[0].shape == (5, 2)


def test_axis_out_of_range():
    with pytest.raises(ShapeError, match=r"layer 'fc'.*bottom 'bottom\[0\]' expected at least 4 axes "
                                         r"for inner_product_param.axis 3, found shape \(2, 3\)"):
        make("num_output: 2 axis: 3", (2, 3))


def test_num_output_required():
    with pytest.raises(NetDefinitionError, match=r"layer 'fc'.*num_output must be >= 1, found 0"):
        make("", (2, 3))
