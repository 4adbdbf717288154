"""Pooling: forward and backward against a plain loop reference of Caffe's
rules (ceil/floor output size, the dropped last window, AVE's area clipped to
the padded input, MAX's first-maximum argmax), both CPU loop strategies,
float64 gradient checks, the GPU path host-run and on a GPU, every error."""
import math

import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host


def spec(pool, fields, tops=1):
    names = " ".join(f'top: "t{i}"' for i in range(tops))
    return (f'name: "pool" type: "Pooling" bottom: "x" {names} '
            f'pooling_param {{ pool: {pool} {fields} }}')


def distinct(shape, seed=0):
    """Values that are all different (no max ties), spaced 0.1 apart."""
    rng = np.random.default_rng(seed)
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 3.0


def reference(x, pool, kernel, stride, pad, ceil_mode=True, global_pooling=False):
    """Caffe's pooling, one window at a time. Returns (top, argmax)."""
    n, c, height, width = x.shape
    if global_pooling:
        kernel, stride, pad = (height, width), (1, 1), (0, 0)
    (kh, kw), (sh, sw), (pad_h, pad_w) = kernel, stride, pad

    def out_size(size, k, s, p):
        ratio = (size + 2 * p - k) / s
        out = (math.ceil(ratio) if ceil_mode else math.floor(ratio)) + 1
        # A window starting inside the padding is dropped (only when padding).
        if (pad_h > 0 or pad_w > 0) and (out - 1) * s >= size + p:
            out -= 1
        return out

    ph_count, pw_count = out_size(height, kh, sh, pad_h), out_size(width, kw, sw, pad_w)
    top = np.zeros((n, c, ph_count, pw_count))
    argmax = np.full(top.shape, -1, dtype=np.int64)
    for i in range(n):
        for j in range(c):
            for ph in range(ph_count):
                for pw in range(pw_count):
                    hstart, wstart = ph * sh - pad_h, pw * sw - pad_w
                    if pool == "MAX":
                        best = None
                        for h in range(max(hstart, 0), min(hstart + kh, height)):
                            for w in range(max(wstart, 0), min(wstart + kw, width)):
                                if best is None or x[i, j, h, w] > best:
                                    best = x[i, j, h, w]
                                    argmax[i, j, ph, pw] = h * width + w
                        top[i, j, ph, pw] = 0.0 if best is None else best
                    else:
                        hend = min(hstart + kh, height + pad_h)
                        wend = min(wstart + kw, width + pad_w)
                        area = (hend - hstart) * (wend - wstart)
                        total = 0.0
                        for h in range(max(hstart, 0), min(hend, height)):
                            for w in range(max(wstart, 0), min(wend, width)):
                                total += x[i, j, h, w]
                        top[i, j, ph, pw] = total / area if area > 0 else 0.0
    return top, argmax


