"""RetinaNetTarget: labels, box targets, weights and the foreground count
against a hand-worked case and a plainly written per-anchor reference; the
box loss it feeds normalized by the foreground count; the GPU path on the
stand-in CuPy and on a GPU; the errors."""
import math

import numpy as np
import pytest

from netdef.device import Device
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, setup_layer
from tests.kernel_harness import compare_devices
from tests.layers.test_multibox_loss import jaccard, ref_encode, ref_match

VARIANCE = [0.1, 0.1, 0.2, 0.2]


def spec(extra="num_classes: 3 neg_overlap: 0.4 code_type: CENTER_SIZE"):
    return ('name: "retina_target" type: "RetinaNetTarget" bottom: "priors" bottom: "label" '
            'bottom: "data" top: "labels" top: "bbox_targets" top: "bbox_inside_weights" '
            'top: "bbox_outside_weights" top: "fg_num" '
            f"multibox_loss_param {{ {extra} }}")


def prior_blob(boxes, variance=VARIANCE):
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.stack([boxes.reshape(-1), np.tile(variance, len(boxes))])[None]


def run(text, arrays, dtype=np.float64, device=None):
    options = {} if device is None else {"device": device}
    layer = build_layer(text, dtype=dtype, **options)
    bottoms, tops = setup_layer(layer, [np.asarray(a, dtype=dtype) for a in arrays])
    layer.forward(bottoms, tops)
    return layer, [np.asarray(t.data) for t in tops]


# -- a case worked by hand ----------------------------------------------------------

# gt A [0, 0, 0.4, 0.4] (class 2) in image 0; gt B [0.6, 0.6, 0.7, 0.7]
# (class 1) in image 1. Priors and their IoU with A: 1, 0.75, 0.45, 1/3, 0;
# with B only the last overlaps (0.01 / 0.16 = 0.0625).
HAND_PRIORS = [[0, 0, 0.4, 0.4], [0, 0, 0.4, 0.3], [0, 0, 0.4, 0.18], [0.2, 0, 0.6, 0.4],
               [0.5, 0.5, 0.9, 0.9]]
HAND_ROWS = [[0, 2, 0, 0, 0, 0.4, 0.4, 0], [1, 1, 0, 0.6, 0.6, 0.7, 0.7, 0]]


def test_a_hand_worked_case():
    """Positive at IoU >= 0.5, ignored in [0.4, 0.5), background below;
    gt B's only overlapping prior (IoU 0.0625) is its low-quality match."""
    _, (labels, targets, inside, outside, fg) = run(
        spec(), [prior_blob(HAND_PRIORS), np.array(HAND_ROWS)[None, None], np.zeros((2, 3, 5, 5))])
    np.testing.assert_array_equal(labels, [[2, 2, -1, 0, 0], [0, 0, 0, 0, 1]])
    assert fg.tolist() == [3]
    # prior 1: centre (0.2, 0.15), size 0.4 x 0.3; A: centre (0.2, 0.2), 0.4 x 0.4
    # prior 4: centre (0.7, 0.7), 0.4 x 0.4;       B: centre (0.65, 0.65), 0.1 x 0.1
    expected = np.zeros((2, 5, 4))
    expected[0, 1] = [0, 0.05 / 0.3 / 0.1, 0, math.log(0.4 / 0.3) / 0.2]
    expected[1, 4] = [-0.05 / 0.4 / 0.1, -0.05 / 0.4 / 0.1, math.log(0.25) / 0.2,
                      math.log(0.25) / 0.2]
    np.testing.assert_allclose(targets.reshape(2, 5, 4), expected, atol=1e-12)
    positive = np.repeat(labels > 0, 4, axis=1)
    np.testing.assert_array_equal(inside, positive)
    np.testing.assert_allclose(outside, positive * (2 / 3))  # N / fg


def test_difficult_rows_dropped_without_use_difficult_gt():
    rows = np.array(HAND_ROWS)
    rows[0, 7] = 1
    arrays = [prior_blob(HAND_PRIORS), rows[None, None], np.zeros((2, 1))]
    _, tops = run(spec(), arrays)
    assert tops[4].tolist() == [3]
    _, tops = run(spec("num_classes: 3 use_difficult_gt: false"), arrays)
    np.testing.assert_array_equal(tops[0], [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1]])
    assert tops[4].tolist() == [1]


