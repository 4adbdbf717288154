"""EuclideanLoss, SigmoidCrossEntropyLoss, HingeLoss and ContrastiveLoss
against plainly written references, float64 gradient checks, the host-run
CUDA kernels (not for EuclideanLoss, whose GPU path is the CPU path's array
code), GPU parity and the errors."""
import math

import numpy as np
import pytest

from netdef import Net
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host


def run_layer(spec, arrays, top_diff=None, propagate=None, dtype=np.float64):
    """Forward, and backward with ``top_diff`` on the loss when given."""
    layer = build_layer(spec, dtype=dtype)
    bottoms, tops = setup_layer(layer, arrays)
    layer.forward(bottoms, tops)
    if top_diff is not None:
        tops[0].diff[...] = top_diff
        layer.backward(tops, propagate or [True] + [False] * (len(bottoms) - 1), bottoms)
    return layer, bottoms, tops


@pytest.mark.parametrize("layer_type", ["EuclideanLoss", "SigmoidCrossEntropyLoss",
                                        "HingeLoss", "ContrastiveLoss"])
def test_losses_are_loss_layers(layer_type):
    assert build_layer(f'type: "{layer_type}"').is_loss


# -- EuclideanLoss ----------------------------------------------------------------------

def ref_euclidean(a, b):
    """(loss, d loss / d a) for loss weight 1."""
    a = np.asarray(a, np.float64)
    flat_a, flat_b = a.reshape(-1), np.asarray(b, np.float64).reshape(-1)
    n = a.shape[0]
    total = sum((flat_a[i] - flat_b[i]) ** 2 for i in range(flat_a.size))
    grad = [(flat_a[i] - flat_b[i]) / max(n, 1) for i in range(flat_a.size)]
    return total / max(n, 1) / 2, np.array(grad).reshape(a.shape)


EUCLIDEAN_CASES = [((4, 3), (4, 3)), ((2, 3, 2, 2), (2, 12)), ((1, 5), (1, 5, 1, 1)), ((3,), (3,))]


@pytest.mark.parametrize("a_shape,b_shape", EUCLIDEAN_CASES)
def test_euclidean_matches_reference(a_shape, b_shape):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    layer, bottoms, tops = run_layer('type: "EuclideanLoss"', [a, b], top_diff=0.5,
                                     propagate=[True, True])
    loss, grad = ref_euclidean(a, b)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    assert tops[0].shape == ()
    np.testing.assert_allclose(bottoms[0].diff, 0.5 * grad, rtol=1e-12)
    np.testing.assert_allclose(bottoms[1].diff, -0.5 * grad.reshape(b_shape), rtol=1e-12)


def test_euclidean_by_hand_and_empty_batch():
    _, _, tops = run_layer('type: "EuclideanLoss"', [np.array([[1.0, 2.0], [0.0, 0.0]]),
                                                     np.array([[0.0, 0.0], [3.0, 0.0]])])
    assert float(tops[0].data) == pytest.approx((1 + 4 + 9) / 2 / 2)
    _, _, tops = run_layer('type: "EuclideanLoss"', [np.zeros((0, 3)), np.zeros((0, 3))])
    assert float(tops[0].data) == 0.0


def test_euclidean_in_a_net_has_loss_weight_one():
    text = """
    layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }
    """
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    net = Net(text, "TRAIN", dtype=np.float64)
    out = net.forward(a=a, b=b)
    np.testing.assert_allclose(out["loss"], ref_euclidean(a, b)[0], rtol=1e-12)
    assert out.loss == pytest.approx(float(out["loss"]), rel=1e-12)  # weight 1


@pytest.mark.parametrize("a_shape,b_shape", EUCLIDEAN_CASES[:3])
def test_euclidean_gradient(a_shape, b_shape):
    rng = np.random.default_rng(2)
    result = check_layer('type: "EuclideanLoss"',
                         [rng.standard_normal(a_shape), rng.standard_normal(b_shape)])
    assert result.passed, result.report()
    assert len(result.worst_per_blob) == 2  # both bottoms take a gradient


@pytest.mark.gpu
def test_euclidean_gpu_parity():
    rng = np.random.default_rng(3)
    compare_devices('type: "EuclideanLoss"', [rng.standard_normal((8, 5, 3)),
                                              rng.standard_normal((8, 15))])