def reference_backward(x_shape, top_diff, pool, argmax, kernel, stride, pad):
    """Bottom diff, one top element at a time: MAX to its argmax, AVE spread
    evenly (by the padded-clipped area) over the window's real cells."""
    n, c, height, width = x_shape
    (kh, kw), (sh, sw), (pad_h, pad_w) = kernel, stride, pad
    dx = np.zeros(x_shape)
    for i, j, ph, pw in np.ndindex(*top_diff.shape):
        g = top_diff[i, j, ph, pw]
        if pool == "MAX":
            a = argmax[i, j, ph, pw]
            if a >= 0:
                dx[i, j, a // width, a % width] += g
            continue
        hstart, wstart = ph * sh - pad_h, pw * sw - pad_w
        hend, wend = min(hstart + kh, height + pad_h), min(wstart + kw, width + pad_w)
        area = (hend - hstart) * (wend - wstart)
        for h in range(max(hstart, 0), min(hend, height)):
            for w in range(max(wstart, 0), min(wend, width)):
                dx[i, j, h, w] += g / area
    return dx


# (fields, bottom shape, kernel, stride, pad, ceil_mode, global) for the reference.
CASES = [
    # ceil mode, the last window runs past the map (no pad)
    ("kernel_size: 3 stride: 2", (2, 3, 7, 9), (3, 3), (2, 2), (0, 0), True, False),
    # padding, last window clipped at the padded edge (AVE area 2 x 2)
    ("kernel_size: 3 stride: 2 pad: 1", (2, 2, 6, 6), (3, 3), (2, 2), (1, 1), True, False),
    # the last window would start inside the padding: dropped (3 -> 2 rows)
    ("kernel_size: 2 stride: 3 pad: 1", (1, 2, 4, 7), (2, 2), (3, 3), (1, 1), True, False),
    # stride > kernel, gaps between windows
    ("kernel_size: 2 stride: 3", (1, 2, 8, 7), (2, 2), (3, 3), (0, 0), True, False),
    # stride > kernel without pad: ceil adds a window with no real cell
    ("kernel_size: 1 stride: 3", (1, 2, 5, 5), (1, 1), (3, 3), (0, 0), True, False),
    # rectangular kernel, per-axis stride and pad
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
     (2, 2, 7, 5), (3, 2), (2, 1), (1, 0), True, False),
    # pad on one axis only: Caffe's drop rule then applies to both axes
    ("kernel_size: 2 stride_h: 3 stride_w: 2 pad_h: 0 pad_w: 1",
     (1, 2, 5, 6), (2, 2), (3, 2), (0, 1), True, False),
    ("kernel_size: 3 stride: 2 round_mode: FLOOR", (2, 2, 7, 8), (3, 3), (2, 2), (0, 0), False, False),
    ("kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (1, 2, 6, 6), (3, 3), (2, 2), (1, 1), False, False),
    # few windows, large kernel (the per-window CPU loop)
    ("kernel_size: 4 stride: 3", (2, 2, 6, 7), (4, 4), (3, 3), (0, 0), True, False),
    ("kernel_h: 1 kernel_w: 4 stride: 3", (1, 2, 5, 4), (1, 4), (3, 3), (0, 0), True, False),
    ("global_pooling: true", (2, 3, 4, 5), None, None, None, True, True),
    ("global_pooling: true", (2, 3, 1, 1), None, None, None, True, True),
    # 1 x 1 maps
    ("kernel_size: 1", (2, 3, 1, 1), (1, 1), (1, 1), (0, 0), True, False),
    ("kernel_size: 2 pad: 1", (1, 2, 1, 1), (2, 2), (1, 1), (1, 1), True, False),
    ("kernel_size: 1 stride: 2", (1, 1, 3, 3), (1, 1), (2, 2), (0, 0), True, False),
]
CASE_IDS = [f"{c[0]}-{c[1]}" for c in CASES]


def run_layer(pool, fields, x, tops=1, path=None, dtype=np.float64, top_diff=None):
    """Forward (and backward when top_diff is given) on the CPU; ``path``
    forces one of the two CPU loop strategies."""
    layer = build_layer(spec(pool, fields, tops), dtype=dtype)
    if path is not None:
        layer._by_offsets = lambda: path == "offsets"
    bottoms, tops_ = setup_layer(layer, [np.asarray(x, dtype=dtype)])
    layer.forward(bottoms, tops_)
    if top_diff is not None:
        tops_[0].diff[...] = top_diff
        layer.backward(tops_, [True], bottoms)
    return layer, bottoms, tops_


@pytest.mark.parametrize("path", ["offsets", "windows"])
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("fields,shape,kernel,stride,pad,ceil_mode,global_", CASES, ids=CASE_IDS)
def test_forward_backward_match_reference(pool, path, fields, shape, kernel, stride, pad,
                                          ceil_mode, global_):
    x = distinct(shape)
    expected, argmax = reference(x, pool, kernel, stride, pad, ceil_mode, global_)
    dy = np.random.default_rng(1).standard_normal(expected.shape)
    layer, bottoms, tops = run_layer(pool, fields, x, path=path, top_diff=dy)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)
    if pool == "MAX":
        np.testing.assert_array_equal(layer.argmax, argmax)
    if global_:
        kernel, stride, pad = shape[2:], (1, 1), (0, 0)
    dx = reference_backward(shape, dy, pool, argmax, kernel, stride, pad)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fields,shape,kernel,stride,pad,ceil_mode,global_", CASES, ids=CASE_IDS)
def test_max_without_backward_skips_the_argmax(fields, shape, kernel, stride, pad, ceil_mode,
                                               global_):
    """A layer no backward runs through (need_backward False, set by the
    Net) takes the values-only path: same outputs as the reference."""
    x = distinct(shape)
    expected, _ = reference(x, "MAX", kernel, stride, pad, ceil_mode, global_)
    layer = build_layer(spec("MAX", fields, 1), dtype=np.float64)
    layer.need_backward = False
    calls = []
    layer._max_by_offsets = lambda *args: calls.append("argmax path")
    bottoms, tops = setup_layer(layer, [x])
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12, atol=1e-12)
    assert not calls


