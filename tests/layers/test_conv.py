"""Convolution: forward against a plain-loop reference, float64 gradient
checks, the host-run im2col/col2im GPU path, GPU parity, and every error."""
import numpy as np
import pytest

import layers.conv_plans as conv
import layers.cpu_threads as cpu_threads
import layers.conv_winograd as winograd
from layers.workspace import Workspace
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import check_param_diffs_accumulate

FILLERS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def spec(params, name="conv"):
    return f'name: "{name}" type: "Convolution" convolution_param {{ {params} {FILLERS} }}'


# (id, convolution_param fields, bottom shape (N, C, H, W))
CASES = [
    ("3x3_pad1", "num_output: 4 kernel_size: 3 pad: 1", (2, 3, 6, 7)),
    ("grouped_strided_asym_pad", "num_output: 6 kernel_size: 3 stride: 2 pad_h: 1 pad_w: 2 group: 2",
     (2, 4, 7, 6)),
    ("stride_over_kernel", "num_output: 3 kernel_size: 2 stride: 3", (2, 2, 8, 9)),
    ("dilated", "num_output: 3 kernel_size: 3 dilation: 2 pad: 2", (2, 3, 7, 8)),
    ("dilation_per_axis_strided", "num_output: 2 kernel_size: 3 dilation: 2 dilation: 1 "
                                  "stride: 2 stride: 1 pad: 1", (1, 2, 9, 6)),
    ("kernel_h_ne_kernel_w", "num_output: 3 kernel_h: 3 kernel_w: 2 pad: 1 pad: 0", (2, 2, 5, 6)),
    ("kernel_hw_strided", "num_output: 2 kernel_h: 1 kernel_w: 3 stride_h: 2 stride_w: 1 pad_w: 1",
     (2, 3, 5, 5)),
    ("column_kernel_3x1", "num_output: 3 kernel_h: 3 kernel_w: 1 pad_h: 1", (2, 2, 5, 4)),
    ("row_kernel_1x3_dilated", "num_output: 2 kernel_h: 1 kernel_w: 3 dilation: 2 pad_w: 2",
     (1, 3, 4, 6)),
    ("1x1_map", "num_output: 4 kernel_size: 3 pad: 1", (2, 3, 1, 1)),
    ("pointwise", "num_output: 5 kernel_size: 1", (2, 3, 4, 3)),
    ("pointwise_grouped_no_bias", "num_output: 4 kernel_size: 1 group: 2 bias_term: false",
     (2, 4, 3, 3)),
    ("1x1_stride2", "num_output: 3 kernel_size: 1 stride: 2", (2, 3, 5, 6)),
    ("1x1_padded", "num_output: 2 kernel_size: 1 pad: 1", (1, 2, 3, 2)),
    ("pad_beyond_kernel", "num_output: 2 kernel_size: 2 pad: 2", (2, 2, 3, 4)),
    ("no_bias_grouped_dilated", "num_output: 4 kernel_size: 3 dilation: 2 pad: 1 group: 2 "
                                "bias_term: false", (2, 4, 6, 7)),
    ("depthwise", "num_output: 3 kernel_size: 3 pad: 1 group: 3", (2, 3, 4, 5)),
]
IDS = [c[0] for c in CASES]


def reference_conv(x, weight, bias, stride, pad, dilation, group):
    """Plain loops over every output element and every kernel tap."""
    n_img, channels, height, width = x.shape
    outputs, per_group, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    out_h = (height + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    out_w = (width + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    out_per_group = outputs // group
    out = np.zeros((n_img, outputs, out_h, out_w))
    for n in range(n_img):
        for o in range(outputs):
            g = o // out_per_group
            for y in range(out_h):
                for xo in range(out_w):
                    total = bias[o] if bias is not None else 0.0
                    for c in range(per_group):
                        for i in range(kh):
                            for j in range(kw):
                                h = y * sh - ph + i * dh
                                w = xo * sw - pw + j * dw
                                if 0 <= h < height and 0 <= w < width:
                                    total += weight[o, c, i, j] * x[n, g * per_group + c, h, w]
                    out[n, o, y, xo] = total
    return out


def make(params, shape, dtype=np.float64, seed=0, n_bottoms=1):
    layer = build_layer(spec(params), dtype=dtype)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape).astype(dtype) for _ in range(n_bottoms)]
    bottoms, tops = setup_layer(layer, arrays, num_tops=n_bottoms)
    return layer, bottoms, tops