def test_euclidean_errors():
    spec = 'name: "l" type: "EuclideanLoss" bottom: "pred" bottom: "target"'
    with pytest.raises(ShapeError, match=r"layer 'l' \(type EuclideanLoss\): bottom 'target' "
                                         r"expected 6 values per item, as 'pred' \(2, 6\), "
                                         r"found shape \(2, 5\)"):
        run_layer(spec, [np.zeros((2, 6)), np.zeros((2, 5))])
    with pytest.raises(ShapeError, match=r"bottom 'target' expected the first axis \(batch\) of "
                                         r"'pred' \(2, 6\), i.e. 2 items, found shape \(3, 4\)"):
        run_layer(spec, [np.zeros((2, 6)), np.zeros((3, 4))])
    with pytest.raises(ShapeError, match=r"bottom 'pred' expected at least one axis"):
        run_layer(spec, [np.zeros(()), np.zeros(())])


# -- SigmoidCrossEntropyLoss --------------------------------------------------------------

def ref_sigmoid_ce(x, t, ignore=None, mode="BATCH_SIZE", pre_fixed=1.0):
    """(loss, d loss / d x for loss weight 1), from -t log(s) - (1 - t) log(1 - s)."""
    x = np.asarray(x, np.float64)
    flat_x, flat_t = x.reshape(-1), np.asarray(t, np.float64).reshape(-1)
    total, valid = 0.0, 0
    grad = np.zeros(flat_x.size)
    for i in range(flat_x.size):
        if ignore is not None and int(flat_t[i]) == ignore:
            continue
        s = 1.0 / (1.0 + math.exp(-flat_x[i]))
        total += -flat_t[i] * math.log(s) - (1 - flat_t[i]) * math.log(1 - s)
        grad[i] = s - flat_t[i]
        valid += 1
    norm = {"FULL": flat_x.size, "VALID": valid, "BATCH_SIZE": x.shape[0], "NONE": 1,
            "PRE_FIXED": pre_fixed}[mode]
    norm = max(norm, 1)
    return total / norm, grad.reshape(x.shape) / norm


def sigmoid_spec(loss_param=""):
    lp = f"loss_param {{ {loss_param} }}" if loss_param else ""
    return f'name: "sce" type: "SigmoidCrossEntropyLoss" {lp}'


def targets_with_ignored(rng, shape, ignore):
    t = rng.random(shape)
    t[rng.random(shape) < 0.3] = ignore
    return t


# loss_param text, the mode the reference uses.
SIGMOID_MODES = [
    ("", "BATCH_SIZE"),                       # Caffe's default for this layer
    ("normalization: FULL", "FULL"),
    ("normalization: VALID", "VALID"),
    ("normalization: BATCH_SIZE", "BATCH_SIZE"),
    ("normalization: NONE", "NONE"),
    ("normalization: PRE_FIXED pre_fixed_normalizer: 7", "PRE_FIXED"),
    ("normalize: true", "VALID"),
    ("normalize: false", "BATCH_SIZE"),
]


@pytest.mark.parametrize("ignore", [None, -1, 255])
@pytest.mark.parametrize("loss_param,mode", SIGMOID_MODES)
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_sigmoid_ce_matches_reference(shape, loss_param, mode, ignore):
    rng = np.random.default_rng(4)
    x = rng.uniform(-4, 4, shape)
    t = rng.random(shape) if ignore is None else targets_with_ignored(rng, shape, ignore)
    text = loss_param + (f" ignore_label: {ignore}" if ignore is not None else "")
    _, bottoms, tops = run_layer(sigmoid_spec(text), [x, t], top_diff=2.0)
    loss, grad = ref_sigmoid_ce(x, t, ignore, mode, pre_fixed=7.0)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, 2.0 * grad, rtol=1e-12, atol=1e-15)


def test_sigmoid_ce_ignore_compares_truncated_targets_and_all_ignored_is_zero():
    # Caffe truncates the target before comparing it with ignore_label:
    # with ignore_label 0, every target in (-1, 1) is ignored; 1.0 counts.
    x, t = np.array([[0.3, -1.2, 2.0]]), np.array([[0.0, 0.9, 1.0]])
    _, bottoms, tops = run_layer(sigmoid_spec("ignore_label: 0 normalization: VALID"), [x, t],
                                 top_diff=1.0)
    np.testing.assert_allclose(tops[0].data, math.log(1 + math.exp(-2.0)), rtol=1e-14)
    assert bottoms[0].diff[0, 0] == 0 and bottoms[0].diff[0, 1] == 0
    _, _, tops = run_layer(sigmoid_spec("ignore_label: 0 normalization: VALID"),
                           [x, np.zeros((1, 3))])
    assert float(tops[0].data) == 0.0