@pytest.mark.parametrize("path", ["offsets", "windows"])
def test_max_ties_pick_first_cell_in_row_major_order(path):
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1, 0] = x[0, 0, 0, 1] = 5.0   # tie inside window (0, 0): (0, 1) comes first
    x[0, 0, 2:, 2:] = 1.0                 # window (1, 1) entirely tied
    layer, _, tops = run_layer("MAX", "kernel_size: 2 stride: 2", x, path=path)
    np.testing.assert_array_equal(layer.argmax[0, 0], [[1, 2], [8, 10]])


def test_output_size_drops_window_starting_in_padding():
    # ceil((4 + 2 - 2) / 3) + 1 = 3 rows, but row 2 would start at 2*3 - 1 = 5
    # = in + pad: dropped. Width 9: ceil(9 / 3) + 1 = 4 columns, the last starting
    # at 3*3 - 1 = 8 < 9 + 1: kept.
    _, _, tops = run_layer("AVE", "kernel_size: 2 stride: 3 pad: 1", np.ones((1, 1, 4, 9)))
    assert tops[0].shape == (1, 1, 2, 4)


def test_ave_area_counts_pad_cells_but_not_cells_past_padded_edge():
    # 6 x 6 ones, kernel 3 stride 2 pad 1: windows start at -1, 1, 3, 5 per axis.
    # Row extents clipped to the padded input [-1, 7): 3, 3, 3, 2 (5..6);
    # real rows in them: 2, 3, 3, 1.
    _, _, tops = run_layer("AVE", "kernel_size: 3 stride: 2 pad: 1", np.ones((1, 1, 6, 6)))
    real = np.array([2, 3, 3, 1])
    area = np.array([3, 3, 3, 2])
    np.testing.assert_allclose(tops[0].data[0, 0], np.outer(real, real) / np.outer(area, area))


def test_global_pooling_is_mean_and_max_of_each_map():
    x = distinct((2, 3, 5, 4))
    _, _, ave = run_layer("AVE", "global_pooling: true", x)
    _, _, mx = run_layer("MAX", "global_pooling: true", x)
    np.testing.assert_allclose(ave[0].data[:, :, 0, 0], x.mean(axis=(2, 3)))
    np.testing.assert_allclose(mx[0].data[:, :, 0, 0], x.max(axis=(2, 3)))


def test_global_pooling_follows_bottom_shape_on_reshape():
    layer = build_layer(spec("AVE", "global_pooling: true"))
    bottoms, tops = setup_layer(layer, [np.ones((1, 2, 3, 3))])
    bottoms[0].reshape((1, 2, 5, 2))
    bottoms[0].data[...] = 2.0
    layer.reshape(bottoms, tops)
    layer.forward(bottoms, tops)
    assert layer.kernel == (5, 2)
    np.testing.assert_allclose(tops[0].data, np.full((1, 2, 1, 1), 2.0))


@pytest.mark.parametrize("fields", ["kernel_size: 3 stride: 2", "kernel_size: 3 stride: 2 pad: 1",
                                    "kernel_size: 1 stride: 3"])
def test_max_mask_top_is_argmax(fields):
    x = distinct((2, 2, 7, 7))
    layer, _, tops = run_layer("MAX", fields, x, tops=2)
    assert tops[1].shape == tops[0].shape
    np.testing.assert_array_equal(tops[1].data, layer.argmax.astype(np.float64))
    assert tops[1].data.min() >= -1


def test_argmax_buffer_allocated_in_reshape_and_kept():
    layer = build_layer(spec("MAX", "kernel_size: 2 stride: 2"))
    bottoms, tops = setup_layer(layer, [distinct((1, 2, 4, 4))])
    buffer = layer.argmax
    assert buffer.shape == (1, 2, 2, 2) and buffer.dtype == np.int64
    layer.forward(bottoms, tops)
    layer.reshape(bottoms, tops)
    assert layer.argmax is buffer


def test_propagate_down_false_leaves_bottom_diff():
    layer, bottoms, tops = run_layer("AVE", "kernel_size: 2", np.ones((1, 1, 3, 3)))
    bottoms[0].diff[...] = 7.0
    tops[0].diff[...] = 1.0
    layer.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)


