"""ProposalTarget against a plain per-RoI reference, and its sampling rules."""
import numpy as np
import pytest

from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, setup_layer
from tests.kernel_harness import compare_devices
from tests.layers.test_boxes import plain_iou, plain_transform

GT = np.array([[30.0, 40.0, 150.0, 160.0, 3],
               [200.0, 50.0, 320.0, 210.0, 15],
               [60.0, 220.0, 180.0, 330.0, 1],
               [250.0, 250.0, 390.0, 380.0, 20]])
MEANS, STDS = np.zeros(4), np.array([0.1, 0.1, 0.2, 0.2])


def make_rois(rng, n=300, near=200, gt=GT):
    """RoIs jittered around the gt boxes (foreground and background) and
    random ones (mostly neither)."""
    spread = rng.uniform(5, 50, (near, 1))
    near = gt[rng.integers(0, len(gt), near), :4] + rng.normal(0, 1, (near, 4)) * spread
    xy = rng.uniform(0, 350, (n - len(near), 2))
    far = np.concatenate([xy, xy + rng.uniform(10, 120, (n - len(near), 2))], axis=1)
    boxes = np.concatenate([near, far])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    return np.concatenate([np.zeros((n, 1)), np.round(boxes, 2)], axis=1)


ROIS = make_rois(np.random.default_rng(0))


def spec(extra="num_classes: 21", name="roi-data"):
    return (f'name: "{name}" type: "ProposalTarget" bottom: "rpn_rois" bottom: "gt_boxes" '
            'top: "rois" top: "labels" top: "bbox_targets" top: "bbox_inside_weights" '
            f'top: "bbox_outside_weights" proposal_target_param {{ {extra} }}')


def run(spec_text, rois=ROIS, gt=GT, seed=0, dtype=np.float64, forwards=1):
    layer = build_layer(spec_text, dtype=dtype, seed=seed)
    bottoms, tops = setup_layer(layer, [rois, gt])
    shapes = [t.shape for t in tops]
    for _ in range(forwards):
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
    return layer, shapes, [t.data.copy() for t in tops]


def candidates(rois, gt, fg_thresh=0.5, hi=0.5, lo=0.1):
    """Plain reference: every candidate RoI with its best IoU and gt."""
    rows = [list(r) for r in rois] + [[0.0] + list(g[:4]) for g in gt]
    out = []
    for row in rows:
        ious = [plain_iou(row[1:], g[:4]) for g in gt]
        best = max(ious) if ious else 0.0
        out.append((row, best, ious.index(best) if ious else None))
    fg = [c for c in out if c[1] >= fg_thresh]
    bg = [c for c in out if lo <= c[1] < hi]
    return fg, bg


def expected_row(cand, gt, is_fg, width, agnostic, normalize=True):
    row, best, g = cand
    label = gt[g][4] if is_fg else 0.0
    targets, weights = np.zeros(width), np.zeros(width)
    if label > 0:
        slot = 1 if agnostic else int(label)
        t = np.array(plain_transform(row[1:], gt[g][:4]))
        targets[4 * slot:4 * slot + 4] = (t - MEANS) / STDS if normalize else t
        weights[4 * slot:4 * slot + 4] = 1
    return label, targets, weights