def reference_for(layer, x):
    bias = layer.blobs[1].data if layer.bias_term else None
    return reference_conv(x, layer.blobs[0].data, bias, layer.stride, layer.pad,
                          layer.dilation, layer.group)


def force_winograd(monkeypatch, row_chunks=False):
    """Every 3x3 stride-1 layer made after this takes the WinogradPlan;
    with ``row_chunks``, one tile row per GEMM and the transforms on two
    threads however small (chunk and thread boundaries exercised)."""
    monkeypatch.setattr(conv, "SMALL_COLUMNS", 0)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    if row_chunks:
        monkeypatch.setattr(winograd, "CHUNK_TILES", 1)
        monkeypatch.setattr(winograd, "PARALLEL_BYTES", 0)


def force_threads(monkeypatch, threads=3):
    """Every convolution splits its rows (Winograd: its 16 GEMMs) between
    ``threads`` threads however small, on any machine: where NumPy's BLAS
    is no OpenBLAS, stand-in thread-count functions let the split run."""
    monkeypatch.setattr(cpu_threads, "SPLIT_GEMMS", True)
    monkeypatch.setattr(cpu_threads, "PARALLEL_MACS", 0)
    monkeypatch.setattr(cpu_threads, "worker_count", lambda: threads)
    if cpu_threads.openblas_functions() is None:
        count = [1]
        monkeypatch.setattr(cpu_threads, "openblas_functions",
                            lambda: (lambda: count[0], lambda n: count.__setitem__(0, n)))


@pytest.fixture(params=["default", "row_shift", "row_shift_row_chunks", "im2col_row_chunks",
                        "winograd", "winograd_row_chunks", "row_shift_threads",
                        "im2col_row_chunks_threads", "winograd_threads"])
def chunking(request, monkeypatch):
    """Run every CPU strategy at these small sizes: the default (im2col for
    small maps and strides), the row-shift plan for every stride-1 case,
    Winograd for every 3x3 stride-1 case, each with one output (tile) row
    per chunk so chunk boundaries are exercised, and each with its rows
    split between three threads (more threads than some layers have rows)."""
    if request.param.endswith("threads"):
        force_threads(monkeypatch)
    if request.param.startswith("winograd"):
        force_winograd(monkeypatch, "row_chunks" in request.param)
        return request.param
    if request.param.startswith("row_shift"):
        monkeypatch.setattr(conv, "SMALL_COLUMNS", 0)
    if "row_chunks" in request.param:
        monkeypatch.setattr(conv, "CHUNK_ELEMENTS", 1)
        monkeypatch.setattr(conv, "MIN_CHUNK_COLUMNS", 1)
    return request.param


# -- forward ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_reference(case, chunking):
    _, params, shape = case
    layer, bottoms, tops = make(params, shape)
    layer.forward(bottoms, tops)
    expected = reference_for(layer, bottoms[0].data)
    assert tops[0].shape == expected.shape
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)


def test_parameter_shapes_and_output_size_formula():
    layer, _, tops = make("num_output: 6 kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 1 pad_w: 0 "
                          "dilation: 2 group: 3", (1, 9, 11, 8))
    assert layer.blobs[0].shape == (6, 3, 3, 2)
    assert layer.blobs[1].shape == (6,)
    # (11 + 2 - (2 * 2 + 1)) // 2 + 1 = 5, (8 + 0 - (2 * 1 + 1)) // 2 + 1 = 3
    assert tops[0].shape == (1, 6, 5, 3)
    layer, _, _ = make("num_output: 2 kernel_size: 3 bias_term: false", (1, 1, 3, 3))
    assert len(layer.blobs) == 1


def test_float32_stays_float32_and_matches_reference(chunking):
    layer, bottoms, tops = make("num_output: 4 kernel_size: 3 pad: 1 group: 2", (2, 4, 6, 5),
                                dtype=np.float32)
    layer.forward(bottoms, tops)
    assert tops[0].data.dtype == np.float32
    expected = reference_for(layer, bottoms[0].data.astype(np.float64))
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-4, atol=1e-4)
    tops[0].diff[...] = 1
    layer.backward(tops, [True], bottoms)
    assert bottoms[0].diff.dtype == np.float32 and layer.blobs[0].diff.dtype == np.float32