# -- gradient checks ---------------------------------------------------------------

GRAD_CASES = [
    ("kernel_size: 3 stride: 2", (2, 2, 5, 6)),
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 6, 5)),
    ("kernel_size: 2 stride: 3 pad: 1", (1, 2, 4, 7)),
    ("kernel_size: 3 stride: 1 pad: 1", (1, 2, 4, 4)),           # heavy overlap
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (1, 2, 5, 4)),
    ("kernel_size: 1 stride: 3", (1, 1, 5, 5)),                  # empty windows
    ("kernel_size: 4 stride: 3", (1, 2, 6, 7)),                  # per-window loop
    ("global_pooling: true", (2, 2, 3, 4)),
    ("kernel_size: 1", (1, 2, 1, 1)),
]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("fields,shape", GRAD_CASES)
def test_gradient(pool, fields, shape):
    result = check_layer(spec(pool, fields), [distinct(shape, seed=3)])
    assert result.passed, result.report()
    assert result.checked > 0 and result.skipped_kinks == 0


def test_gradient_with_mask_top():
    result = check_layer(spec("MAX", "kernel_size: 3 stride: 2 pad: 1", tops=2),
                         [distinct((1, 2, 5, 5), seed=4)])
    assert result.passed, result.report()


# -- GPU code ----------------------------------------------------------------------

