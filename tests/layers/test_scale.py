"""Scale and Bias: broadcast multiply / add from an axis (Caffe's rules)."""
import numpy as np
import pytest

from netdef.blob import Blob
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import make

X_SHAPE = (2, 3, 4, 5)


def align(operand, ndim, axis):
    """The operand reshaped so that NumPy broadcasting lines it up with a
    bottom of ``ndim`` axes starting at ``axis`` (trailing axes of 1)."""
    operand = np.asarray(operand)
    if operand.ndim == 0:
        return operand
    axis = axis + ndim if axis < 0 else axis
    return operand.reshape(operand.shape + (1,) * (ndim - axis - operand.ndim))


def set_params(layer, values):
    for blob, value in zip(layer.blobs, values):
        blob.data[...] = np.asarray(value).reshape(blob.shape)


# (scale_param text, learned shape, axis used by the reference)
ONE_BOTTOM = [
    ("", (3,), 1),
    ("axis: 0 num_axes: 2", (2, 3), 0),
    ("axis: -1", (5,), -1),
    ("axis: -2 num_axes: 2", (4, 5), -2),
    ("axis: 2 num_axes: -1", (4, 5), 2),
    ("axis: 0 num_axes: -1", X_SHAPE, 0),
    ("num_axes: 0", (), 1),
    ("axis: 1 num_axes: 3", (3, 4, 5), 1),
]


# -- Scale, one bottom -----------------------------------------------------------------


@pytest.mark.parametrize("param,shape,axis", ONE_BOTTOM)
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_one_bottom_forward(param, shape, axis, bias_term):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(X_SHAPE)
    spec = f'name: "sc" type: "Scale" scale_param {{ {param} bias_term: {str(bias_term).lower()} }}'
    layer, bottoms, tops = make(spec, [x])
    assert [b.shape for b in layer.blobs] == [shape] * (2 if bias_term else 1)
    w = rng.standard_normal(shape)
    b = rng.standard_normal(shape)
    set_params(layer, [w, b])
    layer.forward(bottoms, tops)
    expected = x * align(w, x.ndim, axis) + (align(b, x.ndim, axis) if bias_term else 0)
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12)


def test_scale_fillers():
    x = np.ones((2, 3, 2))
    layer, bottoms, tops = make('type: "Scale" scale_param { bias_term: true }', [x])
    # Caffe's defaults: scale ones (identity), bias zeros.
    np.testing.assert_array_equal(layer.blobs[0].data, np.ones(3))
    np.testing.assert_array_equal(layer.blobs[1].data, np.zeros(3))
    layer, bottoms, tops = make(
        'type: "Scale" scale_param { filler { type: "constant" value: 2.5 } bias_term: true '
        'bias_filler { type: "constant" value: -0.5 } }', [x])
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, np.full(x.shape, 2.0))
    spec = 'type: "Scale" scale_param { filler { type: "uniform" min: 2 max: 3 } }'
    layer, _, _ = make(spec, [x])
    assert np.all((layer.blobs[0].data >= 2) & (layer.blobs[0].data <= 3))


@pytest.mark.parametrize("param,shape,axis", ONE_BOTTOM[:4] + ONE_BOTTOM[6:7])
def test_scale_one_bottom_gradcheck(param, shape, axis):
    x = np.random.default_rng(2).standard_normal(X_SHAPE)
    spec = (f'type: "Scale" scale_param {{ {param} bias_term: true '
            'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }')
    result = check_layer(spec, [x])
    assert result.passed, result.report()


def test_scale_gradcheck_2d_bottom():
    x = np.random.default_rng(3).standard_normal((4, 3))
    result = check_layer('type: "Scale" scale_param { filler { type: "gaussian" std: 1 } }', [x])
    assert result.passed, result.report()


def test_scale_param_gradients_accumulate():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 2))
    dy = rng.standard_normal(x.shape)
    layer, bottoms, tops = make('type: "Scale" scale_param { bias_term: true }', [x])
    layer.forward(bottoms, tops)
    tops[0].diff[...] = dy
    for _ in range(2):
        layer.backward(tops, [True], bottoms)
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * (dy * x).sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].diff, 2 * dy.sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, dy * layer.blobs[0].data[None, :, None])