def test_several_bottoms_share_the_weights():
    layer, bottoms, tops = make("num_output: 3 kernel_size: 3 pad: 1", (2, 2, 4, 5), n_bottoms=2)
    layer.forward(bottoms, tops)
    for bottom, top in zip(bottoms, tops):
        np.testing.assert_allclose(top.data, reference_for(layer, bottom.data), rtol=1e-12, atol=1e-12)


def test_reshape_to_a_new_image_size():
    layer, bottoms, tops = make("num_output: 3 kernel_size: 3 pad: 1 stride: 2", (1, 2, 5, 6))
    layer.forward(bottoms, tops)
    bottoms[0].reshape((2, 2, 8, 3))
    bottoms[0].data[...] = np.random.default_rng(3).standard_normal((2, 2, 8, 3))
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, reference_for(layer, bottoms[0].data), rtol=1e-12,
                               atol=1e-12)


# -- Winograd F(2x2, 3x3) ----------------------------------------------------------------

# (id, convolution_param fields, bottom shape): 3x3 stride 1, odd and even
# output sizes, dilation (pad == dilation and not), groups, several images.
WINOGRAD_CASES = [
    ("even_output", "num_output: 4 kernel_size: 3 pad: 1", (2, 3, 6, 8)),
    ("odd_output", "num_output: 3 kernel_size: 3 pad: 1", (1, 2, 7, 5)),
    ("no_pad", "num_output: 2 kernel_size: 3", (2, 3, 6, 7)),
    ("dilation2_pad2", "num_output: 3 kernel_size: 3 dilation: 2 pad: 2", (2, 3, 9, 8)),
    ("dilation2_pad1_odd", "num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (1, 2, 8, 7)),
    ("dilation_per_axis", "num_output: 2 kernel_size: 3 dilation: 2 dilation: 1 pad: 2 pad: 1",
     (2, 2, 7, 6)),
    ("grouped", "num_output: 4 kernel_size: 3 pad: 1 group: 2", (3, 4, 5, 6)),
]
WINOGRAD_IDS = [c[0] for c in WINOGRAD_CASES]


def reference_data_gradient(top_diff, weight, pad, dilation, group):
    """d(sum(top_diff * conv(x))) / dx of a 3x3 stride-1 convolution: the
    full correlation of top_diff with each group's weights transposed and
    flipped, pad' = 2 * dilation - pad, by ``reference_conv``."""
    outputs, per_group = weight.shape[:2]
    flipped = weight[:, :, ::-1, ::-1]
    per_out = outputs // group
    adjoint = np.concatenate([flipped[g * per_out:(g + 1) * per_out].transpose(1, 0, 2, 3)
                              for g in range(group)])
    full_pad = tuple(2 * d - p for p, d in zip(pad, dilation))
    return reference_conv(top_diff, adjoint, None, (1, 1), full_pad, dilation, group)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=WINOGRAD_IDS)
def test_winograd_forward_and_data_gradient_match_reference(case, dtype, monkeypatch):
    """Forward with bias and ReLU, and the data gradient, on the Winograd
    path against the plain references: float64 to 1e-10, float32 to 1e-5
    of the output's scale (Winograd differs from direct sums by rounding)."""
    _, params, shape = case
    force_winograd(monkeypatch)
    layer, bottoms, tops = make(params, shape, dtype=dtype)
    assert isinstance(layer.forward_plan, winograd.WinogradPlan)
    assert isinstance(layer.data_plan, winograd.WinogradPlan)
    layer.workspace = PoisonedWorkspace()
    rng = np.random.default_rng(13)
    weight, bias = (rng.standard_normal(layer.blobs[0].shape).astype(dtype),
                    rng.standard_normal(layer.num_output).astype(dtype))
    x = bottoms[0].data.astype(np.float64)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    layer.forward_with(bottoms, tops, weight, bias, relu=True)
    expected = np.maximum(reference_conv(x, weight.astype(np.float64), bias, layer.stride,
                                         layer.pad, layer.dilation, layer.group), 0)
    np.testing.assert_allclose(tops[0].data, expected, rtol=0, atol=tol * np.abs(expected).max())
    layer.blobs[0].data[...] = weight
    tops[0].diff[...] = rng.standard_normal(tops[0].shape)
    layer.param_propagate_down = (False, False)
    layer.backward(tops, [True], bottoms)
    expected = reference_data_gradient(tops[0].diff.astype(np.float64), weight.astype(np.float64),
                                       layer.pad, layer.dilation, layer.group)
    assert bottoms[0].diff.shape == expected.shape
    np.testing.assert_allclose(bottoms[0].diff, expected, rtol=0, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=WINOGRAD_IDS)