GPU_CASES = [
    ("MAX", "kernel_size: 3 stride: 2", (2, 3, 9, 11), 1),
    ("MAX", "kernel_size: 3 stride: 2 pad: 1", (2, 3, 8, 7), 2),
    ("MAX", "kernel_size: 2 stride: 3 pad: 1", (1, 2, 4, 7), 1),
    ("MAX", "kernel_size: 1 stride: 3", (1, 2, 5, 5), 2),
    ("MAX", "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (2, 2, 7, 5), 1),
    ("MAX", "global_pooling: true", (2, 3, 4, 5), 1),
    ("MAX", "kernel_size: 4 stride: 3 round_mode: FLOOR", (1, 2, 9, 8), 1),
    ("AVE", "kernel_size: 3 stride: 2", (2, 3, 9, 11), 1),
    ("AVE", "kernel_size: 3 stride: 2 pad: 1", (2, 3, 8, 7), 1),
    ("AVE", "kernel_size: 2 stride: 3 pad: 1", (1, 2, 4, 7), 1),
    ("AVE", "kernel_size: 1 stride: 3", (1, 2, 5, 5), 1),
    ("AVE", "kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (2, 2, 7, 5), 1),
    ("AVE", "global_pooling: true", (2, 3, 4, 5), 1),
    ("AVE", "kernel_size: 2 pad: 1", (1, 2, 1, 1), 1),
]
GPU_IDS = [f"{c[0]}-{c[1]}-{c[2]}" for c in GPU_CASES]


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool,fields,shape,tops", GPU_CASES, ids=GPU_IDS)
def test_gpu_path_on_host(pool, fields, shape, tops, dtype):
    run_gpu_path_on_host(spec(pool, fields, tops), [distinct(shape, seed=5)], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool,fields,shape,tops", GPU_CASES, ids=GPU_IDS)
def test_gpu_matches_cpu(pool, fields, shape, tops, dtype):
    compare_devices(spec(pool, fields, tops), [distinct(shape, seed=5)], dtype=dtype)


@pytest.mark.gpu
def test_gpu_matches_cpu_resnet_pool1_size():
    x = np.random.default_rng(0).standard_normal((1, 8, 60, 100))
    compare_devices(spec("MAX", "kernel_size: 3 stride: 2"), [x])


# -- errors ------------------------------------------------------------------------

DEFINITION_ERRORS = [
    ("STOCHASTIC", "kernel_size: 2", 1, r"'pool'.*STOCHASTIC is not implemented"),
    ("AVE", "kernel_size: 2", 2, r"only MAX pooling has a second .*found 2"),
    ("MAX", "", 1, r"expected kernel_size alone, or kernel_h and kernel_w together; "
                   r"found kernel_size unset, kernel_h unset, kernel_w unset"),
    ("MAX", "kernel_size: 2 kernel_h: 2 kernel_w: 2", 1, r"together; found kernel_size 2, kernel_h 2"),
    ("MAX", "kernel_h: 2", 1, r"kernel_h and kernel_w together.*kernel_w unset"),
    ("MAX", "kernel_size: 0", 1, r"kernel must be positive, found \(0, 0\)"),
    ("MAX", "kernel_size: 2 pad_h: 1", 1, r"expected pad alone, or pad_h and pad_w together.*pad_w unset"),
    ("MAX", "kernel_size: 2 stride: 1 stride_h: 1 stride_w: 1", 1, r"expected stride alone, or stride_h and stride_w together; found stride 1"),
    ("MAX", "kernel_size: 2 stride: 0", 1, r"stride must be positive, found \(0, 0\)"),
    ("MAX", "kernel_size: 2 pad: 2", 1, r"pad must be smaller than kernel.*\(2, 2\)"),
    ("AVE", "kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2", 1, r"pad must be smaller than kernel"),
    ("MAX", "global_pooling: true kernel_size: 2", 1, r"global_pooling.*no kernel_size"),
    ("AVE", "global_pooling: true pad: 1", 1, r"global_pooling needs pad 0 and stride 1.*\(1, 1\)"),
    ("AVE", "global_pooling: true stride: 2", 1, r"global_pooling needs pad 0 and stride 1"),
    # The field is uint32; Caffe keeps it as int and the CUDA kernels take int.
    ("MAX", "kernel_size: 2 stride: 4294967295", 1,
     r"'pool'.*stride must fit a 32-bit int \(at most 2147483647\), found \(4294967295, "),
    ("MAX", "kernel_h: 2 kernel_w: 2 stride_h: 1 stride_w: 2147483648", 1,
     r"stride must fit a 32-bit int .*found \(1, 2147483648\)"),
    ("AVE", "kernel_size: 2147483648 pad: 2", 1, r"kernel must fit a 32-bit int"),
]


@pytest.mark.parametrize("pool,fields,tops,message", DEFINITION_ERRORS)
def test_definition_errors(pool, fields, tops, message):
    with pytest.raises(NetDefinitionError, match=message):
        setup_layer(build_layer(spec(pool, fields, tops)), [np.ones((1, 1, 4, 4))])


@pytest.mark.parametrize("fields,shape,message", [
    ("kernel_size: 2", (2, 3, 4), r"bottom 'x' expected 4 axes \(N, C, H, W\), found shape \(2, 3, 4\)"),
    ("global_pooling: true", (1, 2, 3, 4, 5), r"expected 4 axes"),
    ("kernel_size: 5", (1, 1, 4, 6), r"bottom 'x' expected a map of at least kernel - 2 \* pad = "
                                     r"\(5, 5\).*found shape \(1, 1, 4, 6\)"),
    ("kernel_h: 6 kernel_w: 2 pad: 1", (1, 1, 3, 3), r"at least .* = \(4, 0\)"),
    # Caffe's ceil rule makes a second window wholly beyond the map.
    ("kernel_size: 2 stride: 30000", (1, 2, 8, 8),
     r"layer 'pool'.*bottom 'x' expected a map whose padded extent .* = \(8, 8\) is at least "
     r"the stride \(30000, 30000\) .*output \(2, 2\).*found shape \(1, 2, 8, 8\)"),
    ("kernel_h: 1 kernel_w: 1 stride_h: 1 stride_w: 9", (1, 1, 3, 8), r"\(3, 8\) is at least"),
])
def test_shape_errors(fields, shape, message):
    with pytest.raises(ShapeError, match=message):
        setup_layer(build_layer(spec("MAX", fields)), [np.ones(shape)])


@pytest.mark.parametrize("kernel,stride,pad", [
    (8, 30000, 0),  # one window: the stride is unused
    (3, 30000, 1),  # the second window starts in the padding: dropped
    (1, 8, 0),      # stride == the map: Caffe's 2 outputs, the second empty
])
def test_large_strides_that_leave_no_window_outside_still_work(kernel, stride, pad):
    """Strides up to the padded map, or with a single output, keep Caffe's
    output size and values (the refusal is only for windows wholly outside)."""
    x = distinct((1, 2, 8, 8))
    layer = build_layer(spec("MAX", f"kernel_size: {kernel} stride: {stride} pad: {pad}"))
    bottoms, tops = setup_layer(layer, [x])
    layer.forward(bottoms, tops)
    expected, _ = reference(x, "MAX", (kernel,) * 2, (stride,) * 2, (pad,) * 2)
    assert tops[0].shape == expected.shape
    np.testing.assert_allclose(tops[0].data, expected)