def test_sigmoid_ce_is_stable_for_large_logits():
    x, t = np.array([[800.0, -800.0, 40.0]]), np.array([[0.0, 1.0, 1.0]])
    _, bottoms, tops = run_layer(sigmoid_spec("normalization: NONE"), [x, t], top_diff=1.0)
    np.testing.assert_allclose(tops[0].data, 1600.0 + math.log1p(math.exp(-40.0)), rtol=1e-14)
    np.testing.assert_allclose(bottoms[0].diff, [[1.0, -1.0, -math.exp(-40.0)]], atol=1e-15)


@pytest.mark.parametrize("loss_param", ["", "normalization: VALID ignore_label: -1",
                                        "normalization: FULL ignore_label: -1"])
def test_sigmoid_ce_gradient(loss_param):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2, 2, 2)) * 2
    result = check_layer(sigmoid_spec(loss_param), [x, targets_with_ignored(rng, x.shape, -1)])
    assert result.passed, result.report()
    assert list(result.worst_per_blob) == ["bottom 0 'bottom[0]'"]  # targets take none


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_param", ["", "ignore_label: 255 normalization: VALID"])
def test_sigmoid_ce_host_run_kernel(dtype, loss_param):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 5, 3, 3)) * 3
    run_gpu_path_on_host(sigmoid_spec(loss_param), [x, targets_with_ignored(rng, x.shape, 255)],
                         dtype=dtype, propagate=[True, False])


@pytest.mark.gpu
def test_sigmoid_ce_gpu_parity():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6, 5, 5)) * 3
    compare_devices(sigmoid_spec("ignore_label: -1 normalization: VALID"),
                    [x, targets_with_ignored(rng, x.shape, -1)], propagate=[True, False])


def test_sigmoid_ce_errors():
    spec = 'name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "logits" bottom: "targets"'
    with pytest.raises(ShapeError, match=r"bottom 'targets' expected 12 targets, one per logit "
                                         r"of 'logits' \(2, 6\), found shape \(2, 5\)"):
        run_layer(spec, [np.zeros((2, 6)), np.zeros((2, 5))])
    with pytest.raises(ShapeError, match=r"bottom 'targets' expected the first axis"):
        run_layer(spec, [np.zeros((2, 6)), np.zeros((4, 3))])
    with pytest.raises(NetDefinitionError, match=r"cannot back-propagate to the targets "
                                                 r"bottom 'targets'"):
        run_layer(spec, [np.zeros((2, 3)), np.zeros((2, 3))], top_diff=1.0,
                  propagate=[True, True])


# -- HingeLoss ------------------------------------------------------------------------------