def test_winograd_gradient_check(case, monkeypatch):
    """Data gradient by Winograd, weight gradient by the ShiftPlan's GEMM."""
    _, params, shape = case
    force_winograd(monkeypatch, row_chunks=True)
    result = check_layer(spec(params), [np.random.default_rng(14).standard_normal(shape)],
                         max_per_blob=80)
    assert result.passed, result.report()


def test_winograd_is_chosen_for_many_channels_only():
    """The rule of make_plans (conv_plans.WINOGRAD_MIN_CHANNELS)."""
    big = conv.make_plans(256, 38, 63, 256, (3, 3), (1, 1), (1, 1), (1, 1))
    dilated = conv.make_plans(512, 38, 63, 512, (3, 3), (2, 2), (1, 1), (2, 2))
    few = conv.make_plans(64, 150, 250, 64, (3, 3), (1, 1), (1, 1), (1, 1))
    strided = conv.make_plans(256, 38, 63, 256, (3, 3), (1, 1), (2, 2), (1, 1))
    pointwise = conv.make_plans(256, 38, 63, 256, (1, 1), (0, 0), (1, 1), (1, 1))
    assert all(isinstance(p, winograd.WinogradPlan) for p in big + dilated)
    assert isinstance(big[0].fallback, conv.ShiftPlan)
    assert not any(isinstance(p, winograd.WinogradPlan) for p in few + strided + pointwise)


# -- backward -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_check(case, chunking):
    _, params, shape = case
    result = check_layer(spec(params), [np.random.default_rng(1).standard_normal(shape)],
                         max_per_blob=80)
    assert result.passed, result.report()


def test_gradient_check_two_bottoms():
    params = "num_output: 2 kernel_size: 3 stride: 2 pad: 1"
    rng = np.random.default_rng(2)
    result = check_layer(spec(params), [rng.standard_normal((1, 2, 5, 4)),
                                        rng.standard_normal((1, 2, 5, 4))], num_tops=2)
    assert result.passed, result.report()


def test_parameter_gradients_accumulate_and_propagate_down_false_keeps_bottom_diff():
    layer, bottoms, tops = make("num_output: 2 kernel_size: 3 pad: 1", (1, 2, 4, 4))
    check_param_diffs_accumulate(layer, bottoms, tops, seed=4, sentinel=7.0)


# -- forward_with, skipped parameter gradients ----------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_with_given_weights_bias_and_relu(case, chunking):
    _, params, shape = case
    layer, bottoms, tops = make(params, shape)
    rng = np.random.default_rng(8)
    weight = rng.standard_normal(layer.blobs[0].shape)
    bias = rng.standard_normal(layer.num_output)
    own = [b.data.copy() for b in layer.blobs]
    x = bottoms[0].data
    for given_bias, relu in ((bias, True), (None, True), (bias, False)):
        layer.forward_with(bottoms, tops, weight, given_bias, relu=relu)
        expected = reference_conv(x, weight, given_bias, layer.stride, layer.pad, layer.dilation,
                                  layer.group)
        if relu:
            expected = np.maximum(expected, 0)
        np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)
    for blob, data in zip(layer.blobs, own):
        np.testing.assert_array_equal(blob.data, data)


def _gradients(built, flags=(), propagate=True, backward="backward"):
    """(weight diff, bias diff, bottom diff) of ``built`` (layer, bottoms,
    tops) after one backward from diffs preset to sentinels, with
    ``param_propagate_down = flags``."""
    layer, bottoms, tops = built
    layer.param_propagate_down = flags
    layer.forward(bottoms, tops)
    tops[0].diff[...] = np.random.default_rng(10).standard_normal(tops[0].shape)
    for blob in layer.blobs:
        blob.diff[...] = 5.0
    bottoms[0].diff[...] = 7.0
    getattr(layer, backward)(tops, [propagate], bottoms)
    return [layer.blobs[0].diff, layer.blobs[1].diff, bottoms[0].diff]


