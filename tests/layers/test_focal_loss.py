"""SigmoidFocalLoss and SoftmaxFocalLoss against plainly written references,
their special cases (gamma 0 is weighted cross-entropy), float64 gradient
checks, the host-run CUDA kernels, GPU parity and the errors."""
import math

import numpy as np
import pytest

from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host


# -- references (plain loops, one element at a time) ------------------------------

def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def ref_sigmoid_focal(x, labels, alpha=0.25, gamma=2.0, ignore=None):
    """(loss, d loss / d x) of logits (N, A*K, ...) and labels (N, A, ...);
    the gradient from the product rule written out per element."""
    x = np.asarray(x, dtype=np.float64)
    n, anchors = labels.shape[:2]
    classes = x.shape[1] // anchors
    xs = x.reshape(n, anchors, classes, -1)
    ls = np.asarray(labels).reshape(n, anchors, -1)
    grad = np.zeros_like(xs)
    total, positives = 0.0, 0
    for i in range(n):
        for a in range(anchors):
            for s in range(ls.shape[2]):
                label = int(ls[i, a, s])
                if ignore is not None and label == ignore:
                    continue
                positives += label > 0
                for k in range(classes):
                    p = sigmoid(xs[i, a, k, s])
                    if label == k + 1:
                        total += -alpha * (1 - p) ** gamma * math.log(p)
                        dldp = -alpha * (-gamma * (1 - p) ** (gamma - 1) * math.log(p)
                                         + (1 - p) ** gamma / p)
                    else:
                        total += -(1 - alpha) * p ** gamma * math.log(1 - p)
                        dldp = -(1 - alpha) * (gamma * p ** (gamma - 1) * math.log(1 - p)
                                               - p ** gamma / (1 - p)) if gamma else \
                            (1 - alpha) / (1 - p)
                    grad[i, a, k, s] = dldp * p * (1 - p)
    norm = max(positives, 1)
    return total / norm, grad.reshape(x.shape) / norm


def ref_softmax_focal(x, labels, alpha=0.25, gamma=2.0, ignore=None, mode="VALID"):
    """(loss, probabilities, d loss / d x) of scores (N, C, ...) and one label per
    position; the gradient by the chain rule through p_t, per element."""
    x = np.asarray(x, dtype=np.float64)
    n, channels = x.shape[:2]
    xs = x.reshape(n, channels, -1)
    ls = np.asarray(labels).reshape(n, -1)
    prob = np.zeros_like(xs)
    grad = np.zeros_like(xs)
    total, valid = 0.0, 0
    for i in range(n):
        for s in range(xs.shape[2]):
            m = max(xs[i, :, s])
            exps = [math.exp(v - m) for v in xs[i, :, s]]
            prob[i, :, s] = [e / sum(exps) for e in exps]
            label = int(ls[i, s])
            if ignore is not None and label == ignore:
                continue
            valid += 1
            pt = prob[i, label, s]
            w = alpha if label > 0 else 1 - alpha
            total += -w * (1 - pt) ** gamma * math.log(pt)
            dldpt = -w * ((1 - pt) ** gamma / pt
                          - (gamma * (1 - pt) ** (gamma - 1) * math.log(pt) if gamma else 0.0))
            for c in range(channels):
                grad[i, c, s] = dldpt * pt * ((1.0 if c == label else 0.0) - prob[i, c, s])
    norm = {"VALID": valid, "FULL": ls.size, "BATCH_SIZE": n, "NONE": 1}[mode]
    norm = max(norm, 1)
    return total / norm, prob.reshape(x.shape), grad.reshape(x.shape) / norm


def run_layer(spec, arrays, num_tops=None, top_diff=None, dtype=np.float64):
    layer = build_layer(spec, dtype=dtype)
    bottoms, tops = setup_layer(layer, arrays, num_tops)
    layer.forward(bottoms, tops)
    if top_diff is not None:
        tops[0].diff[...] = top_diff
        layer.backward(tops, [True] + [False] * (len(bottoms) - 1), bottoms)
    return layer, bottoms, tops


def anchor_labels(shape, classes, rng, ignore=-1):
    """Mostly background, some objects, some ignored: RetinaNet's mix."""
    extra = [0] if ignore is None else [ignore]
    return rng.choice([0, 0, 0] + extra + list(range(1, classes + 1)), size=shape)


