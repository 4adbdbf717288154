"""Softmax, SoftmaxWithLoss and SoftmaxWithLossOHEM against plainly written
references, float64 gradient checks, the host-run CUDA kernels, GPU parity
and the errors."""
import math

import numpy as np
import pytest

from netdef.blob import Blob
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import outer_channels_inner

FLT_MIN = 1.1754943508222875e-38


# -- references (plain loops) ---------------------------------------------------

def ref_softmax(x, axis):
    x = np.asarray(x, dtype=np.float64)
    axis = axis % x.ndim
    moved = np.moveaxis(x, axis, -1)
    out = np.empty_like(moved)
    for idx in np.ndindex(moved.shape[:-1]):
        row = moved[idx]
        m = max(row)
        exps = [math.exp(v - m) for v in row]
        total = sum(exps)
        out[idx] = [e / total for e in exps]
    return np.moveaxis(out, -1, axis)


def ref_softmax_loss(scores, labels, axis=1, ignore=None, mode="VALID", pre_fixed=1.0):
    """(loss, prob, per-position loss, d scores for loss weight 1)."""
    prob = ref_softmax(scores, axis)
    axis, outer, channels, inner = outer_channels_inner(scores.shape, axis)
    p3 = prob.reshape(outer, channels, inner)
    lab = np.asarray(labels).reshape(-1)
    per_pos = np.zeros(outer * inner)
    grad = np.zeros((outer, channels, inner))
    total, valid = 0.0, 0
    for o in range(outer):
        for i in range(inner):
            label = int(lab[o * inner + i])
            if ignore is not None and label == ignore:
                continue
            per_pos[o * inner + i] = -math.log(max(p3[o, label, i], FLT_MIN))
            total += per_pos[o * inner + i]
            valid += 1
            for c in range(channels):
                grad[o, c, i] = p3[o, c, i] - (1.0 if c == label else 0.0)
    norm = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer,
            "NONE": 1, "PRE_FIXED": pre_fixed}[mode]
    norm = max(norm, 1)
    return total / norm, prob, per_pos, grad.reshape(scores.shape) / norm


def run_layer(spec, arrays, num_tops=None, top_diff=None, dtype=np.float64):
    layer = build_layer(spec, dtype=dtype)
    bottoms, tops = setup_layer(layer, arrays, num_tops)
    layer.forward(bottoms, tops)
    if top_diff is not None:
        tops[0].diff[...] = top_diff
        layer.backward(tops, [True] + [False] * (len(bottoms) - 1), bottoms)
    return layer, bottoms, tops


# -- Softmax --------------------------------------------------------------------

SOFTMAX_CASES = [((4, 3), 1), ((2, 5, 3, 2), 1), ((2, 3, 4), -1), ((2, 3, 4, 2), 2), ((3, 1, 2), 1),
                 ((1, 2, 18, 3), 1)]


@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES)
def test_softmax_forward_matches_reference(shape, axis):
    x = np.random.default_rng(0).standard_normal(shape) * 3
    _, _, tops = run_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])
    np.testing.assert_allclose(tops[0].data, ref_softmax(x, axis), rtol=1e-12, atol=1e-15)


def test_softmax_is_stable_for_large_inputs():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]])
    _, _, tops = run_layer('type: "Softmax"', [x])
    assert np.all(np.isfinite(tops[0].data))
    np.testing.assert_allclose(tops[0].data, ref_softmax(x, 1), rtol=1e-12)


@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES)
def test_softmax_gradient(shape, axis):
    x = np.random.default_rng(1).standard_normal(shape)
    result = check_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x])
    assert result.passed, result.report()


def test_softmax_in_place():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 3))
    dy = rng.standard_normal(x.shape)
    _, _, separate = run_layer('type: "Softmax"', [x.copy()])
    layer = build_layer('type: "Softmax"', dtype=np.float64)
    blob = Blob.from_array(x.copy())
    layer.setup([blob], [blob])
    layer.reshape([blob], [blob])
    layer.forward([blob], [blob])
    np.testing.assert_allclose(blob.data, separate[0].data, rtol=1e-14)
    y = blob.data.copy()
    blob.diff[...] = dy
    layer.backward([blob], [True], [blob])
    expected = y * (dy - (dy * y).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(blob.diff, expected, rtol=1e-12, atol=1e-15)


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((2, 5, 3, 2), 1), ((2, 3, 4), -1), ((3, 1, 2), 1)])
def test_softmax_host_run_kernels(shape, axis, dtype):
    x = np.random.default_rng(3).standard_normal(shape)
    run_gpu_path_on_host(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x], dtype=dtype)


