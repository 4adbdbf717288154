"""SPP: forward against explicit per-level pooling loops, float64 gradient
checks, the host-run pooling kernels, GPU parity, and every error."""
import numpy as np
import pytest

from layers.spp import level_geometry
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host


def spec(pyramid_height, pool):
    return f'name: "spp" type: "SPP" spp_param {{ pyramid_height: {pyramid_height} pool: {pool} }}'


# (pyramid_height, pool, bottom shape): H != W, sizes divisible by the bins
# or not, a 1 x 1 map.
CASES = [
    (1, "MAX", (2, 3, 5, 7)),
    (1, "AVE", (2, 3, 5, 7)),
    (1, "MAX", (1, 2, 1, 1)),
    (2, "MAX", (2, 3, 7, 10)),
    (2, "AVE", (2, 3, 7, 10)),
    (2, "AVE", (1, 2, 3, 2)),
    (2, "MAX", (2, 2, 6, 4)),
    (3, "MAX", (2, 2, 9, 14)),
    (3, "AVE", (2, 2, 9, 14)),
    (3, "AVE", (1, 3, 8, 8)),
    (3, "MAX", (1, 2, 7, 11)),
]
IDS = [f"h{h}_{pool}_{'x'.join(map(str, shape))}" for h, pool, shape in CASES]