def ref_hinge(x, labels, squared):
    """(loss, d loss / d x for loss weight 1)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    rows = x.reshape(n, -1)
    labels = np.asarray(labels).reshape(-1)
    total, grad = 0.0, np.zeros(rows.shape)
    for i in range(n):
        for j in range(rows.shape[1]):
            s = -1.0 if j == int(labels[i]) else 1.0
            m = max(0.0, 1.0 + s * rows[i, j])
            total += m * m if squared else m
            if squared:
                grad[i, j] = 2 * m * s
            elif m > 0:
                grad[i, j] = s
    return total / n, grad.reshape(x.shape) / n


def hinge_spec(norm=None):
    param = f"hinge_loss_param {{ norm: {norm} }}" if norm else ""
    return f'name: "hinge" type: "HingeLoss" {param}'


HINGE_CASES = [((4, 5), (4,)), ((3, 2, 2, 2), (3, 1, 1, 1)), ((1, 3), (1, 1)), ((2, 1), (2,))]


def hinge_inputs(rng, x_shape, label_shape):
    """Scores whose margins 1 + s x stay away from the kink at 0, and labels."""
    n = x_shape[0]
    dim = int(np.prod(x_shape[1:]))
    x = rng.uniform(-2, 2, x_shape)
    x = np.where(np.abs(np.abs(x) - 1) < 0.05, x * 1.2, x)
    return x, rng.integers(0, dim, n).reshape(label_shape)


@pytest.mark.parametrize("norm", [None, "L1", "L2"])
@pytest.mark.parametrize("x_shape,label_shape", HINGE_CASES)
def test_hinge_matches_reference(x_shape, label_shape, norm):
    rng = np.random.default_rng(8)
    x, labels = hinge_inputs(rng, x_shape, label_shape)
    _, bottoms, tops = run_layer(hinge_spec(norm), [x, labels], top_diff=1.5)
    loss, grad = ref_hinge(x, labels, norm == "L2")
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, 1.5 * grad, rtol=1e-12)


def test_hinge_by_hand_float_labels_truncate():
    x = np.array([[2.0, 0.5, -3.0]])
    # Label 0.9 truncates to class 0: m = (max(0, 1 - 2), 1.5, 0).
    _, _, tops = run_layer(hinge_spec(), [x, np.array([0.9])])
    assert float(tops[0].data) == pytest.approx(1.5)
    _, _, tops = run_layer(hinge_spec("L2"), [x, np.array([0.9])])
    assert float(tops[0].data) == pytest.approx(2.25)


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("x_shape,label_shape", HINGE_CASES[:2])
def test_hinge_gradient(x_shape, label_shape, norm):
    rng = np.random.default_rng(9)
    result = check_layer(hinge_spec(norm), list(hinge_inputs(rng, x_shape, label_shape)))
    assert result.passed, result.report()
    assert result.skipped_kinks == 0


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_host_run_kernel(dtype, norm):
    rng = np.random.default_rng(10)
    run_gpu_path_on_host(hinge_spec(norm), list(hinge_inputs(rng, (5, 4, 2, 1), (5,))),
                         dtype=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gpu_parity(norm):
    rng = np.random.default_rng(11)
    compare_devices(hinge_spec(norm), list(hinge_inputs(rng, (16, 10), (16, 1, 1, 1))))


def test_hinge_errors():
    spec = 'name: "hinge" type: "HingeLoss" bottom: "scores" bottom: "label"'
    with pytest.raises(ShapeError, match=r"bottom 'label' expected 3 labels, one per item of "
                                         r"'scores' \(3, 4\), found shape \(3, 2\)"):
        run_layer(spec, [np.zeros((3, 4)), np.zeros((3, 2))])
    with pytest.raises(DataError, match=r"bottom 'label' holds label 4 at flat index 1, "
                                        r"expected an integer in \[0, 3\]"):
        run_layer(spec, [np.zeros((3, 4)), np.array([0, 4, 1])])
    with pytest.raises(NetDefinitionError, match="cannot back-propagate to the labels bottom 'label'"):
        run_layer(spec, [np.zeros((3, 4)), np.array([0, 1, 1])], top_diff=1.0,
                  propagate=[True, True])


# -- ContrastiveLoss ----------------------------------------------------------------------

def ref_contrastive(a, b, y, margin, legacy):
    """(loss, d loss / d a for loss weight 1), Caffe's 1e-4 guard included."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = a.shape[0]
    a2, b2 = a.reshape(n, -1), b.reshape(n, -1)
    y = np.asarray(y).reshape(-1)
    total, grad = 0.0, np.zeros(a2.shape)
    for i in range(n):
        diff = a2[i] - b2[i]
        d2 = float(diff @ diff)
        d = math.sqrt(d2)
        if int(y[i]) != 0:
            total += d2
            grad[i] = diff
        elif legacy:
            total += max(margin - d2, 0.0)
            grad[i] = -diff if margin - d2 > 0 else 0.0
        else:
            total += max(margin - d, 0.0) ** 2
            grad[i] = -(margin - d) / (d + 1e-4) * diff if margin - d > 0 else 0.0
    return total / n / 2, grad.reshape(a.shape) / n


def contrastive_spec(margin=None, legacy=None):
    fields = (f"margin: {margin} " if margin is not None else "") + \
             (f"legacy_version: {str(legacy).lower()}" if legacy is not None else "")
    param = f"contrastive_loss_param {{ {fields} }}" if fields else ""
    return f'name: "contrastive" type: "ContrastiveLoss" {param}'


def contrastive_inputs(rng, shape, y_shape):
    """Pairs and similarities; y holds 0, 1, 2 and 0.5 (truncated: dissimilar)."""
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    y = rng.choice([0.0, 1.0, 2.0, 0.5], shape[0]).reshape(y_shape)
    return a, b, y


