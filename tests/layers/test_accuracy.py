"""Accuracy against a plainly written version of Caffe's rule (ties count
against the true class), the host-run GPU path, GPU parity and the errors."""
import numpy as np
import pytest

from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices
from tests.layer_checks import outer_channels_inner


def ref_accuracy(scores, labels, top_k=1, axis=1, ignore=None):
    """Caffe: correct when fewer than top_k other classes score >= the true
    class. Returns (accuracy, per-class accuracy)."""
    axis, outer, channels, inner = outer_channels_inner(scores.shape, axis)
    s = scores.reshape(outer, channels, inner)
    lab = np.asarray(labels).reshape(-1)
    correct, count = 0, 0
    per_class_correct, per_class_count = [0] * channels, [0] * channels
    for o in range(outer):
        for i in range(inner):
            label = int(lab[o * inner + i])
            if ignore is not None and label == ignore:
                continue
            true_score = s[o, label, i]
            others_at_least = sum(1 for c in range(channels) if c != label and s[o, c, i] >= true_score)
            per_class_count[label] += 1
            count += 1
            if others_at_least < top_k:
                correct += 1
                per_class_correct[label] += 1
    per_class = [per_class_correct[c] / per_class_count[c] if per_class_count[c] else 0.0
                 for c in range(channels)]
    return (correct / count if count else 0.0), np.array(per_class)


def run(spec, arrays, num_tops=2):
    layer = build_layer(spec, dtype=np.float64)
    bottoms, tops = setup_layer(layer, arrays, num_tops)
    layer.forward(bottoms, tops)
    return layer, bottoms, tops


CASES = [
    # scores shape, labels shape, axis, top_k
    ((20, 5), (20,), 1, 1),
    ((20, 5), (20, 1, 1, 1), 1, 2),
    ((3, 4, 2, 3), (3, 1, 2, 3), 1, 1),
    ((2, 3, 6), (2, 3), -1, 3),
]


@pytest.mark.parametrize("ignore", [None, -1])
@pytest.mark.parametrize("scores_shape,labels_shape,axis,top_k", CASES)
def test_accuracy_matches_reference(scores_shape, labels_shape, axis, top_k, ignore):
    rng = np.random.default_rng(0)
    # Few distinct values: plenty of ties with the true class.
    scores = rng.integers(0, 4, scores_shape).astype(np.float64)
    channels = scores_shape[axis]
    labels = rng.integers(0, channels, labels_shape)
    if ignore is not None:
        labels = np.where(rng.random(labels_shape) < 0.3, ignore, labels)
    ignore_text = f"ignore_label: {ignore}" if ignore is not None else ""
    spec = f'type: "Accuracy" accuracy_param {{ top_k: {top_k} axis: {axis} {ignore_text} }}'
    _, _, tops = run(spec, [scores, labels])
    accuracy, per_class = ref_accuracy(scores, labels, top_k, axis, ignore)
    assert tops[0].shape == () and tops[1].shape == (channels,)
    np.testing.assert_allclose(tops[0].data, accuracy, rtol=1e-12)
    np.testing.assert_allclose(tops[1].data, per_class, rtol=1e-12)


def test_accuracy_ties_count_against_the_true_class():
    scores = np.array([[1.0, 1.0, 0.0],    # label 0 ties with class 1: wrong at top-1
                       [2.0, 1.0, 2.0],    # label 2 ties with class 0: wrong at top-1
                       [0.0, 3.0, 1.0]])   # label 1 strictly best: right
    labels = np.array([0, 2, 1])
    _, _, tops = run('type: "Accuracy"', [scores, labels], num_tops=1)
    np.testing.assert_allclose(tops[0].data, 1 / 3)
    _, _, tops = run('type: "Accuracy" accuracy_param { top_k: 2 }', [scores, labels], num_tops=1)
    np.testing.assert_allclose(tops[0].data, 1.0)


def test_accuracy_all_ignored_is_zero():
    _, _, tops = run('type: "Accuracy" accuracy_param { ignore_label: -1 }',
                     [np.zeros((3, 2)), np.full(3, -1.0)])
    assert float(tops[0].data) == 0.0 and not tops[1].data.any()


def test_accuracy_in_py_rfcn_ohem_net():
    layer_text = """
       name: "accuarcy" type: "Accuracy" bottom: "cls_score" bottom: "labels_ohem"
       top: "accuarcy" accuracy_param { ignore_label: -1 }
       propagate_down: false propagate_down: false
    """
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((16, 21, 1, 1))
    labels = np.where(rng.random((16, 1, 1, 1)) < 0.5, -1, rng.integers(0, 21, (16, 1, 1, 1)))
    layer, _, tops = run(layer_text, [scores, labels], num_tops=1)
    np.testing.assert_allclose(tops[0].data, ref_accuracy(scores, labels, ignore=-1)[0])
    assert not layer.is_loss


def test_accuracy_has_no_gradient():
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((4, 3)), rng.integers(0, 3, 4)]
    layer, bottoms, tops = run('type: "Accuracy"', arrays)
    assert not layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    assert check_layer('type: "Accuracy"', arrays).checked == 0
    bottoms[0].diff[...] = 1.0
    layer.backward(tops, [True, False], bottoms)
    assert not bottoms[0].diff.any()


@pytest.mark.gpu
def test_accuracy_gpu_parity():
    rng = np.random.default_rng(4)
    scores = rng.standard_normal((128, 21))
    labels = rng.integers(-1, 21, 128).astype(np.float64)
    compare_devices('type: "Accuracy" accuracy_param { ignore_label: -1 }', [scores, labels],
                    num_tops=2, backward=False)


# -- errors -----------------------------------------------------------------------------

def test_accuracy_top_k_larger_than_classes():
    with pytest.raises(NetDefinitionError, match=r"layer 'acc'.*top_k \(4\) must not exceed.*3 along axis 1"):
        run('name: "acc" type: "Accuracy" accuracy_param { top_k: 4 }', [np.zeros((2, 3)), np.zeros(2)])


def test_accuracy_label_count_mismatch():
    spec = 'name: "acc" type: "Accuracy" bottom: "score" bottom: "label"'
    with pytest.raises(ShapeError, match=r"bottom 'label' expected 4 labels.*'score' \(4, 3\).*found shape \(3,\)"):
        run(spec, [np.zeros((4, 3)), np.zeros(3)])


def test_accuracy_label_out_of_range():
    spec = 'name: "acc" type: "Accuracy" bottom: "score" bottom: "label"'
    with pytest.raises(DataError, match=r"layer 'acc'.*bottom 'label' holds label 3 at flat index 1"):
        run(spec, [np.zeros((2, 3)), np.array([0, 3])])