def reference_level(x, bins, pool):
    """One level by plain loops over images, channels and bins: Caffe's
    kernel / pad / stride, windows clipped to the map, AVE dividing by the
    window clipped to the padded map."""
    n_img, channels, height, width = x.shape
    kh = -(-height // bins)
    kw = -(-width // bins)
    ph = (kh * bins - height + 1) // 2
    pw = (kw * bins - width + 1) // 2
    # Pooling's output size: ceil, then drop a last window starting in the pad.
    out_h = -(-(height + 2 * ph - kh) // kh) + 1
    out_w = -(-(width + 2 * pw - kw) // kw) + 1
    if ph or pw:
        out_h -= (out_h - 1) * kh >= height + ph
        out_w -= (out_w - 1) * kw >= width + pw
    out = np.zeros((n_img, channels, out_h, out_w))
    for n in range(n_img):
        for c in range(channels):
            for i in range(out_h):
                for j in range(out_w):
                    top, left = i * kh - ph, j * kw - pw
                    bottom, right = min(top + kh, height + ph), min(left + kw, width + pw)
                    area = (bottom - top) * (right - left)
                    cells = x[n, c, max(top, 0):min(bottom, height), max(left, 0):min(right, width)]
                    out[n, c, i, j] = cells.max() if pool == "MAX" else cells.sum() / area
    return out


def reference_spp(x, pyramid_height, pool):
    if pyramid_height == 1:
        return reference_level(x, 1, pool)
    n = x.shape[0]
    return np.concatenate([reference_level(x, 2 ** level, pool).reshape(n, -1)
                           for level in range(pyramid_height)], axis=1)


def make(pyramid_height, pool, x, dtype=np.float64):
    layer = build_layer(spec(pyramid_height, pool), dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.asarray(x, dtype=dtype)])
    return layer, bottoms, tops


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# -- forward ------------------------------------------------------------------------


@pytest.mark.parametrize("need_backward", [True, False])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_reference(case, need_backward):
    pyramid_height, pool, shape = case
    x = rand(shape)
    layer, bottoms, tops = make(pyramid_height, pool, x)
    layer.need_backward = need_backward
    layer.forward(bottoms, tops)
    expected = reference_spp(x, pyramid_height, pool)
    assert tops[0].shape == expected.shape
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)


def test_top_shapes():
    x = rand((2, 3, 9, 14))
    assert make(1, "MAX", x)[2][0].shape == (2, 3, 1, 1)
    assert make(2, "MAX", x)[2][0].shape == (2, 3 * (1 + 4))
    assert make(3, "AVE", x)[2][0].shape == (2, 3 * (1 + 4 + 16))


def test_level_geometry_is_caffes_rule():
    # (size, bins) -> (kernel = ceil(size / bins), pad = (kernel * bins - size + 1) // 2)
    assert level_geometry(13, 1) == (13, 0)
    assert level_geometry(13, 2) == (7, 1)
    assert level_geometry(13, 4) == (4, 2)
    assert level_geometry(12, 4) == (3, 0)
    assert level_geometry(7, 4) == (2, 1)


def test_float32_stays_float32_and_matches_reference():
    x = rand((2, 3, 7, 10))
    layer, bottoms, tops = make(3, "AVE", x, dtype=np.float32)
    layer.forward(bottoms, tops)
    assert tops[0].data.dtype == np.float32
    np.testing.assert_allclose(tops[0].data, reference_spp(x.astype(np.float32), 3, "AVE"),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pyramid_height", [1, 3])
def test_reshape_to_a_new_batch_then_map_size(pyramid_height):
    layer, bottoms, tops = make(pyramid_height, "MAX", rand((1, 2, 8, 8)))
    for seed, shape in enumerate([(3, 2, 8, 8), (2, 2, 11, 7)]):
        x = rand(shape, seed=seed)
        bottoms[0].reshape(x.shape)
        bottoms[0].data[...] = x
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
        np.testing.assert_allclose(tops[0].data, reference_spp(x, pyramid_height, "MAX"),
                                   rtol=1e-12, atol=1e-12)


# -- gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_check(case):
    pyramid_height, pool, shape = case
    result = check_layer(spec(pyramid_height, pool), [rand(shape, seed=2)])
    assert result.passed, result.report()


@pytest.mark.parametrize("pyramid_height", [1, 3])
def test_propagate_down_false_leaves_the_bottom_diff(pyramid_height):
    layer, bottoms, tops = make(pyramid_height, "MAX", rand((1, 2, 7, 9)))
    layer.forward(bottoms, tops)
    tops[0].diff[...] = 1
    bottoms[0].diff[...] = 5.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 5.0)


# -- GPU path (the Pooling kernels, host-run) ----------------------------------------


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_path_on_host(case, dtype):
    pyramid_height, pool, shape = case
    run_gpu_path_on_host(spec(pyramid_height, pool), [rand(shape, seed=3)], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_matches_cpu(case, dtype):
    pyramid_height, pool, shape = case
    compare_devices(spec(pyramid_height, pool), [rand(shape, seed=4)], dtype=dtype)


# -- errors -------------------------------------------------------------------------

PREFIX = r"layer 'spp' \(type SPP\): "


def test_error_stochastic():
    with pytest.raises(NetDefinitionError, match=PREFIX + "pool STOCHASTIC is not implemented; "
                                                           "expected MAX or AVE"):
        make(2, "STOCHASTIC", rand((1, 1, 4, 4)))


def test_error_pyramid_height_missing():
    layer = build_layer('name: "spp" type: "SPP" spp_param { pool: MAX }')
    with pytest.raises(NetDefinitionError, match=PREFIX + "spp_param.pyramid_height must be >= 1, "
                                                           "found 0"):
        setup_layer(layer, [rand((1, 1, 4, 4))])


def test_error_not_4d():
    with pytest.raises(ShapeError, match=PREFIX + r"bottom 'bottom\[0\]' expected 4 axes "
                                                   r"\(N, C, H, W\), found shape \(2, 3, 4\)"):
        make(2, "MAX", rand((2, 3, 4)))


def test_error_empty_map():
    with pytest.raises(ShapeError, match=PREFIX + r"bottom 'bottom\[0\]' expected a map of at "
                                                   r"least 1 x 1 \(H, W\), found shape \(1, 2, 0, 3\)"):
        make(1, "AVE", np.zeros((1, 2, 0, 3)))


def test_error_map_too_small_for_the_pyramid():
    # H = 5 with 4 bins: kernel 2, pad (8 - 5 + 1) // 2 = 2, which Caffe's
    # Pooling refuses (pad must be below the kernel).
    with pytest.raises(ShapeError, match=PREFIX + r"bottom 'bottom\[0\]' expected a map large "
                                                   r"enough for pyramid level 2 \(4 x 4 bins\): "
                                                   r"Caffe's Pooling needs pad < kernel, here "
                                                   r"kernel \(h, w\) \(2, 2\) and pad \(2, 1\), "
                                                   r"found shape \(1, 2, 5, 6\)"):
        make(3, "MAX", rand((1, 2, 5, 6)))
