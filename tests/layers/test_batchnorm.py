"""BatchNorm: Caffe's three-blob layout (mean sum, variance sum, scale factor)."""
import math

import numpy as np
import pytest

from netdef.blob import Blob
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

BN = 'name: "bn" type: "BatchNorm"'
BN_GLOBAL = 'name: "bn" type: "BatchNorm" batch_norm_param { use_global_stats: true }'
BN_BATCH = 'name: "bn" type: "BatchNorm" batch_norm_param { use_global_stats: false }'

# The prototxt's eps is a float32 field: 1e-5 arrives as float32(1e-5).
EPS = float(np.float32(1e-5))


def F32(value):
    """``value`` as a float32 prototxt field holds it."""
    return float(np.float32(value))


SHAPES = [(2, 3, 4, 5), (4, 3), (5, 2, 3), (1, 2, 1, 1), (3, 1, 2, 2), (6,)]


def channels_of(shape):
    return 1 if len(shape) == 1 else shape[1]


def reference_global(x, mean_sum, var_sum, s, eps=EPS):
    """Plain per-channel loop: statistics are the sums divided by s (0 -> 0)."""
    out = np.empty_like(x, dtype=np.float64)
    xc = x.reshape(x.shape[0], channels_of(x.shape), -1)
    oc = out.reshape(xc.shape)
    for c in range(xc.shape[1]):
        mean = 0.0 if s == 0 else mean_sum[c] / s
        var = 0.0 if s == 0 else var_sum[c] / s
        for n in range(xc.shape[0]):
            for k in range(xc.shape[2]):
                oc[n, c, k] = (xc[n, c, k] - mean) / math.sqrt(var + eps)
    return out


def reference_batch(x, eps=EPS):
    """Batch statistics per channel over every axis but 1; biased variance."""
    xc = x.reshape(x.shape[0], channels_of(x.shape), -1)
    means, variances = [], []
    out = np.empty(xc.shape)
    for c in range(xc.shape[1]):
        values = [float(v) for v in xc[:, c, :].ravel()]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / len(values)
        means.append(mean)
        variances.append(var)
        out[:, c, :] = (xc[:, c, :] - mean) / math.sqrt(var + eps)
    return out.reshape(x.shape), np.array(means), np.array(variances)


def make(spec, x, phase="TRAIN", dtype=np.float64, stats=None):
    """Set up a layer on x; ``stats`` = (mean_sum, var_sum, s) to store."""
    layer = build_layer(spec, phase=phase, dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.asarray(x, dtype=dtype)])
    if stats is not None:
        for blob, value in zip(layer.blobs, stats):
            blob.data[...] = np.asarray(value, dtype=dtype).reshape(blob.shape)
    return layer, bottoms, tops


def random_stats(rng, channels, s):
    mean = rng.standard_normal(channels)
    var = rng.uniform(0.5, 2.0, channels)
    return mean * s, var * s, s


# -- forward ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("s", [0.0, 1.0, 999.98])
def test_global_stats_forward_matches_reference(shape, s):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    stats = random_stats(rng, channels_of(shape), s)
    layer, bottoms, tops = make(BN_GLOBAL, x, stats=stats)
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, reference_global(x, *stats), rtol=1e-10, atol=1e-10)
    # The stored statistics are untouched in this mode.
    for blob, value in zip(layer.blobs, stats):
        np.testing.assert_array_equal(blob.data.ravel(), np.ravel(value))


def test_scale_factor_zero_means_zero_statistics():
    x = np.arange(12, dtype=np.float64).reshape(2, 3, 2)
    # Nonzero sums must be ignored when s == 0.
    layer, bottoms, tops = make(BN_GLOBAL, x, stats=(np.ones(3) * 5, np.ones(3) * 7, 0.0))
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, x / math.sqrt(EPS), rtol=1e-12)


def test_use_global_stats_defaults_by_phase_and_custom_eps():
    x = np.random.default_rng(2).standard_normal((2, 3, 2, 2))
    assert make(BN, x, phase="TEST")[0].use_global_stats
    assert not make(BN, x, phase="TRAIN")[0].use_global_stats
    assert make(BN_GLOBAL, x, phase="TRAIN")[0].use_global_stats
    assert not make(BN_BATCH, x, phase="TEST")[0].use_global_stats
    stats = random_stats(np.random.default_rng(3), 3, 2.5)
    layer, bottoms, tops = make('type: "BatchNorm" batch_norm_param { eps: 0.1 }', x,
                                phase="TEST", stats=stats)
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, reference_global(x, *stats, eps=F32(0.1)), rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3), (5, 2, 3), (6,)])
def test_batch_mode_statistics_and_moving_average_after_two_passes(shape):
    rng = np.random.default_rng(4)
    x1 = rng.standard_normal(shape) * 2 + 1
    x2 = rng.standard_normal(shape) * 0.5 - 3
    spec = 'type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 }'
    layer, bottoms, tops = make(spec, x1)
    maf = F32(0.9)
    m = x1.size // channels_of(shape)
    correction = m / (m - 1)

    layer.forward(bottoms, tops)
    y1, mean1, var1 = reference_batch(x1)
    np.testing.assert_allclose(tops[0].data, y1, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(layer.blobs[2].data, [1.0])
    np.testing.assert_allclose(layer.blobs[0].data, mean1, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, correction * var1, rtol=1e-12)

    bottoms[0].data[...] = x2
    layer.forward(bottoms, tops)
    y2, mean2, var2 = reference_batch(x2)
    np.testing.assert_allclose(tops[0].data, y2, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(layer.blobs[2].data, [maf * 1.0 + 1.0], rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].data, maf * mean1 + mean2, rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].data, maf * correction * var1 + correction * var2,
                               rtol=1e-12)

    # In TEST, the averaged statistics (sum / s) are what the layer uses.
    test_layer, tb, tt = make(BN, x2, phase="TEST",
                              stats=[b.data.copy() for b in layer.blobs])
    test_layer.forward(tb, tt)
    s = maf + 1
    expected = reference_global(x2, layer.blobs[0].data, layer.blobs[1].data, s)
    np.testing.assert_allclose(tt[0].data, expected, rtol=1e-9, atol=1e-9)