SKIP_PATHS = ["backward", pytest.param("backward_gpu", marks=requires_cxx)]


@pytest.mark.parametrize("backward", SKIP_PATHS)
@pytest.mark.parametrize("flags", [(False, True), (True, False), (False, False)])
@pytest.mark.parametrize("params", ["num_output: 3 kernel_size: 3 pad: 1",
                                    "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2"])
def test_parameter_gradients_not_needed_are_skipped(params, flags, backward):
    shape = (2, 2, 5, 6)
    full = _gradients(make(params, shape, seed=9), backward=backward)
    found = _gradients(make(params, shape, seed=9), flags, backward=backward)
    for diff, expected, needed in zip(found[:2], full[:2], flags):
        if needed:
            np.testing.assert_allclose(diff, expected, rtol=1e-12)
        else:
            assert np.all(diff == 5.0)
    np.testing.assert_allclose(found[2], full[2], rtol=1e-12)


@pytest.mark.parametrize("backward", SKIP_PATHS)
def test_backward_does_no_work_when_nothing_needs_a_gradient(backward, monkeypatch):
    params, shape = "num_output: 3 kernel_size: 3 pad: 1", (1, 2, 5, 6)
    layer, bottoms, tops = make(params, shape)

    def forbidden(*args):
        raise AssertionError("gradient work done though no gradient is needed")

    for plan in (layer.forward_plan, layer.data_plan):
        monkeypatch.setattr(plan, "weight_gradient", forbidden)
        monkeypatch.setattr(plan, "data_gradient", forbidden)
    monkeypatch.setattr(layer, "_columns", forbidden)
    monkeypatch.setattr(layer, "_data_gradient_gpu", forbidden)
    found = _gradients((layer, bottoms, tops), (False, False), propagate=False, backward=backward)
    assert np.all(found[0] == 5.0) and np.all(found[1] == 5.0) and np.all(found[2] == 7.0)


# -- scratch from a shared Workspace -------------------------------------------------


class PoisonedWorkspace(Workspace):
    """Hands out every scratch array filled with NaN, so a plan that relies
    on what scratch held before (a zeroed border, zeroed garbage columns)
    gives NaN instead of passing by luck."""

    def array(self, name, shape, dtype):
        out = super().array(name, shape, dtype)
        out.fill(np.nan)
        return out


def _run_forward_backward(layer, bottoms, tops, seed):
    layer.forward(bottoms, tops)
    tops[0].diff[...] = np.random.default_rng(seed).standard_normal(tops[0].shape)
    for blob in layer.blobs:
        blob.diff[...] = 0
    layer.backward(tops, [True], bottoms)
    return [tops[0].data.copy(), bottoms[0].diff.copy()] + [b.diff.copy() for b in layer.blobs]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_scratch_contents_are_never_relied_on(case, chunking):
    _, params, shape = case
    expected = _run_forward_backward(*make(params, shape), seed=11)
    layer, bottoms, tops = make(params, shape)
    layer.workspace = PoisonedWorkspace()
    found = _run_forward_backward(layer, bottoms, tops, seed=11)
    for e, f in zip(expected, found):
        np.testing.assert_allclose(f, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layers_sharing_one_workspace_match_separate_ones(dtype, chunking):
    """Padded, strided, dilated and pointwise layers of different shapes,
    interleaved forward and backward on one Workspace."""
    layer_cases = [("num_output: 4 kernel_size: 3 pad: 1", (2, 3, 6, 7)),
                   ("num_output: 6 kernel_size: 3 stride: 2 pad: 2 group: 2", (1, 4, 9, 8)),
                   ("num_output: 3 kernel_size: 3 dilation: 2 pad: 2", (2, 5, 7, 5)),
                   ("num_output: 5 kernel_size: 1", (1, 6, 4, 3))]
    separate = [_run_forward_backward(*make(p, s, dtype=dtype), seed=12) for p, s in layer_cases]
    shared = Workspace()
    built = [make(p, s, dtype=dtype) for p, s in layer_cases]
    for layer, _, _ in built:
        layer.workspace = shared
    for layer, bottoms, tops in built:
        layer.forward(bottoms, tops)
    for layer, bottoms, tops in reversed(built):
        tops[0].diff[...] = np.random.default_rng(12).standard_normal(tops[0].shape).astype(dtype)
        for blob in layer.blobs:
            blob.diff[...] = 0
        layer.backward(tops, [True], bottoms)
    assert shared.nbytes > 0
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)
    for (layer, bottoms, tops), expected in zip(built, separate):
        found = [tops[0].data, bottoms[0].diff] + [b.diff for b in layer.blobs]
        for e, f in zip(expected, found):
            np.testing.assert_allclose(f, e, **tol)


