"""BoxAnnotatorOHEM against a plainly written per-image top-k, with ties,
the host-run GPU path, GPU parity and the errors."""
import re

import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices

SPEC = """
   name: "annotator_detector"
   type: "BoxAnnotatorOHEM"
   bottom: "rois"
   bottom: "per_roi_loss"
   bottom: "labels"
   bottom: "bbox_inside_weights"
   top: "labels_ohem"
   top: "bbox_loss_weights_ohem"
   box_annotator_ohem_param {
        roi_per_img: %d
        ignore_label: %d
   }
   propagate_down: false
   propagate_down: false
   propagate_down: false
   propagate_down: false
"""


def spec(roi_per_img=3, ignore_label=-1):
    return SPEC % (roi_per_img, ignore_label)


def ref_ohem(rois, loss, labels, weights, roi_per_img, ignore_label):
    """Per image, the roi_per_img highest losses (lower index first among
    equal losses) keep their label and weights."""
    rois = np.asarray(rois).reshape(len(rois), 5)
    loss = np.asarray(loss).reshape(-1)
    labels = np.asarray(labels, np.float64).reshape(-1)
    weights = np.asarray(weights, np.float64).reshape(len(rois), -1)
    out_labels = np.full(len(rois), float(ignore_label))
    out_weights = np.zeros_like(weights)
    for image in set(int(b) for b in rois[:, 0]):
        members = [r for r in range(len(rois)) if int(rois[r, 0]) == image]
        ranked = sorted(members, key=lambda r: (-loss[r], r))
        for r in ranked[:roi_per_img]:
            out_labels[r] = labels[r]
            out_weights[r] = weights[r]
    return out_labels, out_weights


def make_inputs(rng, images=(0, 1), per_image=(7, 5), classes=21, box_channels=8, ties=True):
    batch = np.concatenate([np.full(n, b) for b, n in zip(images, per_image)])
    order = rng.permutation(len(batch))          # images interleaved
    batch = batch[order].astype(np.float64)
    count = len(batch)
    boxes = rng.uniform(0, 100, (count, 4))
    rois = np.column_stack([batch, boxes])
    loss = rng.choice([0.5, 1.0, 1.5, 2.0], count) if ties else rng.random(count)
    labels = rng.integers(0, classes, count).astype(np.float64)
    weights = rng.choice([0.0, 1.0], (count, box_channels))
    return rois, loss, labels, weights


def run(spec_text, arrays):
    layer = build_layer(spec_text, dtype=np.float64)
    bottoms, tops = setup_layer(layer, arrays)
    layer.forward(bottoms, tops)
    return layer, bottoms, tops


@pytest.mark.parametrize("roi_per_img", [1, 3, 5, 100])
def test_ohem_top_k_per_image_with_ties(roi_per_img):
    rng = np.random.default_rng(0)
    rois, loss, labels, weights = make_inputs(rng)
    assert len(set(loss)) < len(loss)   # there are ties
    _, _, tops = run(spec(roi_per_img), [rois, loss, labels, weights])
    exp_labels, exp_weights = ref_ohem(rois, loss, labels, weights, roi_per_img, -1)
    np.testing.assert_array_equal(tops[0].data.reshape(-1), exp_labels)
    np.testing.assert_array_equal(tops[1].data.reshape(len(rois), -1), exp_weights)
    kept = tops[0].data.reshape(-1) != -1
    for image, count in ((0, 7), (1, 5)):
        assert kept[rois[:, 0] == image].sum() == min(roi_per_img, count)


def test_ohem_tie_rule_is_lower_index_first():
    rois = np.array([[0, 0, 0, 9, 9]] * 4, dtype=np.float64)
    loss = np.array([1.0, 2.0, 2.0, 2.0])
    labels = np.array([1.0, 2.0, 3.0, 4.0])
    _, _, tops = run(spec(2), [rois, loss, labels, np.ones((4, 4))])
    np.testing.assert_array_equal(tops[0].data.reshape(-1), [-1, 2, 3, -1])


