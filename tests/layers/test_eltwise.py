"""Eltwise: SUM (with coefficients), PROD and MAX over equally shaped bottoms."""
import numpy as np
import pytest

from netdef.blob import Blob
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import make

SUM = 'name: "e" type: "Eltwise"'
SUM_COEFF2 = 'name: "e" type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -1 }'
SUM_COEFF3 = 'name: "e" type: "Eltwise" eltwise_param { coeff: 0.5 coeff: 2 coeff: -1.5 }'
PROD = 'name: "e" type: "Eltwise" eltwise_param { operation: PROD }'
PROD_FAST = 'name: "e" type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }'
MAX = 'name: "e" type: "Eltwise" eltwise_param { operation: MAX }'

SHAPES = [(2, 3, 4, 5), (4, 3), (7,)]


def inputs(k, shape, seed=0, away_from_zero=False):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape) for _ in range(k)]
    if away_from_zero:
        arrays = [np.sign(a) * (np.abs(a) + 0.5) for a in arrays]
    return arrays


def tie_free(k, shape, seed=0):
    """Inputs whose elementwise maxima are separated by at least 0.1, so the
    finite differences never cross a switch."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    values = rng.permutation(k * count).reshape(k, *shape) * 0.1
    return [v - count * 0.05 for v in values]


def reference(operation, arrays, coeffs=None):
    """Plain element loop."""
    flat = [a.ravel() for a in arrays]
    out = np.empty(flat[0].size)
    winner = np.empty(flat[0].size, dtype=int)
    for i in range(out.size):
        values = [f[i] for f in flat]
        if operation == "SUM":
            out[i] = sum(c * v for c, v in zip(coeffs or [1] * len(values), values))
        elif operation == "PROD":
            p = 1.0
            for v in values:
                p *= v
            out[i] = p
        else:
            best = 0
            for k, v in enumerate(values):
                if v > values[best]:
                    best = k
            out[i], winner[i] = values[best], best
    return out.reshape(arrays[0].shape), winner.reshape(arrays[0].shape)


# -- forward ------------------------------------------------------------------------------

CASES = [(SUM, "SUM", 2, None), (SUM, "SUM", 3, None), (SUM_COEFF2, "SUM", 2, [1, -1]),
         (SUM_COEFF3, "SUM", 3, [0.5, 2, -1.5]), (PROD, "PROD", 2, None), (PROD, "PROD", 3, None),
         (MAX, "MAX", 2, None), (MAX, "MAX", 4, None)]


@pytest.mark.parametrize("spec,operation,k,coeffs", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(spec, operation, k, coeffs, shape):
    arrays = inputs(k, shape, seed=k)
    layer, bottoms, tops = make(spec, arrays)
    layer.forward(bottoms, tops)
    expected, winner = reference(operation, arrays, coeffs)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12)
    if operation == "MAX":
        np.testing.assert_array_equal(layer.argmax, winner)


def test_max_ties_go_to_the_first_bottom_holding_the_maximum():
    a = np.array([1.0, 2.0, 0.0, 5.0])
    b = np.array([1.0, 3.0, 0.0, 4.0])
    c = np.array([0.0, 3.0, 0.0, 5.0])
    layer, bottoms, tops = make(MAX, [a, b, c])
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, [1.0, 3.0, 0.0, 5.0])
    np.testing.assert_array_equal(layer.argmax, [0, 1, 0, 0])
    tops[0].diff[...] = [10.0, 20.0, 30.0, 40.0]
    layer.backward(tops, [True, True, True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, [10.0, 0.0, 30.0, 40.0])
    np.testing.assert_array_equal(bottoms[1].diff, [0.0, 20.0, 0.0, 0.0])
    np.testing.assert_array_equal(bottoms[2].diff, [0.0, 0.0, 0.0, 0.0])


# -- backward --------------------------------------------------------------------------------


def test_backward_values_and_propagate_down():
    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal((2, 3)) for _ in range(3))
    dy = rng.standard_normal((2, 3))
    layer, bottoms, tops = make(SUM_COEFF3, [a, b, c])
    layer.forward(bottoms, tops)
    tops[0].diff[...] = dy
    bottoms[1].diff[...] = 9.0
    layer.backward(tops, [True, False, True], bottoms)
    np.testing.assert_allclose(bottoms[0].diff, 0.5 * dy)
    assert np.all(bottoms[1].diff == 9.0)
    np.testing.assert_allclose(bottoms[2].diff, -1.5 * dy)
    for spec in (PROD, PROD_FAST):
        layer, bottoms, tops = make(spec, [a, b, c])
        layer.forward(bottoms, tops)
        tops[0].diff[...] = dy
        layer.backward(tops, [True, True, True], bottoms)
        np.testing.assert_allclose(bottoms[0].diff, dy * b * c, rtol=1e-12)
        np.testing.assert_allclose(bottoms[1].diff, dy * a * c, rtol=1e-12)
        np.testing.assert_allclose(bottoms[2].diff, dy * a * b, rtol=1e-12)


def test_stable_prod_grad_is_finite_at_zero():
    a = np.array([0.0, 2.0])
    b = np.array([3.0, 0.0])
    layer, bottoms, tops = make(PROD, [a, b])
    layer.forward(bottoms, tops)
    tops[0].diff[...] = 1.0
    layer.backward(tops, [True, True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, [3.0, 0.0])
    np.testing.assert_array_equal(bottoms[1].diff, [0.0, 2.0])


@pytest.mark.parametrize("spec,k", [(SUM, 2), (SUM_COEFF2, 2), (SUM_COEFF3, 3), (PROD, 2),
                                    (PROD, 3), (PROD_FAST, 3)])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck(spec, k, shape):
    result = check_layer(spec, inputs(k, shape, seed=2, away_from_zero=True))
    assert result.passed, result.report()


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck_max(k, shape):
    result = check_layer(MAX, tie_free(k, shape, seed=3))
    assert result.passed, result.report()
    assert result.skipped_kinks == 0


# -- GPU code ---------------------------------------------------------------------------------

GPU_CASES = [(SUM, 2), (SUM_COEFF3, 3), (PROD, 3), (PROD_FAST, 2), (MAX, 2), (MAX, 4)]
# Only MAX has kernels: SUM and PROD run the same xp code on both devices
# (_forward_arith, _backward_arith), which a host run would compare with
# itself; the gpu-marked parity test covers them on a device.
KERNEL_CASES = [(spec, k) for spec, k in GPU_CASES if spec == MAX]


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec,k", KERNEL_CASES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,)])
def test_host_run_kernels_match_numpy(dtype, spec, k, shape):
    run_gpu_path_on_host(spec, inputs(k, shape, seed=4, away_from_zero=True), dtype=dtype)


@requires_cxx
def test_host_run_max_ties_and_argmax_match_numpy():
    a = np.array([[1.0, 2.0, 0.0, 5.0]])
    b = np.array([[1.0, 3.0, 0.0, 4.0]])
    c = np.array([[0.0, 3.0, 0.0, 5.0]])
    argmaxes = []
    for path in ("cpu", "gpu"):
        layer, bottoms, tops = make(MAX, [a, b, c], dtype=np.float32)
        (layer.forward_cpu if path == "cpu" else layer.forward_gpu)(bottoms, tops)
        argmaxes.append(layer.argmax.copy())
    np.testing.assert_array_equal(argmaxes[0], [[0, 1, 0, 0]])
    np.testing.assert_array_equal(argmaxes[1], argmaxes[0])
    run_gpu_path_on_host(MAX, [a, b, c], dtype=np.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("spec,k", GPU_CASES)
def test_gpu_matches_cpu(spec, k):
    compare_devices(spec, inputs(k, (2, 3, 4, 5), seed=5, away_from_zero=True))


# -- errors ------------------------------------------------------------------------------------


def test_error_coeff_count():
    spec = 'name: "e" type: "Eltwise" eltwise_param { coeff: 1 coeff: 2 coeff: 3 }'
    with pytest.raises(NetDefinitionError, match=r"layer 'e'.*one value per bottom: expected 2, "
                                                 r"found 3"):
        make(spec, inputs(2, (2, 3)))


@pytest.mark.parametrize("operation", ["PROD", "MAX"])
def test_error_coeff_with_prod_or_max(operation):
    spec = f'name: "e" type: "Eltwise" eltwise_param {{ operation: {operation} coeff: 1 coeff: 1 }}'
    message = (r"layer 'e'.*coeff applies to operation SUM only, "
               rf"found 2 coeff\(s\) with operation {operation}")
    with pytest.raises(NetDefinitionError, match=message):
        make(spec, inputs(2, (2, 3)))


def test_error_shape_mismatch_names_first_mismatching_bottom():
    spec = 'name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" bottom: "d"'
    arrays = [np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((3, 2)), np.zeros((1, 6))]
    with pytest.raises(ShapeError, match=r"layer 'e'.*bottom 'c' expected the shape of bottom 'a' "
                                         r"\(2, 3\), found shape \(3, 2\)"):
        make(spec, arrays)


def test_error_in_place():
    layer = build_layer('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "a"',
                        dtype=np.float64)
    a, b = Blob.from_array(np.zeros(3)), Blob.from_array(np.zeros(3))
    layer.setup([a, b], [a])
    with pytest.raises(NetDefinitionError, match=r"cannot work in place: top 'a' is also a bottom"):
        layer.reshape([a, b], [a])


def test_error_one_bottom():
    with pytest.raises(NetDefinitionError, match=r"needs at least 2 bottom"):
        make(SUM, inputs(1, (2, 3)))
