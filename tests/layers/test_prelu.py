"""PReLU (Caffe's): forward, bottom gradient and slope gradient against a
plain per-element reference, per-channel and shared slopes, the filler and
its 0.25 default, Caffe's accumulate contract, lr_mult 0, in-place use (CPU
and the GPU path), float64 gradient checks, shape errors, weights files,
the GPU path host-run and on a GPU."""
import numpy as np
import pytest

from netdef import Net
from netdef.blob import Blob
from netdef.errors import ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import check_param_diffs_accumulate

SHAPES = [(2, 3, 4, 5), (2, 3), (1, 1, 1, 1), (2, 4, 3), (0, 3, 2), (2, 3, 0)]


def prelu_spec(shared=False, filler=None, top="y"):
    param = []
    if shared:
        param.append("channel_shared: true")
    if filler:
        param.append(f"filler {{ {filler} }}")
    body = f"prelu_param {{ {' '.join(param)} }}" if param else ""
    return f'name: "p" type: "PReLU" bottom: "x" top: "{top}" {body}'


def slopes_for(shape, shared, seed=3):
    """Slopes of both signs and sizes, one per channel or one in all."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.5, 1.5, () if shared else (shape[1],))


def reference(x, slopes, dy):
    """Caffe's loops, element by element: (y, dx, dslopes)."""
    y, dx = np.empty(x.shape), np.empty(x.shape)
    dslopes = np.zeros(slopes.shape)
    for idx in np.ndindex(*x.shape):
        c = () if slopes.ndim == 0 else idx[1]
        a, v, g = float(slopes[c]), float(x[idx]), float(dy[idx])
        y[idx] = max(v, 0.0) + a * min(v, 0.0)
        dx[idx] = g * (1.0 if v > 0 else a)
        if v <= 0:
            dslopes[c] += g * v
    return y, dx, dslopes


def run(text, x, slopes=None, dy=None, dtype=np.float64):
    layer = build_layer(text, dtype=dtype)
    bottoms, tops = setup_layer(layer, [np.asarray(x, dtype=dtype)])
    if slopes is not None:
        layer.blobs[0].data[...] = slopes
    layer.forward(bottoms, tops)
    if dy is not None:
        tops[0].diff[...] = dy
        layer.blobs[0].diff[...] = 0
        layer.backward(tops, [True], bottoms)
    return layer, bottoms, tops


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_reference(shape, shared):
    x = np.random.default_rng(0).standard_normal(shape)
    if x.size:
        x.flat[0] = 0.0  # Caffe: y(0) = 0, dx(0) = a * dy, and x = 0 counts for the slope
    dy = np.random.default_rng(1).standard_normal(shape)
    slopes = slopes_for(shape, shared)
    layer, bottoms, tops = run(prelu_spec(shared), x, slopes, dy)
    y, dx, dslopes = reference(x, slopes, dy)
    np.testing.assert_allclose(tops[0].data, y, rtol=1e-15, atol=0)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=1e-15, atol=0)
    np.testing.assert_allclose(layer.blobs[0].diff, dslopes, rtol=1e-12, atol=1e-15)


def test_slope_blob_shapes_and_default_filler():
    per_channel = build_layer(prelu_spec())
    setup_layer(per_channel, [np.ones((2, 5, 3, 3))])
    assert per_channel.blobs[0].shape == (5,)
    np.testing.assert_array_equal(per_channel.blobs[0].data, np.full(5, 0.25))
    shared = build_layer(prelu_spec(shared=True))
    setup_layer(shared, [np.ones((2, 5, 3, 3))])
    # Caffe's shared slope is a blob with no axes (vector<int>(0)): one value.
    assert shared.blobs[0].shape == () and shared.blobs[0].count == 1
    assert float(shared.blobs[0].data) == 0.25


def test_filler_is_used():
    layer = build_layer(prelu_spec(filler='type: "constant" value: -0.5'))
    setup_layer(layer, [np.ones((2, 3, 2))])
    np.testing.assert_array_equal(layer.blobs[0].data, [-0.5, -0.5, -0.5])
    layer = build_layer(prelu_spec(filler='type: "uniform" min: 0.1 max: 0.2'))
    setup_layer(layer, [np.ones((2, 64))])
    values = layer.blobs[0].data
    assert values.shape == (64,) and np.all((values >= 0.1) & (values <= 0.2))
    assert len(np.unique(values)) == 64


def test_default_slope_values():
    x = np.array([[-2.0, 0.0, 4.0]]).reshape(1, 3)
    _, bottoms, tops = run(prelu_spec(shared=True), x, dy=np.ones((1, 3)))
    np.testing.assert_array_equal(tops[0].data, [[-0.5, 0, 4]])
    np.testing.assert_array_equal(bottoms[0].diff, [[0.25, 0.25, 1]])


@pytest.mark.parametrize("shared", [False, True])
def test_slope_gradient_accumulates_and_propagate_down_false(shared):
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    layer, bottoms, tops = run(prelu_spec(shared), x, slopes_for((2, 3), shared))
    layer.blobs[0].diff[...] = 0
    check_param_diffs_accumulate(layer, bottoms, tops, seed=4, sentinel=7.0)