def test_bipartite_only_ignores_the_other_good_priors():
    _, tops = run(spec("num_classes: 3 neg_overlap: 0.4 match_type: BIPARTITE"),
                  [prior_blob(HAND_PRIORS), np.array(HAND_ROWS)[None, None], np.zeros((2, 1))])
    np.testing.assert_array_equal(tops[0], [[2, -1, -1, 0, 0], [0, 0, 0, 0, 1]])


def test_cross_boundary_priors_are_ignored_in_every_image():
    priors = HAND_PRIORS + [[-0.1, 0.2, 0.3, 0.6]]
    _, tops = run(spec("num_classes: 3 ignore_cross_boundary_bbox: true"),
                  [prior_blob(priors), np.array(HAND_ROWS[:1])[None, None], np.zeros((2, 1))])
    np.testing.assert_array_equal(tops[0][:, 5], [-1, -1])
    assert tops[0][1, :5].tolist() == [0] * 5


# -- a plain per-anchor reference ---------------------------------------------------

def random_case(seed, num=3, priors=120, classes=3):
    """Priors over the image, 1-3 gt boxes in each image but the last, a
    filler row of -1."""
    rng = np.random.default_rng(seed)
    centres, sizes = rng.uniform(0.1, 0.9, (priors, 2)), rng.uniform(0.1, 0.4, (priors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    rows = []
    for image in range(num - 1):
        for g in range(rng.integers(1, 4)):
            c, s = rng.uniform(0.2, 0.8, 2), rng.uniform(0.1, 0.4, 2)
            rows.append([image, rng.integers(1, classes), g, *(c - s / 2), *(c + s / 2), 0])
    rows.append([-1] * 8)
    return prior_blob(boxes), np.array(rows, dtype=np.float64)[None, None], np.zeros((num, 1))


def reference(prior, label, num, positive=0.5, negative=0.4):
    """RetinaNet's rule written per anchor over Caffe-SSD's matching (the
    loop transcription of the MultiBoxLoss tests)."""
    boxes = prior[0, 0].reshape(-1, 4)
    variances = prior[0, 1].reshape(-1, 4)
    labels = np.zeros((num, len(boxes)))
    targets = np.zeros((num, len(boxes), 4))
    for image in range(num):
        gts = [r for r in label.reshape(-1, 8) if r[0] == image]
        if not gts:
            continue
        match, _ = ref_match(boxes.tolist(), [list(g[3:7]) for g in gts], "PER_PREDICTION",
                             positive)
        for p, box in enumerate(boxes):
            if match[p] >= 0:
                labels[image, p] = gts[match[p]][1]
                targets[image, p] = ref_encode(box, variances[p], gts[match[p]][3:7],
                                               "CENTER_SIZE")
            elif max(jaccard(box, g[3:7]) for g in gts) >= negative:
                labels[image, p] = -1
    return labels, targets


@pytest.mark.parametrize("seed", range(4))
def test_equals_the_plain_reference(seed):
    prior, label, data = random_case(seed)
    _, (labels, targets, inside, outside, fg) = run(spec("num_classes: 4 neg_overlap: 0.4 "
                                                         "code_type: CENTER_SIZE"),
                                                    [prior, label, data])
    want_labels, want_targets = reference(prior, label, 3)
    np.testing.assert_array_equal(labels, want_labels)
    assert (labels == -1).any() and (labels > 0).sum() > 2   # the case exercises each kind
    np.testing.assert_allclose(targets.reshape(want_targets.shape), want_targets, atol=1e-12)
    count = (want_labels > 0).sum()
    assert fg.tolist() == [count]
    weights = np.repeat(want_labels > 0, 4, axis=1)
    np.testing.assert_array_equal(inside, weights)
    np.testing.assert_allclose(outside, weights * 3 / count)


def test_box_loss_through_smooth_l1_is_normalized_by_the_foreground_count():
    """SmoothL1Loss (divides by N) with the outside weights gives
    sum over positive anchors / F, as RetinaNet's box loss."""
    prior, label, data = random_case(7)
    _, (labels, targets, inside, outside, fg) = run(spec("num_classes: 4 neg_overlap: 0.4 "
                                                         "code_type: CENTER_SIZE"),
                                                    [prior, label, data])
    pred = np.random.default_rng(1).standard_normal(targets.shape)
    loss_layer = build_layer('name: "l" type: "SmoothL1Loss" bottom: "a" bottom: "b" '
                             'bottom: "c" bottom: "d" top: "loss" '
                             'smooth_l1_loss_param { sigma: 3 }', dtype=np.float64)
    bottoms, tops = setup_layer(loss_layer, [pred, targets, inside, outside])
    loss_layer.forward(bottoms, tops)
    d = (pred - targets)[inside > 0]
    per = np.where(np.abs(d) < 1 / 9, 4.5 * d * d, np.abs(d) - 0.5 / 9)
    np.testing.assert_allclose(float(tops[0].data), per.sum() / fg[0], rtol=1e-12)


def test_a_batch_without_boxes_is_all_background():
    prior, _, data = random_case(0)
    _, tops = run(spec(), [prior, -np.ones((1, 1, 1, 8)), data])
    assert not tops[0].any() and not tops[2].any() and tops[4].tolist() == [0]


# -- devices ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_path_on_the_standin(dtype):
    """Device arrays (bench.standin_cupy) give the CPU's tops, on the device,
    with no host array given to a device operation."""
    from bench.standin_cupy import COUNTS, installed
    arrays = random_case(2)
    _, cpu = run(spec(), arrays, dtype=dtype)
    with installed():
        COUNTS.reset()
        layer = build_layer(spec(), dtype=dtype, device=Device("gpu", 0))
        bottoms, tops = setup_layer(layer, [np.asarray(a, dtype=dtype) for a in arrays])
        layer.forward(bottoms, tops)
        assert all(type(t.data).__module__.startswith("cupy") for t in tops)
        assert COUNTS.totals()["host_mix"] == 0
        gpu = [np.array(t.data) for t in tops]
    for c, g in zip(cpu, gpu):
        np.testing.assert_array_equal(g, c)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_matches_cpu(dtype):
    compare_devices(spec(), random_case(3, priors=500), dtype=dtype, backward=False,
                    rtol=1e-6, atol=1e-6)


# -- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    ("", r"num_classes is required and >= 2.*found none"),
    ("num_classes: 1", r"num_classes is required and >= 2.*found 1"),
    ("num_classes: 3 background_label_id: 2", r"background_label_id must be 0.*found 2"),
    ("num_classes: 3 neg_overlap: 0.6", r"neg_overlap <= overlap_threshold.*found neg_overlap "
                                        r"0.6, overlap_threshold 0.5"),
    ("num_classes: 3 overlap_threshold: 0", r"overlap_threshold > 0"),
])
def test_bad_parameters_are_named_errors(extra, message):
    with pytest.raises(NetDefinitionError, match=r"layer 'retina_target' \(type "
                                                 r"RetinaNetTarget\): .*" + message):
        run(spec(extra), random_case(0))