def test_batch_of_one_value_per_channel_uses_no_bias_correction():
    # m = 1: Caffe's correction factor is 1, the variance is 0, y is 0.
    x = np.array([[1.5, -2.0, 3.0]])
    layer, bottoms, tops = make(BN_BATCH, x)
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, np.zeros((1, 3)))
    np.testing.assert_allclose(layer.blobs[0].data, x[0])
    np.testing.assert_array_equal(layer.blobs[1].data, np.zeros(3))


def test_default_moving_average_fraction_is_0_999():
    x = np.random.default_rng(5).standard_normal((3, 2, 2))
    layer, bottoms, tops = make(BN_BATCH, x)
    layer.forward(bottoms, tops)
    layer.forward(bottoms, tops)
    maf = F32(0.999)
    np.testing.assert_allclose(layer.blobs[2].data, [maf + 1], rtol=1e-12)
    _, mean, _ = reference_batch(x)
    np.testing.assert_allclose(layer.blobs[0].data, (maf + 1) * mean, rtol=1e-12)


# -- backward -----------------------------------------------------------------------


def test_backward_formulas_against_plain_reference():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 2, 2))
    dy = rng.standard_normal(x.shape)
    # Batch mode: dx = (dy - mean(dy) - mean(dy * y) * y) / std per channel.
    layer, bottoms, tops = make(BN_BATCH, x)
    layer.forward(bottoms, tops)
    tops[0].diff[...] = dy
    layer.backward(tops, [True], bottoms)
    y, _, var = reference_batch(x)
    expected = np.empty_like(x)
    for c in range(2):
        d, yc = dy[:, c], y[:, c]
        expected[:, c] = (d - d.mean() - (d * yc).mean() * yc) / math.sqrt(var[c] + EPS)
    np.testing.assert_allclose(bottoms[0].diff, expected, rtol=1e-10, atol=1e-12)
    # Stored statistics: dx = dy / sqrt(var + eps).
    stats = random_stats(rng, 2, 999.98)
    layer, bottoms, tops = make(BN_GLOBAL, x, stats=stats)
    layer.forward(bottoms, tops)
    tops[0].diff[...] = dy
    layer.backward(tops, [True], bottoms)
    std = np.sqrt(stats[1] / stats[2] + EPS)
    np.testing.assert_allclose(bottoms[0].diff, dy / std[None, :, None, None], rtol=1e-10)
    # propagate_down False leaves the diff alone.
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


def with_stored_stats(spec, stats, dtype=np.float64):
    """A layer whose setup stores ``stats`` (for the gradient check and the
    host-run harness, which run setup themselves)."""
    layer = build_layer(spec, dtype=dtype)
    plain_setup = layer.layer_setup

    def setup(bottoms, tops):
        plain_setup(bottoms, tops)
        for blob, value in zip(layer.blobs, stats):
            blob.data[...] = np.asarray(value, dtype=dtype).reshape(blob.shape)
    layer.layer_setup = setup
    return layer


@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck_batch_mode(shape):
    x = np.random.default_rng(7).standard_normal(shape)
    # The statistics blobs are not learned (their diff stays 0), so only the
    # bottom is checked.
    result = check_layer(BN_BATCH, [x], check_params=False)
    assert result.passed, result.report()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("s", [0.0, 999.98])
def test_gradcheck_global_stats(shape, s):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape)
    layer = with_stored_stats(BN_GLOBAL, random_stats(rng, channels_of(shape), s))
    result = check_layer(layer, [x], check_params=False)
    assert result.passed, result.report()


# -- in place -----------------------------------------------------------------------