# -- SigmoidFocalLoss ---------------------------------------------------------------

SIGMOID_CASES = [
    # logits, labels, params
    ((2, 6, 3, 2), (2, 2, 3, 2), "focal_loss_param { alpha: 0.25 gamma: 2 }"),
    ((3, 4), (3, 1), "focal_loss_param { alpha: 0.75 gamma: 0.5 }"),
    ((1, 9, 2, 3), (1, 3, 2, 3), "focal_loss_param { alpha: 0.4 gamma: 1.5 }"),
]


@pytest.mark.parametrize("scores_shape,labels_shape,params", SIGMOID_CASES)
def test_sigmoid_focal_forward_and_backward_match_reference(scores_shape, labels_shape, params):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(scores_shape) * 2
    classes = scores_shape[1] // labels_shape[1]
    labels = anchor_labels(labels_shape, classes, rng)
    spec = f'type: "SigmoidFocalLoss" {params} loss_param {{ ignore_label: -1 }}'
    _, bottoms, tops = run_layer(spec, [x, labels], top_diff=1.5)
    layer = build_layer(spec)
    loss, grad = ref_sigmoid_focal(x, labels, layer.param.focal_loss_param.alpha,
                                   layer.param.focal_loss_param.gamma, ignore=-1)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, 1.5 * grad, rtol=1e-10, atol=1e-14)


def test_sigmoid_focal_defaults_are_retinanet_and_normalize_by_positives():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 2, 2))
    labels = np.array([[[[0, 2], [-1, 0]]], [[[3, 0], [1, 0]]]])  # 3 positives
    _, _, tops = run_layer('type: "SigmoidFocalLoss" loss_param { ignore_label: -1 }', [x, labels])
    loss, _ = ref_sigmoid_focal(x, labels, 0.25, 2.0, ignore=-1)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    # No positive anchor: the sum is divided by 1, not 0.
    background = np.zeros_like(labels)
    _, _, tops = run_layer('type: "SigmoidFocalLoss"', [x, background])
    np.testing.assert_allclose(tops[0].data, ref_sigmoid_focal(x, background)[0], rtol=1e-12)


def test_sigmoid_focal_gamma_0_alpha_half_is_half_cross_entropy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 3))
    labels = anchor_labels((2, 2, 3), 4, rng)
    spec = 'type: "SigmoidFocalLoss" focal_loss_param { alpha: 0.5 gamma: 0 } loss_param { ignore_label: -1 }'
    _, bottoms, tops = run_layer(spec, [x, labels], top_diff=1.0)
    xs = x.reshape(2, 2, 4, 3)
    targets = (labels.reshape(2, 2, 1, 3) == np.arange(1, 5).reshape(1, 1, 4, 1)).astype(float)
    kept = labels.reshape(2, 2, 1, 3) != -1
    p = 1 / (1 + np.exp(-xs))
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    positives = max(int((labels > 0).sum()), 1)
    np.testing.assert_allclose(tops[0].data, 0.5 * (bce * kept).sum() / positives, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff.reshape(xs.shape),
                               0.5 * (p - targets) * kept / positives, rtol=1e-10, atol=1e-15)