def test_slope_gradient_adds_to_what_the_diff_holds():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    dy = np.random.default_rng(1).standard_normal(x.shape)
    layer, _, _ = run(prelu_spec(), x, np.zeros(3), dy)
    fresh = layer.blobs[0].diff.copy()
    layer2, bottoms, tops = run(prelu_spec(), x, np.zeros(3))
    layer2.blobs[0].diff[...] = [1.0, 2.0, 3.0]
    tops[0].diff[...] = dy
    layer2.backward(tops, [True], bottoms)
    np.testing.assert_allclose(layer2.blobs[0].diff, fresh + [1, 2, 3], rtol=1e-15)


def test_no_slope_gradient_when_the_net_says_so():
    """lr_mult 0: the Net sets param_propagate_down, and the diff is left alone."""
    layer, bottoms, tops = run(prelu_spec(), np.random.default_rng(0).standard_normal((2, 3)))
    layer.param_propagate_down = (False,)
    layer.blobs[0].diff[...] = 5.0
    tops[0].diff[...] = 1.0
    layer.backward(tops, [True], bottoms)
    np.testing.assert_array_equal(layer.blobs[0].diff, [5, 5, 5])
    np.testing.assert_array_equal(bottoms[0].diff, np.where(bottoms[0].data > 0, 1.0, 0.25))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 2), (1, 4, 3)])
def test_gradient(shape, shared):
    rng = np.random.default_rng(2)
    x = rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)  # no kink at 0
    result = check_layer(prelu_spec(shared), [x], param_arrays=[slopes_for(shape, shared)])
    assert result.passed, result.report()
    assert result.skipped_kinks == 0
    assert "param 0" in result.worst_per_blob


def test_gradient_with_default_slopes():
    x = np.random.default_rng(5).uniform(0.1, 2.0, (2, 3, 3)) * np.array([1.0, -1.0, 1.0])[:, None]
    result = check_layer(prelu_spec(), [x])
    assert result.passed, result.report()


# -- in place --------------------------------------------------------------------------

def in_place_run(text, x, slopes, dy, forward, backward):
    layer = build_layer(text)
    blob = Blob.from_array(np.array(x, dtype=np.float64))
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.blobs[0].data[...] = slopes
    layer.blobs[0].diff[...] = 0
    getattr(layer, forward)([blob], [blob])
    after_forward = blob.data.copy()
    blob.diff[...] = dy
    getattr(layer, backward)([blob], [True], [blob])
    return after_forward, blob.diff.copy(), layer.blobs[0].diff.copy()


def check_in_place(shared, methods, check):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    dy = np.random.default_rng(1).standard_normal(x.shape)
    slopes = slopes_for(x.shape, shared)
    layer, bottoms, tops = run(prelu_spec(shared), x, slopes, dy)
    top, diff, slope_diff = in_place_run(prelu_spec(shared, top="x"), x, slopes, dy, *methods)
    check(top, tops[0].data)
    check(diff, bottoms[0].diff)
    check(slope_diff, layer.blobs[0].diff)


@pytest.mark.parametrize("shared", [False, True])
def test_in_place_equals_out_of_place(shared):
    """Caffe's PReLU works in place by copying its input before overwriting
    it; here too: the top, the bottom diff and the slope diff equal the
    out-of-place run's."""
    check_in_place(shared, ("forward", "backward"), np.testing.assert_array_equal)


@requires_cxx
@pytest.mark.parametrize("shared", [False, True])
def test_gpu_path_in_place_on_host(shared):
    check_in_place(shared, ("forward_gpu", "backward_gpu"),
                   lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14))


def test_in_place_keeps_a_copy_only_in_place():
    layer = build_layer(prelu_spec(top="x"))
    blob = Blob.from_array(np.ones((2, 3)))
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    assert layer.saved_bottom is not None and layer.saved_bottom.shape == (2, 3)
    separate, _, _ = run(prelu_spec(), np.ones((2, 3)))
    assert separate.saved_bottom is None


def test_backward_never_reads_the_top():
    """A later in-place layer may change the top before backward."""
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    dy = np.random.default_rng(1).standard_normal(x.shape)
    expected, bottoms, _ = run(prelu_spec(), x, slopes_for(x.shape, False), dy)
    layer, bottoms2, tops2 = run(prelu_spec(), x, slopes_for(x.shape, False))
    tops2[0].data[...] = np.nan
    tops2[0].diff[...] = dy
    layer.blobs[0].diff[...] = 0
    layer.backward(tops2, [True], bottoms2)
    np.testing.assert_array_equal(bottoms2[0].diff, bottoms[0].diff)
    np.testing.assert_array_equal(layer.blobs[0].diff, expected.blobs[0].diff)


# -- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4,), ()])
def test_needs_two_axes(shape):
    with pytest.raises(ShapeError, match=r"layer 'p' \(type PReLU\): bottom 'x' expected at "
                       r"least 2 axes \(N, C, \.\.\.\)"):
        run(prelu_spec(), np.ones(shape))