@pytest.mark.parametrize("index, shape, message", [
    (0, (1, 2, 10), r"bottom 'priors' expected \(1, 2, P \* 4\).*found shape \(1, 2, 10\)"),
    (0, (2, 40), r"bottom 'priors' expected \(1, 2, P \* 4\)"),
    (1, (1, 1, 3, 7), r"bottom 'label' expected \(1, 1, G, 8\).*found shape \(1, 1, 3, 7\)"),
    (2, (0, 3), r"bottom 'data' expected \(N, \.\.\.\) with N >= 1"),
])
def test_bad_shapes_are_named_errors(index, shape, message):
    arrays = list(random_case(0))
    arrays[index] = np.zeros(shape)
    with pytest.raises(ShapeError, match=r"layer 'retina_target'.*" + message):
        run(spec(), arrays)


@pytest.mark.parametrize("row, message", [
    ([3, 1, 0, 0.1, 0.1, 0.5, 0.5, 0], r"an image index in \[0, 3\)"),
    ([0.5, 1, 0, 0.1, 0.1, 0.5, 0.5, 0], r"an image index in \[0, 3\)"),
    ([0, 0, 0, 0.1, 0.1, 0.5, 0.5, 0], r"a class in \[1, 3\).*background 0"),
    ([0, 3, 0, 0.1, 0.1, 0.5, 0.5, 0], r"a class in \[1, 3\)"),
    ([0, 1, 0, 0.1, np.nan, 0.5, 0.5, 0], r"finite box coordinates"),
])
def test_bad_label_rows_are_named_data_errors(row, message):
    prior, label, data = random_case(0)
    label = np.concatenate([label.reshape(-1, 8), [row]])[None, None]
    with pytest.raises(DataError, match=r"layer 'retina_target'.*bottom 'label': expected "
                                        + message + r".*found row"):
        run(spec(), [prior, label, data])


def test_no_gradient_is_offered():
    layer, _ = run(spec(), random_case(0))
    assert not any(layer.allow_force_backward(i) for i in range(3))
    assert layer.num_classes == 3   # read by the training session's class check