def test_sigmoid_focal_alpha_extremes_weight_one_side_only():
    """alpha 1: background terms vanish; alpha 0: object terms vanish."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2))
    labels = np.array([[0], [1], [2], [0]])
    only_pos = run_layer('type: "SigmoidFocalLoss" focal_loss_param { alpha: 1 }', [x, labels])[2]
    only_neg = run_layer('type: "SigmoidFocalLoss" focal_loss_param { alpha: 0 }', [x, labels])[2]
    np.testing.assert_allclose(only_pos[0].data, ref_sigmoid_focal(x, labels, 1.0)[0], rtol=1e-12)
    np.testing.assert_allclose(only_neg[0].data, ref_sigmoid_focal(x, labels, 0.0)[0], rtol=1e-12)
    p = 1 / (1 + np.exp(-x))
    pos_terms = -(1 - p[1, 0]) ** 2 * np.log(p[1, 0]) - (1 - p[2, 1]) ** 2 * np.log(p[2, 1])
    np.testing.assert_allclose(only_pos[0].data, pos_terms / 2, rtol=1e-12)


def test_sigmoid_focal_is_stable_for_large_logits():
    x = np.array([[800.0, -800.0], [-800.0, 800.0]])
    labels = np.array([[1], [1]])
    _, bottoms, tops = run_layer('type: "SigmoidFocalLoss"', [x, labels], top_diff=1.0)
    assert np.isfinite(tops[0].data) and np.all(np.isfinite(bottoms[0].diff))
    # Row 1: the object logit is -800 (loss 0.25 * 800); the background one +800
    # (0.75 * 800). Row 0 is right on both channels (loss 0).
    np.testing.assert_allclose(tops[0].data, (0.25 * 800 + 0.75 * 800) / 2, rtol=1e-12)


@pytest.mark.parametrize("params", ["", "focal_loss_param { alpha: 0.6 gamma: 0.7 }",
                                    "focal_loss_param { gamma: 0 }"])
def test_sigmoid_focal_gradient(params):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 2, 2))
    labels = anchor_labels((2, 2, 2, 2), 3, rng)
    spec = f'type: "SigmoidFocalLoss" {params} loss_param {{ ignore_label: -1 }}'
    result = check_layer(spec, [x, labels], num_tops=1)
    assert result.passed, result.report()
    assert result.checked == x.size


def test_sigmoid_focal_positive_count_bottom_normalizes_pyramid_levels_together():
    """Two levels' losses, each divided by the positives of both (the third
    bottom), add up to one loss over the levels laid side by side."""
    rng = np.random.default_rng(12)
    big, small = rng.standard_normal((2, 6, 4, 4)), rng.standard_normal((2, 6, 2, 2))
    big_labels, small_labels = anchor_labels((2, 2, 4, 4), 3, rng), anchor_labels((2, 2, 2, 2), 3, rng)
    total = np.array([float((big_labels > 0).sum() + (small_labels > 0).sum())])
    spec = 'type: "SigmoidFocalLoss" loss_param { ignore_label: -1 }'
    per_level = [run_layer(spec, [x, lab, total], top_diff=1.0)
                 for x, lab in ((big, big_labels), (small, small_labels))]
    joined_x = np.concatenate([big.reshape(2, 6, -1), small.reshape(2, 6, -1)], axis=2)
    joined_labels = np.concatenate([big_labels.reshape(2, 2, -1), small_labels.reshape(2, 2, -1)], axis=2)
    loss, grad = ref_sigmoid_focal(joined_x, joined_labels, ignore=-1)
    levels_loss = sum(float(tops[0].data) for _, _, tops in per_level)
    np.testing.assert_allclose(levels_loss, loss, rtol=1e-12)
    np.testing.assert_allclose(per_level[1][1][0].diff.reshape(2, 6, -1), grad[:, :, 16:], rtol=1e-10)
    # A count below 1 divides by 1.
    _, _, tops = run_layer(spec, [big, big_labels, np.array([0.0])])
    np.testing.assert_allclose(tops[0].data, ref_sigmoid_focal(big, big_labels, ignore=-1)[0]
                               * max(int((big_labels > 0).sum()), 1), rtol=1e-12)


# -- SoftmaxFocalLoss ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("scores_shape,labels_shape", [((5, 4), (5,)), ((2, 3, 2, 3), (2, 1, 2, 3))])
def test_softmax_focal_forward_and_backward_match_reference(scores_shape, labels_shape, mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(scores_shape) * 2
    labels = anchor_labels(labels_shape, scores_shape[1] - 1, rng)
    spec = (f'type: "SoftmaxFocalLoss" focal_loss_param {{ alpha: 0.3 gamma: 1.5 }} '
            f'loss_param {{ ignore_label: -1 normalization: {mode} }}')
    _, bottoms, tops = run_layer(spec, [x, labels], num_tops=2, top_diff=0.5)
    loss, prob, grad = ref_softmax_focal(x, labels, float(np.float32(0.3)), 1.5, ignore=-1, mode=mode)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(tops[1].data, prob, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bottoms[0].diff, 0.5 * grad, rtol=1e-10, atol=1e-14)


def test_softmax_focal_gamma_0_alpha_half_is_half_softmax_loss():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 2, 2))
    labels = anchor_labels((3, 1, 2, 2), 3, rng)
    params = 'loss_param { ignore_label: -1 normalization: VALID }'
    focal = f'type: "SoftmaxFocalLoss" focal_loss_param {{ alpha: 0.5 gamma: 0 }} {params}'
    _, fb, ft = run_layer(focal, [x, labels], top_diff=1.0)
    _, sb, st = run_layer(f'type: "SoftmaxWithLoss" {params}', [x, labels], top_diff=1.0)
    np.testing.assert_allclose(ft[0].data, 0.5 * st[0].data, rtol=1e-12)
    np.testing.assert_allclose(fb[0].diff, 0.5 * sb[0].diff, rtol=1e-10, atol=1e-15)


def test_softmax_focal_default_alpha_weights_background_and_objects():
    x = np.array([[0.3, -0.2, 0.1], [0.5, 0.4, -1.0]])
    labels = np.array([0, 2])
    _, _, tops = run_layer('type: "SoftmaxFocalLoss"', [x, labels])
    np.testing.assert_allclose(tops[0].data, ref_softmax_focal(x, labels)[0], rtol=1e-12)


def test_softmax_focal_is_stable_for_large_scores():
    x = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]])
    _, bottoms, tops = run_layer('type: "SoftmaxFocalLoss" focal_loss_param { gamma: 0.5 }',
                                 [x, np.array([1, 1])], top_diff=1.0)
    assert np.isfinite(tops[0].data) and np.all(np.isfinite(bottoms[0].diff))
    np.testing.assert_allclose(tops[0].data, 0.25 * 2000 / 2, rtol=1e-12)


@pytest.mark.parametrize("params,shape,labels_shape", [
    ('loss_param { ignore_label: -1 }', (4, 5), (4,)),
    ('focal_loss_param { alpha: 0.7 gamma: 0.5 } loss_param { ignore_label: -1 normalization: FULL }',
     (2, 3, 2, 2), (2, 1, 2, 2)),
    ('softmax_param { axis: 2 } focal_loss_param { gamma: 0 }', (2, 3, 4), (2, 3)),
])
def test_softmax_focal_gradient(params, shape, labels_shape):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    axis = 2 if "axis: 2" in params else 1
    labels = anchor_labels(labels_shape, shape[axis] - 1, rng,
                           ignore=-1 if "ignore_label" in params else None)
    result = check_layer(f'type: "SoftmaxFocalLoss" {params}', [x, labels], num_tops=1)
    assert result.passed, result.report()
    assert result.checked == x.size


# -- kernels: host-run and on the GPU ------------------------------------------------

@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gamma", [0, 0.5, 2])
def test_focal_losses_host_run_kernels(dtype, gamma):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 6, 3, 4)) * 3
    labels = anchor_labels((2, 2, 3, 4), 3, rng).astype(np.float64)
    spec = f'type: "SigmoidFocalLoss" focal_loss_param {{ gamma: {gamma} }} loss_param {{ ignore_label: -1 }}'
    run_gpu_path_on_host(spec, [x, labels], dtype=dtype, propagate=[True, False])
    run_gpu_path_on_host(f'type: "SigmoidFocalLoss" focal_loss_param {{ gamma: {gamma} }}',
                         [x, np.abs(labels).astype(np.int64)], dtype=dtype, propagate=[True, False])
    run_gpu_path_on_host(spec, [x, labels, np.array([7.0])], dtype=dtype,
                         propagate=[True, False, False])
    soft = rng.standard_normal((2, 4, 3, 4)) * 3
    soft_labels = anchor_labels((2, 1, 3, 4), 3, rng)
    spec = f'type: "SoftmaxFocalLoss" focal_loss_param {{ gamma: {gamma} }} loss_param {{ ignore_label: -1 }}'
    run_gpu_path_on_host(spec, [soft, soft_labels], dtype=dtype, num_tops=2, propagate=[True, False])


@pytest.mark.gpu
def test_focal_losses_gpu_parity():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 9 * 4, 5, 6))
    labels = anchor_labels((2, 9, 5, 6), 4, rng).astype(np.float64)
    compare_devices('type: "SigmoidFocalLoss" loss_param { ignore_label: -1 }', [x, labels],
                    propagate=[True, False])
    soft = rng.standard_normal((2, 5, 9, 6))
    soft_labels = anchor_labels((2, 1, 9, 6), 4, rng).astype(np.float64)
    compare_devices('type: "SoftmaxFocalLoss" loss_param { ignore_label: -1 }', [soft, soft_labels],
                    num_tops=2, propagate=[True, False])


# -- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("layer_type,x,labels,bad,allowed", [
    ("SigmoidFocalLoss", np.zeros((4, 3)), np.array([[0], [3], [4], [-1]]), 4, r"\[0, 3\]"),
    ("SigmoidFocalLoss", np.zeros((4, 3)), np.array([[0], [1], [-2], [-1]]), -2, r"\[0, 3\]"),
    ("SoftmaxFocalLoss", np.zeros((4, 3)), np.array([0, 1, 3, -1]), 3, r"\[0, 2\]"),
])
def test_focal_label_out_of_range(layer_type, x, labels, bad, allowed):
    spec = (f'name: "cls" type: "{layer_type}" bottom: "score" bottom: "lab" '
            'loss_param { ignore_label: -1 }')
    pattern = rf"layer 'cls'.*bottom 'lab' holds label {bad} at flat index 2.*{allowed}"
    with pytest.raises(DataError, match=pattern):
        run_layer(spec, [x, labels])
    layer = build_layer(spec, dtype=np.float64)
    bottoms, tops = setup_layer(layer, [x, labels])
    with pytest.raises(DataError, match=pattern):
        layer.forward_gpu(bottoms, tops)


@pytest.mark.parametrize("scores,labels", [((2, 6, 3), (2, 4, 3)), ((2, 6, 3), (2, 2, 4)),
                                           ((2, 6), (3, 2)), ((2, 6), (2,))])
def test_sigmoid_focal_label_shape(scores, labels):
    spec = 'name: "fl" type: "SigmoidFocalLoss" bottom: "logits" bottom: "lab"'
    with pytest.raises(ShapeError, match=r"layer 'fl'.*bottom 'lab' expected \(N, A, \.\.\.\) labels"):
        run_layer(spec, [np.zeros(scores), np.zeros(labels)])


def test_sigmoid_focal_positive_count_must_be_one_value():
    spec = 'name: "fl" type: "SigmoidFocalLoss" bottom: "logits" bottom: "lab" bottom: "num"'
    with pytest.raises(ShapeError, match=r"layer 'fl'.*bottom 'num' expected one value.*found shape \(2,\)"):
        run_layer(spec, [np.zeros((2, 3)), np.zeros((2, 1)), np.ones(2)])


def test_sigmoid_focal_refuses_positive_count_gradient():
    layer = build_layer('type: "SigmoidFocalLoss" bottom: "s" bottom: "lab" bottom: "num"')
    bottoms, tops = setup_layer(layer, [np.zeros((2, 3)), np.zeros((2, 1)), np.ones(1)])
    layer.forward(bottoms, tops)
    with pytest.raises(NetDefinitionError, match="positive count bottom 'num'"):
        layer.backward(tops, [True, False, True], bottoms)


def test_softmax_focal_label_count():
    spec = 'name: "fl" type: "SoftmaxFocalLoss" bottom: "s" bottom: "lab"'
    with pytest.raises(ShapeError, match=r"layer 'fl'.*bottom 'lab' expected 6 labels.*found shape \(2, 4\)"):
        run_layer(spec, [np.zeros((2, 3, 3)), np.zeros((2, 4))])


@pytest.mark.parametrize("layer_type", ["SigmoidFocalLoss", "SoftmaxFocalLoss"])
@pytest.mark.parametrize("param,pattern", [("alpha: 1.5", r"alpha must lie in \[0, 1\], found 1.5"),
                                           ("alpha: -0.1", r"alpha must lie in \[0, 1\], found -0.1"),
                                           ("gamma: -1", "gamma must be >= 0, found -1")])
def test_focal_bad_params(layer_type, param, pattern):
    spec = f'name: "fl" type: "{layer_type}" focal_loss_param {{ {param} }}'
    with pytest.raises(NetDefinitionError, match=rf"layer 'fl'.*{pattern}"):
        run_layer(spec, [np.zeros((2, 3)), np.zeros((2, 1))])


@pytest.mark.parametrize("layer_type", ["SigmoidFocalLoss", "SoftmaxFocalLoss"])
def test_focal_refuses_label_gradient(layer_type):
    layer = build_layer(f'type: "{layer_type}" bottom: "s" bottom: "lab"', dtype=np.float64)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    bottoms, tops = setup_layer(layer, [np.zeros((2, 3)), np.zeros((2, 1))])
    layer.forward(bottoms, tops)
    with pytest.raises(NetDefinitionError, match="labels bottom 'lab'.*propagate_down: false"):
        layer.backward(tops, [True, True], bottoms)


# -- in a Net -------------------------------------------------------------------------

NET = """
force_backward: true
input: "logits" input_shape { dim: 2 dim: 6 dim: 2 dim: 2 }
input: "labels" input_shape { dim: 2 dim: 2 dim: 2 dim: 2 }
layer { name: "fl" type: "SigmoidFocalLoss" bottom: "logits" bottom: "labels" top: "fl"
        loss_weight: 2 propagate_down: true propagate_down: false
        focal_loss_param { alpha: 0.5 gamma: 1 } loss_param { ignore_label: -1 } }
