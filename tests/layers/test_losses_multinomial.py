"""MultinomialLogisticLoss and InfogainLoss against plainly written
references, float64 gradient checks, the host-run GPU path of InfogainLoss
(its softmax kernel; MultinomialLogisticLoss has no kernel of its own: its
GPU path is the CPU path's array code), GPU parity, the binaryproto H file
and the errors."""
import math

import numpy as np
import pytest

from netdef import caffe_pb2
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host
from tests.layer_checks import outer_channels_inner

# Caffe's kLOG_THRESHOLD, the float 1e-20 (9.99999968e-21).
LOG_THRESHOLD = float(np.float32(1e-20))


def run_layer(spec, arrays, top_diff=None, propagate=None, num_tops=None):
    layer = build_layer(spec, dtype=np.float64)
    bottoms, tops = setup_layer(layer, arrays, num_tops)
    layer.forward(bottoms, tops)
    if top_diff is not None:
        tops[0].diff[...] = top_diff
        layer.backward(tops, propagate or [True] + [False] * (len(bottoms) - 1), bottoms)
    return layer, bottoms, tops


@pytest.mark.parametrize("layer_type", ["MultinomialLogisticLoss", "InfogainLoss"])
def test_losses_are_loss_layers(layer_type):
    assert build_layer(f'type: "{layer_type}"').is_loss


# -- MultinomialLogisticLoss ---------------------------------------------------------------

def ref_multinomial(prob, labels):
    """(loss, d loss / d prob for loss weight 1)."""
    prob = np.asarray(prob, np.float64)
    n = prob.shape[0]
    rows = prob.reshape(n, -1)
    labels = np.asarray(labels).reshape(-1)
    total, grad = 0.0, np.zeros(rows.shape)
    for i in range(n):
        p = max(rows[i, int(labels[i])], LOG_THRESHOLD)
        total -= math.log(p)
        grad[i, int(labels[i])] = -1.0 / p / n
    return total / n, grad.reshape(prob.shape)


def probabilities(rng, shape):
    p = rng.uniform(0.05, 1.0, shape)
    n = shape[0]
    return (p.reshape(n, -1) / p.reshape(n, -1).sum(axis=1, keepdims=True)).reshape(shape)


MULTINOMIAL_CASES = [((4, 5), (4,)), ((3, 2, 2, 2), (3, 1, 1, 1)), ((2, 3), (2, 1)), ((1, 1), (1,))]


@pytest.mark.parametrize("p_shape,label_shape", MULTINOMIAL_CASES)
def test_multinomial_matches_reference(p_shape, label_shape):
    rng = np.random.default_rng(0)
    prob = probabilities(rng, p_shape)
    dim = int(np.prod(p_shape[1:]))
    labels = rng.integers(0, dim, p_shape[0]).reshape(label_shape)
    _, bottoms, tops = run_layer('type: "MultinomialLogisticLoss"', [prob, labels], top_diff=0.5)
    loss, grad = ref_multinomial(prob, labels)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, 0.5 * grad, rtol=1e-12)


def test_multinomial_floors_probabilities_at_caffes_threshold():
    prob = np.array([[0.0, 1.0], [1e-30, 1.0]])
    _, bottoms, tops = run_layer('type: "MultinomialLogisticLoss"', [prob, np.array([0, 0])],
                                 top_diff=1.0)
    np.testing.assert_allclose(tops[0].data, -math.log(LOG_THRESHOLD), rtol=1e-14)
    np.testing.assert_allclose(bottoms[0].diff[:, 0], -0.5 / LOG_THRESHOLD, rtol=1e-14)
    assert np.all(bottoms[0].diff[:, 1] == 0)


@pytest.mark.parametrize("p_shape,label_shape", MULTINOMIAL_CASES[:2])
def test_multinomial_gradient(p_shape, label_shape):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, int(np.prod(p_shape[1:])), p_shape[0]).reshape(label_shape)
    result = check_layer('type: "MultinomialLogisticLoss"', [probabilities(rng, p_shape), labels])
    assert result.passed, result.report()