@pytest.mark.gpu
def test_softmax_gpu_parity():
    x = np.random.default_rng(4).standard_normal((2, 21, 5, 7))
    compare_devices('type: "Softmax"', [x])


def test_softmax_bad_axis():
    with pytest.raises(ShapeError, match=r"layer 'softmax'.*axis 3.*found shape \(2, 3\)"):
        run_layer('type: "Softmax" softmax_param { axis: 3 }', [np.zeros((2, 3))])


# -- SoftmaxWithLoss ----------------------------------------------------------------

def labels_for(shape, channels, rng, ignore=None, p_ignore=0.3):
    labels = rng.integers(0, channels, shape)
    if ignore is not None:
        labels = np.where(rng.random(shape) < p_ignore, ignore, labels)
    return labels


LOSS_CASES = [
    # scores shape, labels shape, axis
    ((5, 4), (5,), 1),
    ((3, 4, 2, 3), (3, 1, 2, 3), 1),
    ((2, 3, 5), (2, 3), -1),
    ((4, 1), (4,), 1),
]


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE", "PRE_FIXED"])
@pytest.mark.parametrize("scores_shape,labels_shape,axis", LOSS_CASES)
def test_softmax_loss_forward_and_backward_match_reference(scores_shape, labels_shape, axis, mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(scores_shape) * 2
    channels = scores_shape[axis]
    labels = labels_for(labels_shape, channels, rng, ignore=-1)
    spec = (f'name: "loss" type: "SoftmaxWithLoss" softmax_param {{ axis: {axis} }} '
            f'loss_param {{ ignore_label: -1 normalization: {mode} pre_fixed_normalizer: 3.5 }}')
    _, bottoms, tops = run_layer(spec, [x, labels], num_tops=2, top_diff=1.75)
    loss, prob, _, grad = ref_softmax_loss(x, labels, axis, -1, mode, 3.5)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(tops[1].data, prob, rtol=1e-12, atol=1e-15)
    # Backward scales by the top's diff (the loss weight), as Caffe does.
    np.testing.assert_allclose(bottoms[0].diff, 1.75 * grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("normalize,mode", [("true", "VALID"), ("false", "BATCH_SIZE")])
def test_softmax_loss_legacy_normalize(normalize, mode):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 3, 2))
    labels = labels_for((6, 2), 3, rng, ignore=-1)
    spec = f'type: "SoftmaxWithLoss" loss_param {{ ignore_label: -1 normalize: {normalize} }}'
    _, _, tops = run_layer(spec, [x, labels])
    np.testing.assert_allclose(tops[0].data, ref_softmax_loss(x, labels, 1, -1, mode)[0], rtol=1e-12)


def test_softmax_loss_normalization_overrides_legacy_normalize():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 3))
    labels = labels_for((6,), 3, rng, ignore=-1)
    spec = 'type: "SoftmaxWithLoss" loss_param { ignore_label: -1 normalize: false normalization: FULL }'
    _, _, tops = run_layer(spec, [x, labels])
    np.testing.assert_allclose(tops[0].data, ref_softmax_loss(x, labels, 1, -1, "FULL")[0], rtol=1e-12)


def test_softmax_loss_default_is_valid_without_ignore():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 5))
    labels = rng.integers(0, 5, 4)
    _, _, tops = run_layer('type: "SoftmaxWithLoss"', [x, labels])
    np.testing.assert_allclose(tops[0].data, ref_softmax_loss(x, labels)[0], rtol=1e-12)


def test_softmax_loss_all_ignored_is_zero():
    x = np.random.default_rng(9).standard_normal((3, 4))
    labels = np.full(3, 255)
    spec = 'type: "SoftmaxWithLoss" loss_param { ignore_label: 255 }'
    _, bottoms, tops = run_layer(spec, [x, labels], top_diff=1.0)
    assert float(tops[0].data) == 0.0
    assert not bottoms[0].diff.any()


def test_softmax_loss_floors_probability():
    # prob of the true class underflows to 0: the loss is -log(FLT_MIN), finite.
    x = np.array([[0.0, 2000.0]])
    _, _, tops = run_layer('type: "SoftmaxWithLoss"', [x, np.array([0])])
    np.testing.assert_allclose(tops[0].data, -math.log(FLT_MIN), rtol=1e-12)