def run_in_place(spec, x, dy, stats=None, gpu_path=False, dtype=np.float64):
    """Forward and backward with bottom and top the same Blob (as a ResNet
    prototxt declares); returns (y, dx, blobs)."""
    layer = build_layer(spec, dtype=dtype)
    blob = Blob.from_array(np.array(x, dtype=dtype))
    layer.setup([blob], [blob])
    if stats is not None:
        for b, value in zip(layer.blobs, stats):
            b.data[...] = np.asarray(value, dtype=dtype).reshape(b.shape)
    layer.reshape([blob], [blob])
    (layer.forward_gpu if gpu_path else layer.forward_cpu)([blob], [blob])
    y = blob.data.copy()
    blob.diff[...] = dy
    (layer.backward_gpu if gpu_path else layer.backward_cpu)([blob], [True], [blob])
    return y, blob.diff.copy(), [b.data.copy() for b in layer.blobs]


def run_out_of_place(spec, x, dy, stats=None, dtype=np.float64):
    layer, bottoms, tops = make(spec, x, dtype=dtype, stats=stats)
    layer.forward(bottoms, tops)
    tops[0].diff[...] = dy
    layer.backward(tops, [True], bottoms)
    return tops[0].data.copy(), bottoms[0].diff.copy(), [b.data.copy() for b in layer.blobs]


@pytest.mark.parametrize("spec", [BN_BATCH, BN_GLOBAL])
@pytest.mark.parametrize("gpu_path", [False, pytest.param(True, marks=requires_cxx)])
def test_in_place_equals_out_of_place(spec, gpu_path):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 3, 2))
    dy = rng.standard_normal(x.shape)
    stats = random_stats(rng, 3, 999.98)
    expected = run_out_of_place(spec, x, dy, stats)
    found = run_in_place(spec, x, dy, stats, gpu_path=gpu_path)
    np.testing.assert_allclose(found[0], expected[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(found[1], expected[1], rtol=1e-12, atol=1e-12)
    for f, e in zip(found[2], expected[2]):
        np.testing.assert_allclose(f, e, rtol=1e-12)


# -- GPU code -----------------------------------------------------------------------


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", [BN_BATCH, BN_GLOBAL])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3), (6,)])
def test_host_run_kernels_match_numpy(dtype, spec, shape):
    rng = np.random.default_rng(10)
    x = rng.standard_normal(shape) * 3 + 1
    if spec == BN_GLOBAL:
        spec = with_stored_stats(spec, random_stats(rng, channels_of(shape), 999.98), dtype)
    run_gpu_path_on_host(spec, [x], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", [BN_BATCH, BN_GLOBAL])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3)])
def test_gpu_matches_cpu(spec, shape):
    x = np.random.default_rng(11).standard_normal(shape)
    compare_devices(spec, [x])


@pytest.mark.gpu
@pytest.mark.parametrize("spec", [BN_BATCH, BN_GLOBAL])
def test_gpu_matches_cpu_with_stored_stats_in_place(spec):
    from netdef.device import Device, to_numpy
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    stats = random_stats(rng, 3, 999.98)
    expected = run_in_place(spec, x, dy, stats, dtype=np.float32)
    gpu = Device("gpu", 0)
    layer = build_layer(spec, device=gpu, dtype=np.float32)
    blob = Blob.from_array(gpu.asarray(x))
    layer.setup([blob], [blob])
    for b, value in zip(layer.blobs, stats):
        b.data[...] = gpu.asarray(np.asarray(value, dtype=np.float32).reshape(b.shape))
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    y = to_numpy(blob.data).copy()
    blob.diff[...] = gpu.asarray(dy)
    layer.backward([blob], [True], [blob])
    np.testing.assert_allclose(y, expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(blob.diff), expected[1], rtol=1e-4, atol=1e-4)
    for b, e in zip(layer.blobs, expected[2]):
        np.testing.assert_allclose(to_numpy(b.data), e, rtol=1e-4, atol=1e-4)


# -- errors -------------------------------------------------------------------------


def test_error_stored_blobs_do_not_fit_bottom_channels():
    x = np.zeros((2, 3, 4, 4))
    layer, bottoms, tops = make(BN_GLOBAL, x)
    # As if weights from a net with 5 channels here had been loaded.
    layer.blobs[0].reshape((5,))
    layer.blobs[1].reshape((5,))
    with pytest.raises(ShapeError, match=r"layer 'bn'.*bottom 'bottom\[0\]' has 3 channels.*"
                                         r"mean \(5,\), variance \(5,\).*expected \(3,\), \(3,\)"):
        layer.reshape(bottoms, tops)


def test_error_bottom_channels_change_after_setup():
    layer, bottoms, tops = make('name: "bn" type: "BatchNorm" bottom: "data" top: "data"',
                                np.zeros((2, 3, 2, 2)))
    bottoms[0].reshape((2, 4, 2, 2))
    with pytest.raises(ShapeError, match=r"bottom 'data' has 4 channels \(shape \(2, 4, 2, 2\)\)"):
        layer.reshape(bottoms, tops)


def test_error_learning_the_statistics_is_refused():
    spec = 'name: "bn" type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 1 }'
    with pytest.raises(NetDefinitionError, match=r"layer 'bn'.*param 1 lr_mult must be 0.*found 1"):
        make(spec, np.zeros((2, 3)))


def test_statistics_blobs_are_fixed_params():
    layer, _, _ = make(BN + ' param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }',
                       np.zeros((2, 3)))
    assert tuple(layer.fixed_param_blobs) == (0, 1, 2)
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]