# -- Scale, two bottoms ----------------------------------------------------------------

# (scale_param text, bottom[1] shape, axis)
TWO_BOTTOMS = [
    ("", (3,), 1),
    ("", (3, 4), 1),
    ("axis: 0", (2, 3), 0),
    ("axis: -2", (4, 5), -2),
    ("axis: 3", (5,), 3),
    ("", (), 1),
    ("axis: 0", X_SHAPE, 0),
]


@pytest.mark.parametrize("param,shape,axis", TWO_BOTTOMS)
def test_scale_two_bottoms_forward_and_gradcheck(param, shape, axis):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(X_SHAPE)
    w = rng.standard_normal(shape)
    spec = f'type: "Scale" scale_param {{ {param} }}'
    layer, bottoms, tops = make(spec, [x, w])
    assert layer.blobs == []
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, x * align(w, x.ndim, axis), rtol=1e-12)
    result = check_layer(spec, [x, w])
    assert result.passed, result.report()


def test_scale_two_bottoms_with_bias_term():
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal(X_SHAPE), rng.standard_normal((3, 4))
    spec = 'type: "Scale" scale_param { bias_term: true bias_filler { type: "gaussian" std: 1 } }'
    layer, bottoms, tops = make(spec, [x, w])
    assert [b.shape for b in layer.blobs] == [(3, 4)]
    layer.forward(bottoms, tops)
    expected = x * w[None, :, :, None] + layer.blobs[0].data[None, :, :, None]
    np.testing.assert_allclose(tops[0].data, expected, rtol=1e-12)
    result = check_layer(spec, [x, w])
    assert result.passed, result.report()


def test_scale_bottom1_diff_is_overwritten_and_propagate_down_respected():
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((2, 3, 2)), rng.standard_normal(3)
    dy = rng.standard_normal(x.shape)
    layer, bottoms, tops = make('type: "Scale"', [x, w])
    layer.forward(bottoms, tops)
    tops[0].diff[...] = dy
    bottoms[1].diff[...] = 100.0
    layer.backward(tops, [True, True], bottoms)
    np.testing.assert_allclose(bottoms[1].diff, (dy * x).sum(axis=(0, 2)), rtol=1e-12)
    bottoms[0].diff[...] = 5.0
    bottoms[1].diff[...] = 6.0
    layer.backward(tops, [False, False], bottoms)
    assert np.all(bottoms[0].diff == 5.0) and np.all(bottoms[1].diff == 6.0)


# -- Bias --------------------------------------------------------------------------------


@pytest.mark.parametrize("param,shape,axis", ONE_BOTTOM)
def test_bias_one_bottom_forward(param, shape, axis):
    rng = np.random.default_rng(8)
    x = rng.standard_normal(X_SHAPE)
    layer, bottoms, tops = make(f'type: "Bias" bias_param {{ {param} }}', [x])
    assert [b.shape for b in layer.blobs] == [shape]
    np.testing.assert_array_equal(layer.blobs[0].data, np.zeros(shape))  # default filler
    b = rng.standard_normal(shape)
    set_params(layer, [b])
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, x + align(b, x.ndim, axis), rtol=1e-12)


@pytest.mark.parametrize("param,shape,axis", TWO_BOTTOMS)
def test_bias_two_bottoms_forward_and_gradcheck(param, shape, axis):
    rng = np.random.default_rng(9)
    x, b = rng.standard_normal(X_SHAPE), rng.standard_normal(shape)
    spec = f'type: "Bias" bias_param {{ {param} }}'
    layer, bottoms, tops = make(spec, [x, b])
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[0].data, x + align(b, x.ndim, axis), rtol=1e-12)
    result = check_layer(spec, [x, b])
    assert result.passed, result.report()


@pytest.mark.parametrize("param", ["", "axis: 0 num_axes: 2", "num_axes: 0",
                                   "axis: 2 num_axes: -1"])
def test_bias_one_bottom_gradcheck(param):
    x = np.random.default_rng(10).standard_normal(X_SHAPE)
    spec = f'type: "Bias" bias_param {{ {param} filler {{ type: "gaussian" std: 1 }} }}'
    result = check_layer(spec, [x])
    assert result.passed, result.report()