def test_softmax_loss_rpn_map_with_ignored_anchors():
    """RPN classification loss: scores (1, 2, 9H, W), labels (1, 1, 9H, W)
    with -1 for anchors that are not sampled; legacy normalize: true."""
    rng = np.random.default_rng(10)
    height, width = 3, 4
    x = rng.standard_normal((1, 2, 9 * height, width))
    labels = rng.choice([-1, -1, 0, 1], size=(1, 1, 9 * height, width))
    spec = 'type: "SoftmaxWithLoss" loss_param { ignore_label: -1 normalize: true }'
    _, bottoms, tops = run_layer(spec, [x, labels], top_diff=1.0)
    loss, _, _, grad = ref_softmax_loss(x, labels, 1, -1, "VALID")
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, grad, rtol=1e-12, atol=1e-15)
    assert not bottoms[0].diff[:, :, labels[0, 0] == -1].any()


def test_softmax_loss_float_labels_are_truncated():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 3))
    labels = np.array([0.0, 1.0, 2.0, -1.0])
    spec = 'type: "SoftmaxWithLoss" loss_param { ignore_label: -1 }'
    _, _, tops = run_layer(spec, [x, labels])
    np.testing.assert_allclose(tops[0].data, ref_softmax_loss(x, [0, 1, 2, -1], 1, -1)[0], rtol=1e-12)


GRAD_CASES = [
    ('loss_param { ignore_label: -1 }', (4, 5), (4,), 1),
    ('loss_param { ignore_label: -1 normalization: FULL }', (2, 3, 3, 2), (2, 1, 3, 2), 1),
    ('softmax_param { axis: 2 } loss_param { normalization: BATCH_SIZE }', (2, 3, 4), (2, 3), 2),
    ('loss_param { ignore_label: -1 normalize: false }', (1, 2, 9, 2), (1, 1, 9, 2), 1),
]


@pytest.mark.parametrize("params,scores_shape,labels_shape,axis", GRAD_CASES)
def test_softmax_loss_gradient(params, scores_shape, labels_shape, axis):
    rng = np.random.default_rng(12)
    x = rng.standard_normal(scores_shape)
    labels = labels_for(labels_shape, scores_shape[axis], rng,
                        ignore=-1 if "ignore_label" in params else None)
    result = check_layer(f'type: "SoftmaxWithLoss" {params}', [x, labels], num_tops=1)
    assert result.passed, result.report()
    assert result.checked == x.size


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer_type", ["SoftmaxWithLoss", "SoftmaxWithLossOHEM"])
def test_softmax_loss_host_run_kernels(dtype, layer_type):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 4, 5))
    labels = labels_for((2, 1, 4, 5), 3, rng, ignore=-1).astype(np.float64)
    tops = 3 if layer_type.endswith("OHEM") else 2
    spec = f'type: "{layer_type}" loss_param {{ ignore_label: -1 }}'
    run_gpu_path_on_host(spec, [x, labels], dtype=dtype, num_tops=tops, propagate=[True, False])
    # Integer labels and no ignore label.
    labels = rng.integers(0, 3, (2, 4, 5))
    run_gpu_path_on_host(f'type: "{layer_type}" loss_param {{ normalization: FULL }}', [x, labels],
                         dtype=dtype, num_tops=tops, propagate=[True, False])


@pytest.mark.gpu
@pytest.mark.parametrize("layer_type", ["SoftmaxWithLoss", "SoftmaxWithLossOHEM"])
def test_softmax_loss_gpu_parity(layer_type):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((1, 2, 27, 8))
    labels = labels_for((1, 1, 27, 8), 2, rng, ignore=-1).astype(np.float64)
    tops = 3 if layer_type.endswith("OHEM") else 2
    compare_devices(f'type: "{layer_type}" loss_param {{ ignore_label: -1 }}', [x, labels],
                    num_tops=tops, propagate=[True, False])


# -- SoftmaxWithLossOHEM --------------------------------------------------------------

PY_RFCN_OHEM_CLS = """
   name: "per_roi_loss_cls"
   type: "SoftmaxWithLossOHEM"
   bottom: "cls_score"
   bottom: "labels"
   top: "temp_loss_cls"
   top: "temp_prob_cls"
   top: "per_roi_loss_cls"
   loss_weight: 0
   loss_weight: 0
   loss_weight: 0
   propagate_down: false
   propagate_down: false
"""