def check_against_reference(tops, rois, gt, num_fg, width, agnostic, normalize=True, **thresh):
    fg, bg = candidates(rois, gt, **thresh)
    out_rois, labels, targets, inside_w, outside_w = tops
    assert labels.shape == (out_rois.shape[0], 1, 1, 1)
    labels = labels.reshape(-1)
    for k, row in enumerate(out_rois):
        pool = fg if k < num_fg else bg
        match = [c for c in pool if np.array_equal(c[0], row)]
        assert match, f"output RoI {k} {row} is not a {'fg' if k < num_fg else 'bg'} candidate"
        label, t, w = expected_row(match[0], gt, k < num_fg, width, agnostic, normalize)
        assert labels[k] == label
        np.testing.assert_allclose(targets[k], t, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(inside_w[k], w)
        np.testing.assert_array_equal(outside_w[k], w > 0)
    return fg, bg


def test_keep_all_matches_reference_class_aware():
    layer, shapes, tops = run(spec("num_classes: 21 batch_size: -1"))
    fg, bg = candidates(ROIS, GT)
    assert shapes == [(304, 5), (304, 1, 1, 1), (304, 84), (304, 84), (304, 84)]
    assert tops[0].shape == (len(fg) + len(bg), 5) and tops[2].shape[1] == 84
    check_against_reference(tops, ROIS, GT, len(fg), 84, agnostic=False)
    # every candidate is there once (the gt boxes themselves included)
    want = sorted(tuple(c[0]) for c in fg + bg)
    assert sorted(map(tuple, tops[0])) == want
    assert all(tuple([0.0] + list(g[:4])) in want for g in GT)


def test_class_agnostic_layout_with_r_fcn_thresholds():
    extra = "num_classes: 21 batch_size: -1 class_agnostic: true bg_thresh_lo: 0"
    _, _, tops = run(spec(extra))
    fg, bg = candidates(ROIS, GT, lo=0.0)
    assert tops[2].shape == (len(fg) + len(bg), 8)
    check_against_reference(tops, ROIS, GT, len(fg), 8, agnostic=True, lo=0.0)
    assert not tops[2][:, :4].any() and tops[3][:len(fg), 4:].all()


def test_sampling_counts_and_fg_first():
    _, shapes, tops = run(spec("num_classes: 21"), seed=3)
    fg, bg = candidates(ROIS, GT)
    assert len(fg) > 32 and len(bg) > 96
    assert shapes[0] == (128, 5) and tops[0].shape == (128, 5)
    labels = tops[1].reshape(-1)
    assert np.all(labels[:32] > 0) and np.all(labels[32:] == 0)
    check_against_reference(tops, ROIS, GT, 32, 84, agnostic=False)
    # few foreground candidates: all of them, background fills the batch
    few = ROIS[200:]                                  # the random RoIs only
    _, _, tops = run(spec("num_classes: 21 batch_size: 64 fg_fraction: 0.5"), rois=few)
    fg, bg = candidates(few, GT)
    assert len(fg) < 32
    assert tops[0].shape[0] == min(64, len(fg) + len(bg))
    assert np.sum(tops[1] > 0) == len(fg)
    check_against_reference(tops, few, GT, len(fg), 84, agnostic=False)


def test_rois_exactly_at_the_thresholds():
    """Best IoU == fg_thresh is foreground, == bg_thresh_lo background (both
    bounds inclusive, bg_thresh_hi exclusive, as py-faster-rcnn)."""
    gt = np.array([[0.0, 0.0, 9.0, 19.0, 3]])                # area 10 x 20 = 200
    rois = np.array([[0, 0.0, 0.0, 9.0, 9.0],                # IoU 100 / 200 = 0.5
                     [0, 0.0, 0.0, 4.0, 19.0],               # IoU 0.5
                     [0, 0.0, 0.0, 4.0, 9.0],                # IoU 50 / 200 = 0.25
                     [0, 0.0, 0.0, 4.0, 8.0]])               # IoU 0.225: neither
    assert [plain_iou(r[1:], gt[0, :4]) for r in rois] == [0.5, 0.5, 0.25, 0.225]
    extra = ("num_classes: 21 batch_size: -1 fg_thresh: 0.5 bg_thresh_hi: 0.5 "
             "bg_thresh_lo: 0.25")
    _, _, tops = run(spec(extra), rois=rois, gt=gt)
    labels = tops[1].reshape(-1)
    np.testing.assert_array_equal(labels, [3, 3, 3, 0])      # fg first: the two RoIs and the gt
    assert sorted(map(tuple, tops[0][:3])) == sorted(map(tuple, [rois[0], rois[1],
                                                                  [0, 0, 0, 9, 19]]))
    np.testing.assert_array_equal(tops[0][3], rois[2])


@pytest.mark.parametrize("fraction,want_fg", [(0.375, 4), (0.25, 2)])
def test_fg_quota_of_a_non_integer_count_is_rounded(fraction, want_fg):
    # py-faster-rcnn: np.round(fg_fraction * batch_size): 3.75 -> 4, and 2.5
    # -> 2 (NumPy rounds halves to even)
    _, _, tops = run(spec(f"num_classes: 21 batch_size: 10 fg_fraction: {fraction}"), seed=1)
    fg, bg = candidates(ROIS, GT)
    assert len(fg) > want_fg and len(bg) > 10
    labels = tops[1].reshape(-1)
    assert labels.size == 10 and np.sum(labels > 0) == want_fg
    check_against_reference(tops, ROIS, GT, want_fg, 84, agnostic=False)


def test_unnormalized_targets_and_custom_stds():
    _, _, tops = run(spec("num_classes: 21 batch_size: -1 bbox_normalize_targets: false"))
    fg, _ = candidates(ROIS, GT)
    check_against_reference(tops, ROIS, GT, len(fg), 84, agnostic=False, normalize=False)
    _, _, scaled = run(spec("num_classes: 21 batch_size: -1 bbox_normalize_stds: [1, 1, 1, 1] "
                            "bbox_normalize_means: [0, 0, 0, 0]"))
    np.testing.assert_array_equal(scaled[2], tops[2])


def test_determinism_under_a_seed():
    _, _, a = run(spec(), seed=7)
    _, _, b = run(spec(), seed=7)
    _, _, c = run(spec(), seed=8)
    _, _, d = run(spec(), seed=7, forwards=2)
    _, _, e = run(spec("num_classes: 21 seed: 4"), seed=1)
    _, _, f = run(spec("num_classes: 21 seed: 4"), seed=2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], d[0])
    np.testing.assert_array_equal(e[0], f[0])