# -- in place ------------------------------------------------------------------------------


def forward_backward(spec, arrays, dy, params, in_place, gpu_path=False, dtype=np.float64):
    """Returns (y, bottom diffs, param diffs), with bottom 0 == top 0 when
    ``in_place`` (as a prototxt with ``bottom: "x" top: "x"`` builds it)."""
    layer = build_layer(spec, dtype=dtype)
    bottoms = [Blob.from_array(np.array(a, dtype=dtype)) for a in arrays]
    tops = [bottoms[0] if in_place else Blob((), dtype=dtype)]
    layer.setup(bottoms, tops)
    set_params(layer, params)
    layer.reshape(bottoms, tops)
    (layer.forward_gpu if gpu_path else layer.forward_cpu)(bottoms, tops)
    y = tops[0].data.copy()
    tops[0].diff[...] = dy
    (layer.backward_gpu if gpu_path else layer.backward_cpu)(tops, [True] * len(bottoms), bottoms)
    return y, [b.diff.copy() for b in bottoms], [p.diff.copy() for p in layer.blobs]


# (spec, shape of bottom[1] or None for the one-bottom form)
IN_PLACE_CASES = [
    ('type: "Scale"', None),
    ('type: "Scale" scale_param { bias_term: true axis: 0 num_axes: 2 }', None),
    ('type: "Scale" scale_param { bias_term: true }', (3,)),
    ('type: "Bias"', None),
    ('type: "Bias" bias_param { axis: -1 }', (5,)),
]


@pytest.mark.parametrize("spec,operand_shape", IN_PLACE_CASES)
@pytest.mark.parametrize("gpu_path", [False, pytest.param(True, marks=requires_cxx)])
def test_in_place_equals_out_of_place(spec, operand_shape, gpu_path):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(X_SHAPE)
    dy = rng.standard_normal(X_SHAPE)
    arrays = [x] + ([rng.standard_normal(operand_shape) + 2] if operand_shape else [])
    params = [rng.standard_normal(p.shape) for p in make(spec, arrays)[0].blobs]
    expected = forward_backward(spec, arrays, dy, params, in_place=False)
    found = forward_backward(spec, arrays, dy, params, in_place=True, gpu_path=gpu_path)
    np.testing.assert_allclose(found[0], expected[0], rtol=1e-12)
    for f_list, e_list in zip(found[1:], expected[1:]):
        for f, e in zip(f_list, e_list):
            np.testing.assert_allclose(f, e, rtol=1e-12, atol=1e-12)


# -- GPU code -----------------------------------------------------------------------------

GPU_CASES = [
    ('type: "Scale" scale_param { filler { type: "gaussian" std: 1 } }', [X_SHAPE]),
    ('type: "Scale" scale_param { axis: 0 num_axes: 2 bias_term: true '
     'filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }', [X_SHAPE]),
    ('type: "Scale" scale_param { num_axes: 0 filler { type: "gaussian" std: 1 } }', [X_SHAPE]),
    ('type: "Scale"', [X_SHAPE, (3, 4)]),
    ('type: "Scale" scale_param { bias_term: true bias_filler { type: "gaussian" std: 1 } }',
     [X_SHAPE, (3,)]),
    ('type: "Bias" bias_param { filler { type: "gaussian" std: 1 } }', [X_SHAPE]),
    ('type: "Bias" bias_param { axis: -1 filler { type: "gaussian" std: 1 } }', [(4, 3)]),
    ('type: "Bias" bias_param { axis: 2 }', [X_SHAPE, (4, 5)]),
]


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec,shapes", GPU_CASES)
def test_host_run_kernels_match_numpy(dtype, spec, shapes):
    rng = np.random.default_rng(12)
    run_gpu_path_on_host(spec, [rng.standard_normal(s) for s in shapes], dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("spec,shapes", GPU_CASES)
def test_gpu_matches_cpu(spec, shapes):
    rng = np.random.default_rng(13)
    compare_devices(spec, [rng.standard_normal(s) for s in shapes])


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["scale", "bias"])
def test_error_axis_out_of_range(kind):
    spec = f'name: "l" type: "{kind.title()}" {kind}_param {{ axis: 4 }}'
    message = (rf"layer 'l'.*bottom 'bottom\[0\]' expected {kind}_param.axis 4 to name one of "
               r"its axes \(-4 to 3\), found shape \(2, 3, 4, 5\)")
    with pytest.raises(ShapeError, match=message):
        make(spec, [np.zeros(X_SHAPE)])
    spec = f'name: "l" type: "{kind.title()}" {kind}_param {{ axis: -5 }}'
    with pytest.raises(ShapeError, match=rf"{kind}_param.axis -5 to name one of its axes "
                                         r"\(-4 to 3\)"):
        make(spec, [np.zeros(X_SHAPE)])