CONTRASTIVE_CASES = [((6, 3), (6,)), ((5, 4, 1, 1), (5, 1, 1, 1)), ((1, 2), (1, 1))]


@pytest.mark.parametrize("margin,legacy", [(None, None), (3.0, False), (2.0, True), (1.0, True)])
@pytest.mark.parametrize("shape,y_shape", CONTRASTIVE_CASES)
def test_contrastive_matches_reference(shape, y_shape, margin, legacy):
    rng = np.random.default_rng(12)
    a, b, y = contrastive_inputs(rng, shape, y_shape)
    _, bottoms, tops = run_layer(contrastive_spec(margin, legacy), [a, b, y], top_diff=0.5,
                                 propagate=[True, True, False])
    loss, grad = ref_contrastive(a, b, y, 1.0 if margin is None else margin, bool(legacy))
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, 0.5 * grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bottoms[1].diff, -0.5 * grad, rtol=1e-12, atol=1e-15)


def test_contrastive_by_hand():
    a, b = np.array([[3.0, 0.0], [0.0, 0.0], [0.5, 0.0]]), np.zeros((3, 2))
    y = np.array([1, 0, 0])
    # d^2 = 9, 0, 0.25; margin 2: similar 9, dissimilar (2 - 0)^2 and (2 - 0.5)^2.
    _, _, tops = run_layer(contrastive_spec(2.0), [a, b, y])
    assert float(tops[0].data) == pytest.approx((9 + 4 + 2.25) / 3 / 2)
    # legacy: max(2 - d^2, 0) = 2 and 1.75.
    _, _, tops = run_layer(contrastive_spec(2.0, True), [a, b, y])
    assert float(tops[0].data) == pytest.approx((9 + 2 + 1.75) / 3 / 2)


def test_contrastive_legacy_gradient():
    rng = np.random.default_rng(13)
    result = check_layer(contrastive_spec(4.0, True), list(contrastive_inputs(rng, (6, 3), (6,))))
    assert result.passed, result.report()
    assert len(result.worst_per_blob) == 2  # a and b; y takes none


def test_contrastive_gradient():
    # Caffe divides by d + 1e-4 instead of d, so its gradient is off by a
    # relative 1e-4 / d for active dissimilar pairs (the reference test above
    # checks that exact formula); the finite differences allow for it.
    rng = np.random.default_rng(14)
    a, b, y = contrastive_inputs(rng, (6, 3), (6,))
    result = check_layer(contrastive_spec(4.0), [a, b, y], tolerance=2e-4)
    assert result.passed, result.report()
    # Similar pairs alone have no guard: the default tolerance holds.
    result = check_layer(contrastive_spec(4.0), [a, b, np.ones(6)])
    assert result.passed, result.report()


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_host_run_kernel(dtype, legacy):
    rng = np.random.default_rng(15)
    run_gpu_path_on_host(contrastive_spec(2.0, legacy),
                         list(contrastive_inputs(rng, (8, 3, 1, 1), (8, 1, 1, 1))),
                         dtype=dtype, propagate=[True, True, False])


@pytest.mark.gpu
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_gpu_parity(legacy):
    rng = np.random.default_rng(16)
    compare_devices(contrastive_spec(3.0, legacy), list(contrastive_inputs(rng, (32, 8), (32,))),
                    propagate=[True, True, False])


def test_contrastive_errors():
    spec = 'name: "contrastive" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim"'
    ok = np.zeros((4, 3))
    with pytest.raises(ShapeError, match=r"bottom 'a' expected features \(N, C\) or "
                                         r"\(N, C, 1, 1\), found shape \(4, 3, 2, 2\)"):
        run_layer(spec, [np.zeros((4, 3, 2, 2))] * 2 + [np.zeros(4)])
    with pytest.raises(ShapeError, match=r"bottom 'b' expected the shape of 'a' \(4, 3\)"):
        run_layer(spec, [ok, np.zeros((4, 2)), np.zeros(4)])
    with pytest.raises(ShapeError, match=r"bottom 'sim' expected one similarity per pair: "
                                         r"\(4,\) or \(4, 1, 1, 1\), found shape \(4, 2\)"):
        run_layer(spec, [ok, ok, np.zeros((4, 2))])
    with pytest.raises(ShapeError, match=r"bottom 'b' expected the first axis"):
        run_layer(spec, [ok, np.zeros((3, 3)), np.zeros(4)])
    assert not build_layer(spec).allow_force_backward(2)
