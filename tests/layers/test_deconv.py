"""Deconvolution: forward against a plain scatter reference, the adjoint
of Convolution, float64 gradient checks, the host-run im2col/col2im GPU
path, GPU parity, and every error."""
import numpy as np
import pytest

import layers.conv_plans as conv_plans
import layers.conv_winograd as winograd
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import check_param_diffs_accumulate

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def spec(params, name="deconv", layer_type="Deconvolution"):
    return f'name: "{name}" type: "{layer_type}" convolution_param {{ {params} {FILLERS} }}'


# (id, convolution_param fields, bottom shape (N, C, H, W))
CASES = [
    ("3x3", "num_output: 3 kernel_size: 3", (2, 2, 4, 5)),
    ("stride2_pad1", "num_output: 4 kernel_size: 4 stride: 2 pad: 1", (2, 3, 3, 4)),
    ("group2_strided_asym_pad", "num_output: 4 kernel_size: 3 stride: 2 pad_h: 1 pad_w: 2 group: 2",
     (2, 4, 4, 3)),
    ("dilated", "num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (2, 3, 4, 4)),
    ("dilation_per_axis_strided", "num_output: 2 kernel_size: 3 dilation: 2 dilation: 1 "
                                  "stride: 2 stride: 1 pad: 1", (1, 2, 3, 4)),
    ("kernel_h_ne_kernel_w_no_bias", "num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 "
                                     "bias_term: false", (2, 2, 3, 4)),
    ("stride_over_kernel", "num_output: 2 kernel_size: 2 stride: 3", (2, 2, 3, 3)),
    ("pad_beyond_kernel", "num_output: 2 kernel_size: 3 pad: 2", (1, 2, 5, 6)),
    ("1x1_map_upsample", "num_output: 3 kernel_size: 4 stride: 2", (2, 2, 1, 1)),
    ("pointwise", "num_output: 5 kernel_size: 1", (2, 3, 4, 3)),
    ("pointwise_grouped_no_bias", "num_output: 4 kernel_size: 1 group: 2 bias_term: false",
     (2, 4, 3, 3)),
    ("1x1_stride2", "num_output: 3 kernel_size: 1 stride: 2", (2, 2, 3, 4)),
    ("depthwise_no_bias_dilated", "num_output: 3 kernel_size: 3 group: 3 dilation: 2 pad: 1 "
                                  "stride: 2 bias_term: false", (2, 3, 3, 4)),
]
IDS = [c[0] for c in CASES]


def reference_deconv(x, weight, bias, stride, pad, dilation, group):
    """Plain loops: every input pixel scatters itself times its kernel."""
    n_img, channels, height, width = x.shape
    _, out_per_group, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    out_h = sh * (height - 1) + dh * (kh - 1) + 1 - 2 * ph
    out_w = sw * (width - 1) + dw * (kw - 1) + 1 - 2 * pw
    in_per_group = channels // group
    out = np.zeros((n_img, out_per_group * group, out_h, out_w))
    for n in range(n_img):
        for c in range(channels):
            g = c // in_per_group
            for o in range(out_per_group):
                for h in range(height):
                    for w in range(width):
                        for i in range(kh):
                            for j in range(kw):
                                y = h * sh - ph + i * dh
                                xo = w * sw - pw + j * dw
                                if 0 <= y < out_h and 0 <= xo < out_w:
                                    out[n, g * out_per_group + o, y, xo] += \
                                        weight[c, o, i, j] * x[n, c, h, w]
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def make(params, shape, dtype=np.float64, seed=0, n_bottoms=1):
    layer = build_layer(spec(params), dtype=dtype)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape).astype(dtype) for _ in range(n_bottoms)]
    bottoms, tops = setup_layer(layer, arrays, num_tops=n_bottoms)
    return layer, bottoms, tops


def reference_for(layer, x):
    bias = layer.blobs[1].data if layer.bias_term else None
    return reference_deconv(x, layer.blobs[0].data, bias, layer.stride, layer.pad,
                            layer.dilation, layer.group)


@pytest.fixture(params=["default", "row_shift", "winograd_row_chunks"])
def plans(request, monkeypatch):
    """Run the CPU path on each of Convolution's strategies at these small
    sizes: the default (im2col for small maps and strides), the row-shift
    plan for every stride-1 case, and Winograd for every 3x3 stride-1 case
    with one tile row per chunk."""
    if request.param != "default":
        monkeypatch.setattr(conv_plans, "SMALL_COLUMNS", 0)
    if request.param.startswith("winograd"):
        monkeypatch.setattr(conv_plans, "WINOGRAD_MIN_CHANNELS", 1)
        monkeypatch.setattr(winograd, "CHUNK_TILES", 1)
    return request.param


# -- forward ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_reference(case, plans):
    _, params, shape = case
    layer, bottoms, tops = make(params, shape)
    layer.forward(bottoms, tops)
    expected = reference_for(layer, bottoms[0].data)
    assert tops[0].shape == expected.shape
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)