def test_ohem_py_rfcn_shapes():
    """py-R-FCN feeds (R, 5, 1, 1) RoIs, (R, 1, 1, 1) losses and labels and
    (R, 8, 1, 1) weights; the tops take the fork's shapes."""
    rng = np.random.default_rng(1)
    rois, loss, labels, weights = make_inputs(rng, per_image=(9, 6), ties=False)
    count = len(rois)
    arrays = [rois.reshape(count, 5, 1, 1), loss.reshape(count, 1, 1, 1),
              labels.reshape(count, 1, 1, 1), weights.reshape(count, 8, 1, 1)]
    _, _, tops = run(spec(4, -1), arrays)
    assert tops[0].shape == (count, 1, 1, 1) and tops[1].shape == (count, 8, 1, 1)
    exp_labels, exp_weights = ref_ohem(rois, loss, labels, weights, 4, -1)
    np.testing.assert_array_equal(tops[0].data.reshape(-1), exp_labels)
    np.testing.assert_array_equal(tops[1].data.reshape(count, -1), exp_weights)


def test_ohem_flat_inputs_and_custom_ignore_label():
    rng = np.random.default_rng(2)
    rois, loss, labels, weights = make_inputs(rng, images=(0, 1, 2), per_image=(3, 4, 2))
    rois[:, 0] += 0.25   # batch indices are truncated to integers
    _, _, tops = run(spec(2, 255), [rois, loss, labels, weights])
    assert tops[0].shape == (len(rois), 1, 1, 1) and tops[1].shape == (len(rois), 8, 1, 1)
    exp_labels, exp_weights = ref_ohem(rois, loss, labels, weights, 2, 255)
    np.testing.assert_array_equal(tops[0].data.reshape(-1), exp_labels)
    np.testing.assert_array_equal(tops[1].data.reshape(len(rois), -1), exp_weights)


def test_ohem_no_rois():
    _, _, tops = run(spec(), [np.zeros((0, 5)), np.zeros(0), np.zeros(0), np.zeros((0, 8))])
    assert tops[0].shape == (0, 1, 1, 1) and tops[1].shape == (0, 8, 1, 1)


def test_ohem_has_no_gradient():
    rng = np.random.default_rng(3)
    arrays = list(make_inputs(rng))
    layer, bottoms, tops = run(spec(), arrays)
    assert not any(layer.allow_force_backward(i) for i in range(4))
    result = check_layer(spec(), arrays)
    assert result.checked == 0
    # A forced backward passes zeros down and touches nothing else.
    for b in bottoms:
        b.diff[...] = 3.0
    layer.backward(tops, [True, False, False, False], bottoms)
    assert not bottoms[0].diff.any() and np.all(bottoms[1].diff == 3.0)


@pytest.mark.gpu
def test_ohem_gpu_parity():
    rng = np.random.default_rng(5)
    compare_devices(spec(128), list(make_inputs(rng, per_image=(300, 300), ties=True)))


# -- errors -----------------------------------------------------------------------------

def test_ohem_roi_per_img_must_be_positive():
    with pytest.raises(NetDefinitionError, match=r"layer 'annotator_detector'.*roi_per_img must be > 0, found 0"):
        run(spec(0), list(make_inputs(np.random.default_rng(6))))


def test_ohem_rois_need_five_columns():
    _, loss, labels, weights = make_inputs(np.random.default_rng(7))
    with pytest.raises(ShapeError, match=r"bottom 'rois' expected RoIs \(R, 5\).*found shape \(12, 4\)"):
        run(spec(), [np.zeros((12, 4)), loss, labels, weights])


@pytest.mark.parametrize("index,name,bad", [
    (1, "per_roi_loss", np.zeros(11)),
    (2, "labels", np.zeros((12, 2))),
    (3, "bbox_inside_weights", np.zeros((11, 8))),
])
def test_ohem_shape_mismatch_names_blob(index, name, bad):
    arrays = list(make_inputs(np.random.default_rng(8)))
    arrays[index] = bad
    pattern = (rf"bottom '{name}' expected .*'rois' \(12, 5\).*"
               rf"found shape {re.escape(str(tuple(bad.shape)))}")
    with pytest.raises(ShapeError, match=pattern):
        run(spec(), arrays)