# -- the GPU path, host-run (im2col / col2im through the C++ shim) ------------------------


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_path_on_host(case, dtype):
    _, params, shape = case
    rng = np.random.default_rng(5)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    run_gpu_path_on_host(spec(params), [rng.standard_normal(shape)], dtype=dtype, **tol)


@requires_cxx
def test_im2col_col2im_kernels_on_host():
    """im2col against the definition; col2im is its adjoint:
    <im2col(x), c> == <x, col2im(c)>."""
    from layers.kernels import launch
    rng = np.random.default_rng(6)
    c, h, w, kh, kw, ph, pw, sh, sw, dh, dw = 2, 5, 7, 3, 2, 1, 2, 2, 1, 1, 2
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    image = rng.standard_normal((c, h, w))
    col = np.empty((c * kh * kw, ho * wo))
    args = tuple(np.int32(v) for v in (h, w, kh, kw, ph, pw, sh, sw, dh, dw, ho, wo))
    launch("im2col.cu", "im2col", np.float64, col.size, (np.int64(col.size), image) + args + (col,))
    expected = np.zeros((c, kh, kw, ho, wo))
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                for y in range(ho):
                    for x in range(wo):
                        hh, ww = y * sh - ph + i * dh, x * sw - pw + j * dw
                        if 0 <= hh < h and 0 <= ww < w:
                            expected[ci, i, j, y, x] = image[ci, hh, ww]
    np.testing.assert_array_equal(col, expected.reshape(col.shape))
    probe = rng.standard_normal(col.shape)
    back = np.empty_like(image)
    launch("im2col.cu", "col2im", np.float64, back.size, (np.int64(back.size), probe) + args + (back,))
    np.testing.assert_allclose(np.sum(col * probe), np.sum(image * back), rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_matches_cpu(case, dtype):
    _, params, shape = case
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    compare_devices(spec(params), [np.random.default_rng(7).standard_normal(shape)], dtype=dtype, **tol)


# -- errors ---------------------------------------------------------------------------


def test_channels_not_divisible_by_group():
    with pytest.raises(ShapeError, match=r"layer 'conv'.*bottom 'bottom\[0\]' expected channels "
                                         r"divisible by group 2, found shape \(1, 3, 4, 4\)"):
        make("num_output: 4 kernel_size: 3 group: 2", (1, 3, 4, 4))


def test_num_output_not_divisible_by_group():
    with pytest.raises(NetDefinitionError, match=r"layer 'conv'.*num_output 3 is not divisible by "
                                                 r"group 2 \(bottom 'bottom\[0\]'"):
        make("num_output: 3 kernel_size: 3 group: 2", (1, 4, 4, 4))


def test_kernel_larger_than_padded_input():
    with pytest.raises(ShapeError, match=r"layer 'conv'.*bottom 'bottom\[0\]' expected width \+ 2 \* pad "
                                         r"\(3 \+ 2 \* 1\) at least the dilated kernel extent 7, "
                                         r"found shape \(1, 1, 9, 3\)"):
        make("num_output: 1 kernel_size: 4 dilation: 2 pad: 1", (1, 1, 9, 3))


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 2, 3, 4, 5)])
def test_bottom_not_4d(shape):
    with pytest.raises(ShapeError, match=r"layer 'conv'.*bottom 'bottom\[0\]' expected a 4-D blob "
                                         r"\(N, C, H, W\), found shape"):
        make("num_output: 1 kernel_size: 1", shape)