def test_parameter_shapes_and_output_size_formula():
    layer, _, tops = make("num_output: 6 kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 1 pad_w: 0 "
                          "dilation: 2 group: 3", (1, 9, 5, 4))
    # Input channels first: (C, num_output / group, kh, kw).
    assert layer.blobs[0].shape == (9, 2, 3, 2)
    assert layer.blobs[1].shape == (6,)
    # 2 * (5 - 1) + 2 * (3 - 1) + 1 - 2 * 1 = 11, 2 * (4 - 1) + 2 * (2 - 1) + 1 - 0 = 9
    assert tops[0].shape == (1, 6, 11, 9)
    layer, _, _ = make("num_output: 2 kernel_size: 3 bias_term: false", (1, 1, 3, 3))
    assert len(layer.blobs) == 1


def test_float32_stays_float32_and_matches_reference():
    layer, bottoms, tops = make("num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2",
                                (2, 4, 3, 5), dtype=np.float32)
    layer.forward(bottoms, tops)
    assert tops[0].data.dtype == np.float32
    expected = reference_for(layer, bottoms[0].data.astype(np.float64))
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-4, atol=1e-4)


def test_several_bottoms_share_the_weights():
    layer, bottoms, tops = make("num_output: 3 kernel_size: 3 stride: 2", (2, 2, 3, 3), n_bottoms=2)
    layer.forward(bottoms, tops)
    for bottom, top in zip(bottoms, tops):
        np.testing.assert_allclose(top.data, reference_for(layer, bottom.data), rtol=1e-12, atol=1e-12)


def test_reshape_to_a_new_image_size():
    layer, bottoms, tops = make("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (1, 3, 3, 3))
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 4))
    bottoms[0].reshape(x.shape)
    bottoms[0].data[...] = x
    layer.reshape(bottoms, tops)
    assert tops[0].shape == (2, 2, 10, 8)
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, reference_for(layer, x), rtol=1e-12, atol=1e-12)


def test_fcn_bilinear_upsampling_keeps_a_constant_map_inside():
    """FCN's use: per-channel (group = C) 2x upsampling, kernel 4, stride 2,
    pad 1, Caffe's bilinear filler; a constant map stays constant away from
    the border."""
    layer = build_layer('name: "up" type: "Deconvolution" convolution_param { num_output: 3 '
                        'group: 3 kernel_size: 4 stride: 2 pad: 1 bias_term: false '
                        'weight_filler { type: "bilinear" } }')
    bottoms, tops = setup_layer(layer, [np.full((1, 3, 4, 5), 2.5)])
    layer.forward(bottoms, tops)
    assert layer.blobs[0].shape == (3, 1, 4, 4)
    assert tops[0].shape == (1, 3, 8, 10)
    np.testing.assert_allclose(tops[0].data[:, :, 1:-1, 1:-1], 2.5, rtol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_is_the_adjoint_of_convolution(case):
    """<conv(y), x> == <y, deconv(x)> for a Convolution from the deconv's
    top to its bottom with the same weights (no bias)."""
    _, params, shape = case
    params = params.replace("bias_term: false", "") + " bias_term: false"
    deconv = build_layer(spec(params))
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    d_bottoms, d_tops = setup_layer(deconv, [x])
    deconv.forward(d_bottoms, d_tops)
    y = rng.standard_normal(d_tops[0].shape)
    conv_params = params.replace(f"num_output: {deconv.num_output}", f"num_output: {shape[1]}")
    conv = build_layer(spec(conv_params, "conv", "Convolution"))
    c_bottoms, c_tops = setup_layer(conv, [y])
    assert conv.blobs[0].shape == deconv.blobs[0].shape
    conv.blobs[0].data[...] = deconv.blobs[0].data
    conv.forward(c_bottoms, c_tops)
    assert c_tops[0].shape == x.shape
    np.testing.assert_allclose(np.sum(c_tops[0].data * x), np.sum(y * d_tops[0].data), rtol=1e-12)


# -- gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_check(case, plans):
    _, params, shape = case
    x = np.random.default_rng(1).standard_normal(shape)
    result = check_layer(spec(params), [x])
    assert result.passed, result.report()


def test_gradient_check_two_bottoms():
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((1, 2, 3, 3)) for _ in range(2)]
    result = check_layer(spec("num_output: 2 kernel_size: 3 stride: 2 pad: 1"), arrays, num_tops=2)
    assert result.passed, result.report()


def test_parameter_gradients_accumulate_and_propagate_down_false_keeps_bottom_diff():
    layer, bottoms, tops = make("num_output: 4 kernel_size: 3 stride: 2 group: 2", (2, 4, 3, 3))
    check_param_diffs_accumulate(layer, bottoms, tops, seed=4, sentinel=7.0)


SKIP_PATHS = ["backward", pytest.param("backward_gpu", marks=requires_cxx)]


@pytest.mark.parametrize("backward", SKIP_PATHS)
@pytest.mark.parametrize("flags", [(False, True), (True, False), (False, False)])
def test_parameter_gradients_not_needed_are_left_alone(flags, backward):
    layer, bottoms, tops = make("num_output: 2 kernel_size: 3 stride: 2", (1, 2, 3, 3))
    layer.param_propagate_down = flags
    layer.forward(bottoms, tops)
    tops[0].diff[...] = np.random.default_rng(6).standard_normal(tops[0].shape)
    getattr(layer, backward)(tops, [True], bottoms)
    for needed, blob in zip(flags, layer.blobs):
        assert np.any(blob.diff != 0) == needed
    assert np.any(bottoms[0].diff != 0)