@pytest.mark.parametrize("kind", ["scale", "bias"])
def test_error_num_axes(kind):
    spec = f'name: "l" type: "{kind.title()}" {kind}_param {{ num_axes: -2 }}'
    with pytest.raises(NetDefinitionError, match=rf"layer 'l'.*{kind}_param.num_axes must be >= 0, "
                                                 r"or -1.*found -2"):
        make(spec, [np.zeros(X_SHAPE)])
    spec = f'name: "l" type: "{kind.title()}" {kind}_param {{ axis: 2 num_axes: 3 }}'
    with pytest.raises(ShapeError, match=rf"expected at least 5 axes for {kind}_param.axis 2 and "
                                         r"num_axes 3, found shape \(2, 3, 4, 5\)"):
        make(spec, [np.zeros(X_SHAPE)])


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_error_second_bottom_shape(kind):
    spec = f'name: "l" type: "{kind}" bottom: "x" bottom: "w"'
    message = (r"layer 'l'.*bottom 'w' expected shape \(3, 4\) \(bottom 'x' shape "
               r"\(2, 3, 4, 5\)\[1:3\].*found shape \(3, 5\)")
    with pytest.raises(ShapeError, match=message):
        make(spec, [np.zeros(X_SHAPE), np.zeros((3, 5))])
    with pytest.raises(ShapeError, match=r"bottom 'w' expected at most 3 axes from .*axis 1.*"
                                         r"found shape \(3, 4, 5, 1\)"):
        make(spec, [np.zeros(X_SHAPE), np.zeros((3, 4, 5, 1))])
    # A 2-D bottom with a negative axis counts from the end.
    with pytest.raises(ShapeError, match=r"bottom 'w' expected shape \(3,\).*found shape \(4,\)"):
        make(spec + ' ' + kind.lower() + '_param { axis: -1 }', [np.zeros((2, 3)), np.zeros(4)])


@pytest.mark.parametrize("kind,label", [("Scale", "param blob 0 \\(scale\\)"),
                                        ("Bias", "param blob 0 \\(bias\\)")])
def test_error_loaded_param_does_not_fit(kind, label):
    layer, bottoms, tops = make(f'name: "l" type: "{kind}" bottom: "x"', [np.zeros(X_SHAPE)])
    layer.blobs[0].reshape((4,))  # as if weights of another net were loaded
    with pytest.raises(ShapeError, match=rf"layer 'l'.*{label} expected shape \(3,\).*found shape "
                                         r"\(4,\).*different net"):
        layer.reshape(bottoms, tops)


def test_error_loaded_scale_bias_does_not_fit():
    layer, bottoms, tops = make('name: "l" type: "Scale" scale_param { bias_term: true }',
                                [np.zeros(X_SHAPE)])
    layer.blobs[1].reshape((2,))
    with pytest.raises(ShapeError, match=r"param blob 1 \(bias\) expected shape \(3,\).*found "
                                         r"shape \(2,\)"):
        layer.reshape(bottoms, tops)


@pytest.mark.parametrize("kind", ["Scale", "Bias"])
def test_error_blob_counts(kind):
    x = np.zeros((2, 3))
    with pytest.raises(NetDefinitionError, match="takes at most 2 bottom"):
        make(f'type: "{kind}"', [x, np.zeros(3), np.zeros(3)])