@pytest.mark.gpu
def test_multinomial_gpu_parity():
    rng = np.random.default_rng(2)
    compare_devices('type: "MultinomialLogisticLoss"',
                    [probabilities(rng, (16, 10)), rng.integers(0, 10, 16)])


def test_multinomial_errors():
    spec = 'name: "mlr" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "label"'
    with pytest.raises(ShapeError, match=r"layer 'mlr' \(type MultinomialLogisticLoss\): bottom "
                                         r"'label' expected one label per item: \(3,\) or "
                                         r"\(3, 1, 1, 1\), found shape \(3, 2\)"):
        run_layer(spec, [np.zeros((3, 4)), np.zeros((3, 2))])
    with pytest.raises(ShapeError, match=r"bottom 'label' expected the first axis"):
        run_layer(spec, [np.zeros((3, 4)), np.zeros(2)])
    with pytest.raises(DataError, match=r"bottom 'label' holds label -1 at flat index 2, "
                                        r"expected an integer in \[0, 3\]"):
        run_layer(spec, [np.zeros((3, 4)), np.array([0, 1, -1])])
    with pytest.raises(NetDefinitionError, match="cannot back-propagate to the labels bottom 'label'"):
        run_layer(spec, [np.full((3, 4), 0.25), np.array([0, 1, 2])], top_diff=1.0,
                  propagate=[True, True])


# -- InfogainLoss ---------------------------------------------------------------------------