def test_channel_count_change_is_an_error():
    layer, bottoms, tops = run(prelu_spec(), np.ones((2, 3, 4)))
    bottoms[0].reshape((2, 5, 4))
    with pytest.raises(ShapeError, match=r"expected 3 channels on axis 1, one per slope.* "
                       r"found shape \(2, 5, 4\)"):
        layer.reshape(bottoms, tops)


def test_shared_slope_takes_any_channel_count():
    layer, bottoms, tops = run(prelu_spec(shared=True), np.ones((2, 3, 4)))
    bottoms[0].reshape((2, 5, 4))
    layer.reshape(bottoms, tops)
    assert tops[0].shape == (2, 5, 4)


# -- nets and weights ----------------------------------------------------------------------

NET = """
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
layer { name: "prelu" type: "PReLU" bottom: "x" top: "y" loss_weight: 1 PARAM
        prelu_param { SHARED filler { type: "uniform" min: -1 max: 1 } } }
"""


def net_text(shared=False, lr_mult=None):
    param = "" if lr_mult is None else f"param {{ lr_mult: {lr_mult} }}"
    return NET.replace("PARAM", param).replace("SHARED", "channel_shared: true" if shared else "")


@pytest.mark.parametrize("shared", [False, True])
def test_caffemodel_round_trip(tmp_path, shared):
    net = Net(net_text(shared), "TRAIN", seed=1)
    path = tmp_path / "prelu.caffemodel"
    net.save(path)
    other = Net(net_text(shared), "TEST", seed=2)
    assert not np.array_equal(other.params["prelu"][0].data, net.params["prelu"][0].data)
    other.copy_from(path)
    assert other.params["prelu"][0].shape == (() if shared else (3,))
    np.testing.assert_array_equal(other.params["prelu"][0].data, net.params["prelu"][0].data)


def test_net_lr_mult_zero_leaves_the_slopes_diff():
    net = Net(net_text(lr_mult=0), "TRAIN", dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    net.forward(x=x)
    net.clear_param_diffs()
    diffs = net.backward()
    np.testing.assert_array_equal(net.params["prelu"][0].diff, np.zeros(3))
    slopes = np.broadcast_to(net.params["prelu"][0].data.reshape(1, 3, 1), x.shape)
    np.testing.assert_allclose(diffs["x"], np.where(x > 0, 1.0, slopes), rtol=1e-15)


def test_net_in_place_equals_out_of_place():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    text = """
    force_backward: true
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
    layer { name: "scale" type: "Scale" bottom: "x" top: "a"
            scale_param { filler { type: "uniform" min: 0.5 max: 1.5 } } }
    layer { name: "prelu" type: "PReLU" bottom: "a" top: "b"
            prelu_param { filler { type: "uniform" min: -1 max: 1 } } }
    layer { name: "prelu2" type: "PReLU" bottom: "b" top: "c" loss_weight: 1
            prelu_param { channel_shared: true filler { value: -2 } } }
    """
    results = []
    for t in (text, text.replace('"b"', '"a"').replace('top: "c"', 'top: "a"')):
        net = Net(t, "TRAIN", dtype=np.float64, seed=4)
        out = net.forward(x=x)
        net.clear_param_diffs()
        diffs = net.backward()
        results.append([out.loss, diffs["x"].copy()] +
                       [p.diff.copy() for name in ("scale", "prelu", "prelu2")
                        for p in net.params[name]])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert np.all(results[0][3] != 0) and results[0][4] != 0


# -- the GPU path ----------------------------------------------------------------------

@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_gpu_path_on_host(shape, shared, dtype):
    x = np.random.default_rng(0).standard_normal(shape)
    if x.size:
        x.flat[:2] = 0.0
    filler = 'type: "uniform" min: -1 max: 1'
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    run_gpu_path_on_host(prelu_spec(shared, filler), [x], dtype=dtype, **tolerance)


@requires_cxx
def test_gpu_path_without_slope_gradient_on_host():
    layer = build_layer(prelu_spec())
    bottoms, tops = setup_layer(layer, [np.random.default_rng(0).standard_normal((2, 3, 4))])
    layer.param_propagate_down = (False,)
    layer.forward_gpu(bottoms, tops)
    tops[0].diff[...] = 1.0
    layer.blobs[0].diff[...] = 5.0
    layer.backward_gpu(tops, [True], bottoms)
    np.testing.assert_array_equal(layer.blobs[0].diff, [5, 5, 5])
    np.testing.assert_array_equal(bottoms[0].diff, np.where(bottoms[0].data > 0, 1.0, 0.25))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shared", [False, True])
def test_gpu_matches_cpu(shared, dtype):
    x = np.random.default_rng(0).standard_normal((4, 16, 9, 7))
    x.flat[:5] = 0.0
    compare_devices(prelu_spec(shared, 'type: "uniform" min: -1 max: 1'), [x], dtype=dtype,
                    rtol=1e-4, atol=1e-4)