"""


def test_sigmoid_focal_in_a_net_reads_its_params_and_loss_weight(tmp_path):
    from netdef import Net
    path = tmp_path / "fl.prototxt"
    path.write_text(NET)
    net = Net(str(path), "TRAIN", dtype=np.float64)
    force = net.blobs["logits"]
    rng = np.random.default_rng(10)
    x, labels = rng.standard_normal((2, 6, 2, 2)), anchor_labels((2, 2, 2, 2), 3, rng)
    out = net.forward(logits=x, labels=labels.astype(np.float64))
    loss, grad = ref_sigmoid_focal(x, labels, 0.5, 1.0, ignore=-1)
    # The top holds the loss; loss_weight scales the gradient it seeds.
    np.testing.assert_allclose(out["fl"], loss, rtol=1e-12)
    net.backward()
    np.testing.assert_allclose(force.diff, 2 * grad, rtol=1e-10, atol=1e-14)


FOCAL_NET = """
layer { name: "in" type: "Input" top: "logits" top: "anchors" top: "scores" top: "label"
        input_param { shape { dim: 2 dim: 6 dim: 2 } shape { dim: 2 dim: 2 dim: 2 }
                      shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: "sigmoid_fl" type: "SigmoidFocalLoss" bottom: "logits" bottom: "anchors"
        top: "sigmoid_fl" loss_param { ignore_label: -1 } }
layer { name: "softmax_fl" type: "SoftmaxFocalLoss" bottom: "scores" bottom: "label"
        top: "softmax_fl" loss_param { ignore_label: -1 } }
"""


@requires_cxx
def test_focal_losses_on_the_gpu_path_defer_label_checks(monkeypatch):
    """On the stand-in GPU (bench.standin_cupy, kernels host-compiled), the
    label checks cost no synchronization of their own, and a bad label
    raises at the end of the pass with the CPU's message."""
    from bench.standin_cupy import COUNTS, SYNC_EVENTS, installed
    from layers import kernels
    from netdef import Net
    from netdef.device import Device
    monkeypatch.setattr(kernels, "_gpu_modules", {})
    monkeypatch.setattr(kernels, "_gpu_functions", {})
    rng = np.random.default_rng(11)
    inputs = dict(logits=rng.standard_normal((2, 6, 2)).astype(np.float32),
                  anchors=np.array([[[0, 1], [3, -1]], [[0, 0], [2, 0]]], np.float32),
                  scores=rng.standard_normal((4, 3)).astype(np.float32),
                  label=np.array([0, 2, -1, 1], np.float32))
    cpu_out = Net(FOCAL_NET, "TRAIN").forward(**inputs)
    with installed():
        net = Net(FOCAL_NET, "TRAIN", device=Device("gpu", 0))
        COUNTS.reset()
        out = net.forward(**inputs)
        assert sum(COUNTS.totals()[e] for e in SYNC_EVENTS) == 1
        assert out.loss == pytest.approx(cpu_out.loss, rel=1e-5)
        bad = dict(inputs, anchors=np.where(inputs["anchors"] == 3, 4, inputs["anchors"]))
        with pytest.raises(DataError) as on_gpu:
            net.forward(**bad)
    with pytest.raises(DataError) as on_cpu:
        Net(FOCAL_NET, "TRAIN").forward(**bad)
    assert str(on_gpu.value) == str(on_cpu.value)
    assert "layer 'sigmoid_fl'" in str(on_cpu.value) and "label 4 at flat index 2" in str(on_cpu.value)