def test_axis_other_than_channels_is_rejected():
    with pytest.raises(NetDefinitionError, match=r"layer 'conv'.*axis must be the channel axis 1 "
                                                 r"of the 4-D bottom 'bottom\[0\]', found 2"):
        make("num_output: 1 kernel_size: 1 axis: 2", (1, 2, 3, 3))
    make("num_output: 1 kernel_size: 1 axis: -3", (1, 2, 3, 3))  # -3 is axis 1 of a 4-D blob


def test_channel_count_change_after_setup():
    layer, bottoms, tops = make("num_output: 2 kernel_size: 1", (1, 3, 2, 2))
    bottoms[0].reshape((1, 4, 2, 2))
    with pytest.raises(ShapeError, match=r"bottom 'bottom\[0\]' expected 3 channels \(the weights "
                                         r"are \(2, 3, 1, 1\)\), found shape \(1, 4, 2, 2\)"):
        layer.reshape(bottoms, tops)


def test_bottoms_of_different_shapes():
    layer = build_layer(spec("num_output: 2 kernel_size: 1"))
    with pytest.raises(ShapeError, match=r"bottom 'bottom\[1\]' expected the shape of bottom "
                                         r"'bottom\[0\]' \(1, 2, 3, 3\), found shape \(1, 2, 4, 3\)"):
        setup_layer(layer, [np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 4, 3))], num_tops=2)


def test_tops_must_pair_with_bottoms():
    layer = build_layer(spec("num_output: 2 kernel_size: 1"))
    with pytest.raises(NetDefinitionError, match=r"one top per bottom, found 1 bottom\(s\) and 2 top"):
        setup_layer(layer, [np.zeros((1, 2, 3, 3))], num_tops=2)


@pytest.mark.parametrize("params,message", [
    ("num_output: 2", r"convolution_param needs kernel_size \(or kernel_h and kernel_w\)"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", r"give either kernel_size or kernel_h/kernel_w, not both"),
    ("num_output: 2 kernel_h: 3", r"kernel_h and kernel_w must be given together"),
    ("num_output: 2 kernel_size: 1 kernel_size: 2 kernel_size: 3", r"kernel_size takes 1 value or 2"),
    ("num_output: 2 kernel_size: 0", r"kernel must be >= 1 on each axis, found \(0, 0\)"),
    ("num_output: 2 kernel_size: 1 stride: 0", r"stride must be >= 1"),
    ("num_output: 2 kernel_size: 1 dilation: 0", r"dilation must be >= 1"),
    ("kernel_size: 1", r"convolution_param.num_output must be >= 1, found 0"),
    ("num_output: 2 kernel_size: 1 group: 0", r"convolution_param.group must be >= 1, found 0"),
])
def test_bad_parameters(params, message):
    with pytest.raises(NetDefinitionError, match=r"layer 'conv' \(type Convolution\): " + message):
        make(params, (1, 2, 3, 3))


def test_zero_channel_input_is_refused_before_the_fillers():
    """A bottom with no channels: named, before xavier/msra meet a zero fan."""
    with pytest.raises(ShapeError, match=r"layer 'conv'.*bottom 'bottom\[0\]' expected at least 1 "
                                         r"channel \(axis 1\), found shape \(2, 0, 5, 5\)"):
        setup_layer(build_layer('name: "conv" type: "Convolution" convolution_param { '
                                'num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } }'),
                    [np.ones((2, 0, 5, 5))])


@pytest.mark.parametrize("field", ["kernel_size: 2147483648", "stride: 4294967295",
                                   "pad: 2147483648", "dilation: 2147483648"])
def test_geometry_must_fit_int32(field):
    name = field.split("_")[0].split(":")[0]
    with pytest.raises(NetDefinitionError, match=rf"layer 'conv'.*{name} must fit a 32-bit int "
                                                 r"\(at most 2147483647\)"):
        make(f"num_output: 1 {field}" + ("" if name == "kernel" else " kernel_size: 1"),
             (1, 1, 3, 3))


def test_scratch_bytes_covers_a_padded_image_and_its_columns():
    layer, _, _ = make("num_output: 2 kernel_size: 3 pad: 1 stride: 2", (2, 3, 5, 7))
    # padded copy 3 x 7 x 9, columns (3 * 3 * 3, 3 * 4), float64
    assert layer.scratch_bytes() == (3 * 7 * 9 + 27 * 12) * 8