def ref_infogain(x, labels, infogain, axis=1, ignore=None, mode="VALID"):
    """(loss, prob, d loss / d x for loss weight 1), softmax written out."""
    x = np.asarray(x, np.float64)
    axis, outer, channels, inner = outer_channels_inner(x.shape, axis)
    x3 = x.reshape(outer, channels, inner)
    h = np.asarray(infogain, np.float64).reshape(channels, channels)
    lab = np.asarray(labels).reshape(-1)
    prob = np.zeros_like(x3)
    grad = np.zeros_like(x3)
    total, valid = 0.0, 0
    for o in range(outer):
        for i in range(inner):
            exps = [math.exp(x3[o, c, i] - max(x3[o, :, i])) for c in range(channels)]
            prob[o, :, i] = [e / sum(exps) for e in exps]
            label = int(lab[o * inner + i])
            if ignore is not None and label == ignore:
                continue
            valid += 1
            for c in range(channels):
                total -= h[label, c] * math.log(max(prob[o, c, i], LOG_THRESHOLD))
                grad[o, c, i] = prob[o, c, i] * h[label].sum() - h[label, c]
    norm = max({"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode], 1)
    return total / norm, prob.reshape(x.shape), grad.reshape(x.shape) / norm


def infogain_spec(axis=None, loss_param="", source=None, tops=1):
    fields = (f"axis: {axis} " if axis is not None else "") + \
             (f'source: "{source}"' if source is not None else "")
    param = f"infogain_loss_param {{ {fields} }}" if fields else ""
    lp = f"loss_param {{ {loss_param} }}" if loss_param else ""
    top_text = " ".join(f'top: "t{i}"' for i in range(tops))
    return f'name: "infogain" type: "InfogainLoss" {param} {lp} {top_text}'


def infogain_inputs(rng, shape, axis, ignore=None):
    """Scores, labels (some ``ignore``) and a random non-negative H."""
    axis, _, channels, _ = outer_channels_inner(shape, axis)
    labels = rng.integers(0, channels, shape[:axis] + shape[axis + 1:]).astype(np.float64)
    if ignore is not None:
        labels[rng.random(labels.shape) < 0.3] = ignore
    return rng.standard_normal(shape) * 2, labels, rng.uniform(0, 2, (channels, channels))


INFOGAIN_CASES = [((4, 3), 1), ((2, 3, 2, 2), 1), ((2, 3, 4), -1), ((2, 2, 3, 2), 2)]


@pytest.mark.parametrize("mode", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("shape,axis", INFOGAIN_CASES)
def test_infogain_matches_reference(shape, axis, ignore, mode):
    rng = np.random.default_rng(3)
    x, labels, h = infogain_inputs(rng, shape, axis, ignore)
    loss_param = f"normalization: {mode}" + (f" ignore_label: {ignore}" if ignore is not None else "")
    _, bottoms, tops = run_layer(infogain_spec(axis, loss_param, tops=2), [x, labels, h],
                                 top_diff=1.5)
    loss, prob, grad = ref_infogain(x, labels, h, axis, ignore, mode)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(tops[1].data, prob, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, 1.5 * grad, rtol=1e-12, atol=1e-15)


def test_infogain_with_identity_is_softmax_loss():
    rng = np.random.default_rng(4)
    x, labels, _ = infogain_inputs(rng, (3, 4, 2), 1)
    spec = 'type: "SoftmaxWithLoss"'
    _, soft_bottoms, soft_tops = run_layer(spec, [x, labels], top_diff=1.0)
    _, bottoms, tops = run_layer(infogain_spec(), [x, labels, np.eye(4)], top_diff=1.0)
    np.testing.assert_allclose(tops[0].data, soft_tops[0].data, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, soft_bottoms[0].diff, rtol=1e-12, atol=1e-15)


def test_infogain_all_ignored_is_zero():
    x = np.ones((2, 3))
    _, bottoms, tops = run_layer(infogain_spec(loss_param="ignore_label: -1"),
                                 [x, np.array([-1.0, -1.0]), np.ones((3, 3))], top_diff=1.0)
    assert float(tops[0].data) == 0.0 and not bottoms[0].diff.any()


@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("shape,axis", INFOGAIN_CASES[1:3])
def test_infogain_gradient(shape, axis, ignore):
    rng = np.random.default_rng(5)
    loss_param = f"ignore_label: {ignore}" if ignore is not None else ""
    result = check_layer(infogain_spec(axis, loss_param), list(infogain_inputs(rng, shape, axis, ignore)))
    assert result.passed, result.report()
    assert list(result.worst_per_blob) == ["bottom 0 'bottom[0]'"]  # labels and H take none


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ignore", [None, 255])
def test_infogain_host_run_gpu_path(dtype, ignore):
    rng = np.random.default_rng(6)
    loss_param = f"ignore_label: {ignore}" if ignore is not None else ""
    run_gpu_path_on_host(infogain_spec(1, loss_param, tops=2),
                         list(infogain_inputs(rng, (2, 5, 3, 2), 1, ignore)),
                         dtype=dtype, propagate=[True, False, False])


@pytest.mark.gpu
def test_infogain_gpu_parity():
    rng = np.random.default_rng(7)
    compare_devices(infogain_spec(1, "ignore_label: 255", tops=2),
                    list(infogain_inputs(rng, (4, 6, 5, 5), 1, 255)),
                    propagate=[True, False, False])


# -- InfogainLoss: H from a binaryproto file ------------------------------------------------

def write_blob(path, values, legacy=True, double=False):
    blob = caffe_pb2.BlobProto()
    values = np.asarray(values)
    if legacy:
        blob.num, blob.channels = 1, 1
        blob.height, blob.width = values.shape
    else:
        blob.shape.dim.extend(values.shape)
    (blob.double_data if double else blob.data).extend(values.reshape(-1).tolist())
    path.write_bytes(blob.SerializeToString())
    return str(path)


@pytest.mark.parametrize("legacy,double", [(True, False), (False, False), (False, True)])
def test_infogain_reads_h_from_binaryproto(tmp_path, legacy, double):
    rng = np.random.default_rng(8)
    x, labels, h = infogain_inputs(rng, (3, 4), 1)
    h = h.astype(np.float64 if double else np.float32)
    source = write_blob(tmp_path / "H.binaryproto", h, legacy, double)
    _, bottoms, tops = run_layer(infogain_spec(source=source), [x, labels], top_diff=1.0)
    loss, _, grad = ref_infogain(x, labels, h)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, grad, rtol=1e-12, atol=1e-15)


def test_infogain_gradient_with_h_from_file(tmp_path):
    rng = np.random.default_rng(9)
    x, labels, h = infogain_inputs(rng, (2, 3, 2), 1)
    source = write_blob(tmp_path / "H.binaryproto", h)
    result = check_layer(infogain_spec(source=source), [x, labels])
    assert result.passed, result.report()


def test_infogain_file_errors(tmp_path):
    x, labels = np.zeros((2, 3)), np.zeros(2)
    missing = tmp_path / "none.binaryproto"
    with pytest.raises(DataError, match=r"layer 'infogain' \(type InfogainLoss\): "
                                        r"infogain_loss_param.source '.*none.binaryproto': no such file"):
        run_layer(infogain_spec(source=missing), [x, labels])
    broken = tmp_path / "broken.binaryproto"
    broken.write_bytes(b"\x0a\xff\xff")
    with pytest.raises(DataError, match=r"layer 'infogain'.*broken.binaryproto': not a binary "
                                        r"BlobProto"):
        run_layer(infogain_spec(source=broken), [x, labels])
    empty = tmp_path / "empty.binaryproto"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.binaryproto': the BlobProto holds no values"):
        run_layer(infogain_spec(source=empty), [x, labels])
    mismatched = caffe_pb2.BlobProto()
    mismatched.shape.dim.extend([3, 3])
    mismatched.data.extend([1.0] * 4)
    bad_count = tmp_path / "count.binaryproto"
    bad_count.write_bytes(mismatched.SerializeToString())
    with pytest.raises(DataError, match=r"count.binaryproto'.*shape \(3, 3\) \(9 values\) but "
                                        r"its data holds 4 values"):
        run_layer(infogain_spec(source=bad_count), [x, labels])
    wrong = write_blob(tmp_path / "H4.binaryproto", np.eye(4))
    with pytest.raises(NetDefinitionError, match=r"H4.binaryproto' holds H of shape \(1, 1, 4, 4\), "
                                                 r"expected \(3, 3\) \(9 values\) for the 3 classes"):
        run_layer(infogain_spec(source=wrong), [x, labels])


def test_infogain_errors():
    spec = 'name: "infogain" type: "InfogainLoss" bottom: "score" bottom: "label" bottom: "H"'
    x, labels = np.zeros((2, 3)), np.zeros(2)
    with pytest.raises(NetDefinitionError, match=r"layer 'infogain' \(type InfogainLoss\): needs "
                                                 r"the infogain matrix H"):
        run_layer(infogain_spec(), [x, labels])
    with pytest.raises(NetDefinitionError, match="loss_param.normalize is deprecated"):
        run_layer(infogain_spec(loss_param="normalize: true"), [x, labels, np.eye(3)])
    with pytest.raises(ShapeError, match=r"bottom 'H' expected the infogain matrix H \(3, 3\) "
                                         r"\(9 values\) for the 3 classes of 'score', found shape \(2, 2\)"):
        run_layer(spec, [x, labels, np.eye(2)])
    with pytest.raises(ShapeError, match=r"bottom 'label' expected 2 labels, one per position"):
        run_layer(spec, [x, np.zeros((2, 2)), np.eye(3)])
    with pytest.raises(ShapeError, match=r"bottom 'bottom\[0\]' expected an axis 3 "
                                         r"\(infogain_loss_param.axis\) among its 2 axes"):
        run_layer(infogain_spec(axis=3), [x, labels, np.eye(3)])
    with pytest.raises(DataError, match=r"bottom 'label' holds label 3 at flat index 1"):
        run_layer(spec, [x, np.array([0.0, 3.0]), np.eye(3)])
    with pytest.raises(NetDefinitionError, match="cannot back-propagate to the infogain matrix "
                                                 "bottom 'H'"):
        run_layer(spec, [x, labels, np.eye(3)], top_diff=1.0, propagate=[True, False, True])
    with pytest.raises(NetDefinitionError, match="cannot back-propagate to the labels bottom"):
        run_layer(spec, [x, labels, np.eye(3)], top_diff=1.0, propagate=[True, True, False])