# -- GPU path -----------------------------------------------------------------------


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_path_on_host(case, dtype):
    _, params, shape = case
    x = np.random.default_rng(7).standard_normal(shape)
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    run_gpu_path_on_host(spec(params), [x], dtype=dtype, **tolerance)


@requires_cxx
def test_gpu_path_on_host_two_bottoms():
    rng = np.random.default_rng(8)
    arrays = [rng.standard_normal((2, 2, 3, 4)) for _ in range(2)]
    run_gpu_path_on_host(spec("num_output: 3 kernel_size: 3 stride: 2 pad: 1"), arrays,
                         dtype=np.float64, num_tops=2, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_matches_cpu(case, dtype):
    _, params, shape = case
    x = np.random.default_rng(9).standard_normal(shape)
    compare_devices(spec(params), [x], dtype=dtype)


# -- errors -------------------------------------------------------------------------

ERRORS = [
    ("channels_not_divisible_by_group", "num_output: 4 kernel_size: 3 group: 2", (1, 3, 3, 3),
     ShapeError, r"bottom 'bottom\[0\]' expected channels divisible by group 2, found shape \(1, 3, 3, 3\)"),
    ("output_size_not_positive", "num_output: 2 kernel_size: 1 pad: 1", (1, 2, 2, 3),
     ShapeError, r"positive output size .* \(height, width\) \(0, 1\).*found shape \(1, 2, 2, 3\)"),
    ("num_output_not_divisible_by_group", "num_output: 3 kernel_size: 3 group: 2", (1, 2, 3, 3),
     NetDefinitionError, "num_output 3 is not divisible by group 2"),
    ("no_kernel", "num_output: 2", (1, 2, 3, 3),
     NetDefinitionError, r"convolution_param needs kernel_size \(or kernel_h and kernel_w\)"),
    ("kernel_h_alone", "num_output: 2 kernel_h: 3", (1, 2, 3, 3),
     NetDefinitionError, "kernel_h and kernel_w must be given together"),
    ("kernel_both_ways", "num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 2, 3, 3),
     NetDefinitionError, "give either kernel_size or kernel_h/kernel_w, not both"),
    ("three_strides", "num_output: 2 kernel_size: 3 stride: 1 stride: 2 stride: 1", (1, 2, 3, 3),
     NetDefinitionError, r"stride takes 1 value or 2 \(one per spatial axis\), found 3"),
    ("zero_stride", "num_output: 2 kernel_size: 3 stride: 0", (1, 2, 3, 3),
     NetDefinitionError, r"stride must be >= 1 on each axis, found \(0, 0\)"),
    ("no_num_output", "kernel_size: 3", (1, 2, 3, 3),
     NetDefinitionError, "convolution_param.num_output must be >= 1, found 0"),
    ("zero_group", "num_output: 2 kernel_size: 3 group: 0", (1, 2, 3, 3),
     NetDefinitionError, "convolution_param.group must be >= 1, found 0"),
    ("axis", "num_output: 2 kernel_size: 3 axis: 2", (1, 2, 3, 3),
     NetDefinitionError, "convolution_param.axis must be the channel axis 1 .* found 2"),
    ("not_4d", "num_output: 2 kernel_size: 3", (2, 3, 4),
     ShapeError, r"expected a 4-D blob \(N, C, H, W\), found shape \(2, 3, 4\)"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors(case):
    _, params, shape, error, message = case
    with pytest.raises(error, match=r"layer 'deconv' \(type Deconvolution\): .*" + message):
        make(params, shape)


def test_error_bottoms_of_different_shapes():
    layer = build_layer(spec("num_output: 2 kernel_size: 3"))
    rng = np.random.default_rng(0)
    with pytest.raises(ShapeError, match=r"bottom 'bottom\[1\]' expected the shape of bottom "
                                         r"'bottom\[0\]' \(1, 2, 3, 3\), found shape \(1, 2, 4, 3\)"):
        setup_layer(layer, [rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((1, 2, 4, 3))],
                    num_tops=2)


def test_error_top_count():
    layer = build_layer(spec("num_output: 2 kernel_size: 3"))
    with pytest.raises(NetDefinitionError, match=r"needs one top per bottom, found 1 bottom\(s\) "
                                                 r"and 2 top\(s\)"):
        setup_layer(layer, [np.zeros((1, 2, 3, 3))], num_tops=2)


def test_error_channels_changed_after_setup():
    layer, bottoms, tops = make("num_output: 2 kernel_size: 3", (1, 2, 3, 3))
    bottoms[0].reshape((1, 4, 3, 3))
    with pytest.raises(ShapeError, match=r"expected 2 channels \(the weights are \(2, 2, 3, 3\)\), "
                                         r"found shape \(1, 4, 3, 3\)"):
        layer.reshape(bottoms, tops)