def test_softmax_loss_ohem_tops_as_in_py_rfcn():
    """py-R-FCN's layer text: tops loss, probabilities, per-RoI loss; cls_score
    (R, C, 1, 1) and labels (R, 1, 1, 1) as its proposal target layer gives them."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal((6, 21, 1, 1))
    labels = labels_for((6, 1, 1, 1), 21, rng, ignore=-1)
    # py-R-FCN declares no ignore_label here; add one to see zeros at ignored RoIs.
    layer, _, tops = run_layer(PY_RFCN_OHEM_CLS + " loss_param { ignore_label: -1 }", [x, labels])
    assert len(tops) == 3 and layer.is_loss
    loss, prob, per_pos, _ = ref_softmax_loss(x, labels, 1, -1)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(tops[1].data, prob, rtol=1e-12, atol=1e-15)
    assert tops[2].shape == labels.shape
    np.testing.assert_allclose(tops[2].data.reshape(-1), per_pos, rtol=1e-12)
    assert not tops[2].data[labels == -1].any()


@pytest.mark.parametrize("mode", ["VALID", "PRE_FIXED"])
def test_softmax_loss_ohem_gradient(mode):
    rng = np.random.default_rng(16)
    x = rng.standard_normal((5, 3))
    labels = labels_for((5,), 3, rng, ignore=-1)
    spec = (f'type: "SoftmaxWithLossOHEM" loss_param {{ ignore_label: -1 normalization: {mode} '
            'pre_fixed_normalizer: 4 }')
    # The per-RoI and probability tops carry no gradient (as in the fork):
    # check the loss top alone.
    result = check_layer(spec, [x, labels], num_tops=1)
    assert result.passed, result.report()


def test_plain_softmax_loss_takes_at_most_two_tops():
    x, labels = np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(NetDefinitionError, match="at most 2 top"):
        run_layer('type: "SoftmaxWithLoss"', [x, labels], num_tops=3)


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [3, -2, 7])
def test_softmax_loss_label_out_of_range(bad):
    x = np.zeros((4, 3))
    labels = np.array([0, 1, bad, -1])
    spec = 'name: "cls_loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "lab" loss_param { ignore_label: -1 }'
    pattern = rf"layer 'cls_loss'.*bottom 'lab' holds label {bad} at flat index 2.*\[0, 2\]"
    with pytest.raises(DataError, match=pattern):
        run_layer(spec, [x, labels])
    # The GPU path checks as well (host-run here).
    layer = build_layer(spec, dtype=np.float64)
    bottoms, tops = setup_layer(layer, [x, labels])
    with pytest.raises(DataError, match=pattern):
        layer.forward_gpu(bottoms, tops)


def test_softmax_loss_minus_one_without_ignore_label_is_out_of_range():
    with pytest.raises(DataError, match="holds label -1"):
        run_layer('type: "SoftmaxWithLoss"', [np.zeros((2, 3)), np.array([0, -1])])


def test_softmax_loss_label_count_mismatch():
    spec = 'name: "l" type: "SoftmaxWithLoss" bottom: "score" bottom: "lab"'
    pattern = r"layer 'l'.*bottom 'lab' expected 12 labels.*'score' \(2, 3, 2, 3\).*found shape \(2, 1, 2, 2\)"
    with pytest.raises(ShapeError, match=pattern):
        run_layer(spec, [np.zeros((2, 3, 2, 3)), np.zeros((2, 1, 2, 2))])


def test_softmax_loss_refuses_label_gradient():
    layer = build_layer('type: "SoftmaxWithLoss" bottom: "s" bottom: "lab"', dtype=np.float64)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    bottoms, tops = setup_layer(layer, [np.zeros((2, 3)), np.zeros(2)])
    layer.forward(bottoms, tops)
    with pytest.raises(NetDefinitionError, match="labels bottom 'lab'.*propagate_down: false"):
        layer.backward(tops, [True, True], bottoms)


def test_softmax_loss_propagate_down_false_leaves_diff():
    layer, bottoms, tops = run_layer('type: "SoftmaxWithLoss"', [np.ones((2, 3)), np.zeros(2)])
    bottoms[0].diff[...] = 7.0
    layer.backward(tops, [False, False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)