def test_zero_gt_boxes():
    no_gt = np.zeros((0, 5))
    _, _, tops = run(spec("num_classes: 21 bg_thresh_lo: 0"), gt=no_gt)
    assert tops[0].shape == (128, 5) and not tops[1].any() and not tops[2].any()
    _, _, tops = run(spec("num_classes: 21"), gt=no_gt)     # IoU 0 < bg_thresh_lo 0.1
    assert tops[0].shape == (0, 5) and tops[2].shape == (0, 84)


def test_float32_matches_float64():
    # No kernels in this layer: the GPU path is the same xp code, checked on a
    # real device by the gpu-marked parity test.
    _, _, t32 = run(spec("num_classes: 21 batch_size: -1"), dtype=np.float32)
    _, _, t64 = run(spec("num_classes: 21 batch_size: -1"))
    for a, b in zip(t32, t64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_backward_gives_zero_gradients():
    layer = build_layer(spec(), dtype=np.float64)
    bottoms, tops = setup_layer(layer, [ROIS, GT])
    layer.forward(bottoms, tops)
    bottoms[0].diff[...] = 1
    layer.backward(tops, [True, False], bottoms)
    assert not bottoms[0].diff.any() and not layer.allow_force_backward(0)


def test_python_layer_reads_param_str():
    py = ('name: "roi-data" type: "Python" bottom: "rpn_rois" bottom: "gt_boxes" '
          'top: "rois" top: "labels" top: "bbox_targets" top: "bbox_inside_weights" '
          'top: "bbox_outside_weights" python_param { module: "rpn.proposal_target_layer" '
          "layer: \"ProposalTargetLayer\" param_str: \"'num_classes': 21\" }")
    layer, _, tops = run(py, seed=2)
    _, _, native = run(spec(), seed=2)
    assert layer.num_classes == 21 and layer.creator.batch_size == 128
    for a, b in zip(tops, native):
        np.testing.assert_array_equal(a, b)
    # py-R-FCN's class-agnostic nets say 'num_classes': 2: 8 columns, slot 1
    _, _, tops = run(py.replace("21", "2"), seed=2)
    assert tops[2].shape[1] == 8 and not tops[2][:, :4].any()


@pytest.mark.parametrize("rois,gt,match", [
    (ROIS[:, 1:], GT, r"bottom 'rpn_rois' expected rpn_rois \(R, 5\).*found shape \(300, 4\)"),
    (ROIS, GT[:, :4], r"bottom 'gt_boxes' expected gt_boxes \(G, 5\).*found shape \(4, 4\)"),
])
def test_shape_errors(rois, gt, match):
    layer = build_layer(spec(), dtype=np.float64)
    with pytest.raises(ShapeError, match=match):
        setup_layer(layer, [rois, gt])


@pytest.mark.parametrize("extra,match", [
    ("", "needs num_classes >= 2"),
    ("num_classes: 21 batch_size: -2", "batch_size must be positive or -1"),
    ("num_classes: 21 fg_fraction: -0.5", r"fg_fraction must lie in \[0, 1\]"),
    ("num_classes: 21 bbox_normalize_stds: [1, 2]", "need 4 values each"),
])
def test_parameter_errors(extra, match):
    layer = build_layer(spec(extra), dtype=np.float64)
    with pytest.raises(NetDefinitionError, match=f"layer 'roi-data'.*{match}"):
        setup_layer(layer, [ROIS, GT])


def test_gt_class_out_of_range_is_a_data_error():
    bad = GT.copy()
    bad[1, 4] = 21
    layer = build_layer(spec(), dtype=np.float64)
    bottoms, tops = setup_layer(layer, [ROIS, bad])
    with pytest.raises(DataError, match=r"layer 'roi-data'.*bottom 'gt_boxes' has class 21, "
                                        r"expected an integer in \[0, 21\)"):
        layer.forward(bottoms, tops)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    compare_devices(spec(), [ROIS, GT], backward=False, top_diffs=[None] * 5)
    compare_devices(spec("num_classes: 21 batch_size: -1 class_agnostic: true"), [ROIS, GT],
                    backward=False, top_diffs=[None] * 5)


def test_rois_of_another_image_are_refused():
    rois = ROIS.copy()
    rois[:150, 0] = 1                      # half of the RoIs claim image 1
    layer = build_layer(spec("num_classes: 21 batch_size: -1"), dtype=np.float64, seed=0)
    bottoms, tops = setup_layer(layer, [rois, GT])
    # One image per batch, as the reference asserts: image 1's RoIs would
    # otherwise be matched against image 0's boxes.
    with pytest.raises(DataError, match=r"layer 'roi-data'.*rpn_rois.*RoI 0 has batch index 1"):
        layer.forward(bottoms, tops)
