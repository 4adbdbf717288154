"""AnchorTarget against a plainly written per-anchor reference, and its
sampling invariants."""
import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, setup_layer
from tests.kernel_harness import compare_devices
from tests.layers.test_boxes import REFERENCE_ANCHORS, plain_iou, plain_transform

A = 9
H, W = 15, 19                       # map of a 240 x 300 image at stride 16
IM_INFO = np.array([[240.0, 300.0, 1.0]])
GT = np.array([[20.0, 40.0, 109.0, 111.0, 3],    # best IoU 0.3955, tied by 3 anchors
               [100.0, 60.0, 227.0, 187.0, 1],   # close to an anchor: IoU >= 0.7
               [150.0, 20.0, 290.0, 110.0, 7]])


def spec(extra="", name="rpn-data"):
    return (f'name: "{name}" type: "AnchorTarget" bottom: "rpn_cls_score" bottom: "gt_boxes" '
            'bottom: "im_info" top: "rpn_labels" top: "rpn_bbox_targets" '
            'top: "rpn_bbox_inside_weights" top: "rpn_bbox_outside_weights" '
            f'anchor_target_param {{ {extra} }}')


def inputs(gt=GT, im_info=IM_INFO, height=H, width=W):
    score = np.zeros((1, 2 * A, height, width))
    gt = np.asarray(gt, dtype=np.float64)
    return [score, gt.reshape(0, 5) if gt.size == 0 else gt, im_info]


def run(spec_text, arrays, phase="TRAIN", seed=0, dtype=np.float64, forwards=1):
    layer = build_layer(spec_text, phase=phase, dtype=dtype, seed=seed)
    bottoms, tops = setup_layer(layer, arrays)
    for _ in range(forwards):
        layer.reshape(bottoms, tops)
        layer.forward(bottoms, tops)
    return layer, [t.data.copy() for t in tops]


def reference(gt, im_info, height, width, border=0.0, pos=0.7, neg=0.3, clobber=False):
    """Per-anchor labels (before sampling) and targets, plain loops."""
    im_h, im_w = im_info[0, 0], im_info[0, 1]
    anchors, inside = [], []
    for y in range(height):
        for x in range(width):
            for a in range(A):
                box = REFERENCE_ANCHORS[a] + [16 * x, 16 * y, 16 * x, 16 * y]
                anchors.append(box)
                inside.append(box[0] >= -border and box[1] >= -border and
                              box[2] < im_w + border and box[3] < im_h + border)
    n = len(anchors)
    labels = [-1] * n
    targets = [[0.0] * 4 for _ in range(n)]
    idx = [i for i in range(n) if inside[i]]
    ov = {i: [plain_iou(anchors[i], g[:4]) for g in gt] for i in idx}
    gt_best = [max(ov[i][g] for i in idx) for g in range(len(gt))]
    for i in idx:
        best = max(ov[i]) if len(gt) else 0.0
        if not clobber and best < neg:
            labels[i] = 0
        if any(ov[i][g] == gt_best[g] and gt_best[g] > 0 for g in range(len(gt))) or best >= pos:
            labels[i] = 1
        if clobber and best < neg:
            labels[i] = 0
        if len(gt):
            targets[i] = plain_transform(anchors[i], gt[ov[i].index(best)][:4])
    return np.array(labels), np.array(targets)


def per_anchor(tops, height, width):
    """Tops back to per-anchor rows (index (y * W + x) * A + a), plain loops."""
    labels = np.zeros(height * width * A)
    rest = [np.zeros((height * width * A, 4)) for _ in range(3)]
    for y in range(height):
        for x in range(width):
            for a in range(A):
                i = (y * width + x) * A + a
                labels[i] = tops[0][0, 0, a * height + y, x]
                for r, top in zip(rest, tops[1:]):
                    r[i] = top[0, 4 * a:4 * a + 4, y, x]
    return [labels] + rest


def test_shapes_follow_the_reference_layout():
    layer, tops = run(spec(), inputs())
    assert [t.shape for t in tops] == [(1, 1, A * H, W)] + [(1, 4 * A, H, W)] * 3


@pytest.mark.parametrize("extra,kwargs", [
    ("", {}),
    ("allowed_border: 40", {"border": 40.0}),
    ("clobber_positives: true negative_overlap: 0.45", {"clobber": True, "neg": 0.45}),
    ("positive_overlap: 0.5 negative_overlap: 0.2", {"pos": 0.5, "neg": 0.2}),
])
def test_matches_plain_reference_without_subsampling(extra, kwargs):
    # batch_size large enough that nothing is subsampled: no randomness
    layer, tops = run(spec(f"batch_size: 100000 fg_fraction: 1 {extra}"), inputs())
    labels, targets, inside_w, outside_w = per_anchor(tops, H, W)
    want_labels, want_targets = reference(GT, IM_INFO, H, W, **kwargs)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(targets, want_targets, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(inside_w, (want_labels == 1)[:, None] * np.ones(4))
    labelled = want_labels >= 0
    np.testing.assert_allclose(outside_w, labelled[:, None] / labelled.sum() * np.ones(4))


def test_best_anchor_rule_marks_all_ties():
    _, tops = run(spec("batch_size: 100000 fg_fraction: 1"), inputs())
    labels = per_anchor(tops, H, W)[0]
    ious = {}
    for y in range(H):
        for x in range(W):
            for a in range(A):
                box = REFERENCE_ANCHORS[a] + [16 * x, 16 * y, 16 * x, 16 * y]
                if box[0] >= 0 and box[1] >= 0 and box[2] < 300 and box[3] < 240:
                    ious[(y * W + x) * A + a] = plain_iou(box, GT[0, :4])
    best = max(ious.values())
    tied = [i for i, v in ious.items() if v == best]
    # gt 0's best IoU is below 0.7 and reached by 3 anchors: all three are fg
    assert best < 0.7 and len(tied) == 3
    assert all(labels[i] == 1 for i in tied)


def test_subsampling_invariants_and_determinism():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 150, (12, 2))
    gt = np.concatenate([xy, xy + rng.uniform(60, 140, (12, 2)), np.ones((12, 1))], axis=1)
    gt[:, 2] = np.minimum(gt[:, 2], 299)
    gt[:, 3] = np.minimum(gt[:, 3], 239)
    arrays = inputs(gt)
    # every anchor counts (allowed_border), so that there is plenty to sample
    sampled = "batch_size: 64 fg_fraction: 0.25 allowed_border: 1000"
    before, want_targets = reference(gt, IM_INFO, H, W, border=1000.0)
    _, tops = run(spec(sampled), arrays, seed=5)
    labels, targets, inside_w, outside_w = per_anchor(tops, H, W)
    num_fg, num_bg = np.sum(labels == 1), np.sum(labels == 0)
    assert np.sum(before == 1) > 16 and num_fg == 16          # int(0.25 * 64)
    assert num_bg == 64 - 16
    assert np.all(before[labels == 1] == 1) and np.all(before[labels == 0] == 0)
    assert set(np.unique(labels)) <= {-1, 0, 1}
    np.testing.assert_array_equal(inside_w[:, 0], labels == 1)
    np.testing.assert_allclose(outside_w[labels >= 0], 1 / 64)
    assert np.all(outside_w[labels < 0] == 0)
    # targets are given for every inside anchor, sampled or not (reference)
    np.testing.assert_allclose(targets, want_targets, rtol=1e-12, atol=1e-12)
    # same seed: same sample; another seed or the next iteration: another
    _, again = run(spec(sampled), arrays, seed=5)
    _, other = run(spec(sampled), arrays, seed=6)
    _, second = run(spec(sampled), arrays, seed=5, forwards=2)
    np.testing.assert_array_equal(again[0], tops[0])
    assert not np.array_equal(other[0], tops[0])
    assert not np.array_equal(second[0], tops[0])
    # the parameter's seed overrides the net's
    _, p1 = run(spec(sampled + " seed: 11"), arrays, seed=1)
    _, p2 = run(spec(sampled + " seed: 11"), arrays, seed=2)
    np.testing.assert_array_equal(p1[0], p2[0])


# An image of 231 x 291: anchor 0 at map cell (y 11, x 12) ends exactly on the
# image's last row and column + 1 (x2 = 99 + 16 * 12 = 291, y2 = 55 + 16 * 11
# = 231), and anchor 3 at x 1 starts at x1 = -56 + 16 = -40.
EDGE_IM_INFO = np.array([[231.0, 291.0, 1.0]])


@pytest.mark.parametrize("border", [0, 40])
def test_anchor_edges_exactly_on_the_image_edge(border):
    """x2 == width or y2 == height is outside (the rule is x2 < width +
    border); x1 == -border is inside (x1 >= -border)."""
    arrays = inputs(im_info=EDGE_IM_INFO)
    _, tops = run(spec(f"batch_size: 100000 fg_fraction: 1 allowed_border: {border}"), arrays)
    labels, targets = per_anchor(tops, H, W)[:2]
    want, want_targets = reference(GT, EDGE_IM_INFO, H, W, border=float(border))
    np.testing.assert_array_equal(labels, want)
    np.testing.assert_allclose(targets, want_targets, rtol=1e-12, atol=1e-12)
    boxes = np.array([REFERENCE_ANCHORS[a] + [16 * x, 16 * y, 16 * x, 16 * y]
                      for y in range(H) for x in range(W) for a in range(A)])
    on_far_edge = (boxes[:, 2] == 291 + border) | (boxes[:, 3] == 231 + border)
    on_near_edge = (boxes[:, 0] == -border) | (boxes[:, 1] == -border)
    inside_otherwise = ((boxes[:, :2] >= -border).all(axis=1) & (boxes[:, 2] <= 291 + border)
                        & (boxes[:, 3] <= 231 + border))
    assert (on_far_edge & inside_otherwise).any() and (on_near_edge & inside_otherwise).any()
    # outside: ignored with zero targets; inside: a target (every inside
    # anchor gets one, labelled or not)
    assert np.all(labels[on_far_edge] == -1) and not targets[on_far_edge].any()
    near_only = on_near_edge & inside_otherwise & ~on_far_edge
    assert near_only.any() and targets[near_only].any(axis=1).all()


def test_fg_quota_truncates_a_non_integer_count():
    # 0.375 * 10 = 3.75 foreground anchors: py-faster-rcnn's int() keeps 3
    sampled = "batch_size: 10 fg_fraction: 0.375 allowed_border: 1000"
    before, _ = reference(GT, IM_INFO, H, W, border=1000.0)
    assert np.sum(before == 1) > 4
    _, tops = run(spec(sampled), inputs(), seed=3)
    labels = per_anchor(tops, H, W)[0]
    assert np.sum(labels == 1) == 3 and np.sum(labels == 0) == 7


def test_positive_weight_splits_outside_weights():
    _, tops = run(spec("batch_size: 100000 fg_fraction: 1 positive_weight: 0.25"), inputs())
    labels, _, _, outside_w = per_anchor(tops, H, W)
    np.testing.assert_allclose(outside_w[labels == 1], 0.25 / np.sum(labels == 1))
    np.testing.assert_allclose(outside_w[labels == 0], 0.75 / np.sum(labels == 0))


def test_zero_gt_boxes_make_sampled_background_and_zero_targets():
    _, tops = run(spec("allowed_border: 1000"), inputs(np.zeros((0, 5))))
    labels, targets, inside_w, outside_w = per_anchor(tops, H, W)
    want, _ = reference(np.zeros((0, 5)), IM_INFO, H, W, border=1000.0)
    assert np.sum(want == 0) > 256 and np.sum(labels == 0) == 256 and np.sum(labels == 1) == 0
    assert np.all(want[labels == 0] == 0)
    assert not targets.any() and not inside_w.any()
    np.testing.assert_allclose(outside_w[labels == 0], 1 / 256)


def test_image_smaller_than_every_anchor_labels_nothing():
    _, tops = run(spec(), inputs(GT[:1] * 0.1, np.array([[50.0, 60.0, 1.0]]), 4, 4))
    assert np.all(tops[0] == -1) and not any(t.any() for t in tops[1:])


def test_float32_matches_float64():
    # No kernels in this layer: the GPU path is the same xp code, checked on a
    # real device by the gpu-marked parity test.
    _, t32 = run(spec("batch_size: 100000 fg_fraction: 1"), inputs(), dtype=np.float32)
    _, t64 = run(spec("batch_size: 100000 fg_fraction: 1"), inputs())
    for a, b in zip(t32, t64):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_backward_gives_zero_gradients_and_no_forced_backward():
    layer = build_layer(spec(), dtype=np.float64)
    bottoms, tops = setup_layer(layer, inputs())
    layer.forward(bottoms, tops)
    bottoms[0].diff[...] = 5
    layer.backward(tops, [True, False, False], bottoms)
    assert not bottoms[0].diff.any()
    assert not any(layer.allow_force_backward(i) for i in range(3))


def test_python_layer_reads_param_str():
    py = ('name: "rpn-data" type: "Python" bottom: "rpn_cls_score" bottom: "gt_boxes" '
          'bottom: "im_info" bottom: "data" top: "a" top: "b" top: "c" top: "d" '
          'python_param { module: "rpn.anchor_target_layer" layer: "AnchorTargetLayer" '
          "param_str: \"'feat_stride': 16\" }")
    layer, tops = run(py, inputs() + [np.zeros((1, 3, 240, 300))], seed=3)
    assert layer.feat_stride == 16 and layer.creator.batch_size == 256
    _, native = run(spec(), inputs(), seed=3)
    for a, b in zip(tops, native):
        np.testing.assert_array_equal(a, b)
    layer, _ = run(py.replace("'feat_stride': 16", "'feat_stride': 8, 'scales': (4, 8)"),
                   [np.zeros((1, 12, 30, 38))] + inputs()[1:] + [np.zeros((1, 3, 240, 300))])
    assert layer.feat_stride == 8 and layer.num_anchors == 6


@pytest.mark.parametrize("arrays,match", [
    (lambda: inputs(GT[:, :4]), r"bottom 'gt_boxes' expected gt_boxes \(G, 5\).*found shape \(3, 4\)"),
    (lambda: inputs(im_info=np.array([[240.0, 300.0, 1.0, 0.0]])),
     r"bottom 'im_info' expected im_info \(1, 3\).*found shape \(1, 4\)"),
    (lambda: [np.zeros((2, 18, H, W))] + inputs()[1:],
     r"bottom 'rpn_cls_score' expected rpn_cls_score \(1, 2A, H, W\).*found shape \(2, 18"),
    # 12 score channels (6 anchors) against the layer's 9 anchors.
    (lambda: [np.zeros((1, 12, H, W))] + inputs()[1:],
     r"bottom 'rpn_cls_score' expected rpn_cls_score \(1, 18, H, W\): 2 x 9 anchors.*\(1, 12"),
])
def test_shape_errors(arrays, match):
    layer = build_layer(spec(), dtype=np.float64)
    with pytest.raises(ShapeError, match=match):
        setup_layer(layer, arrays())


@pytest.mark.parametrize("extra,match", [
    ("batch_size: 0", "batch_size must be positive"),
    ("fg_fraction: 1.5", r"fg_fraction must lie in \[0, 1\]"),
    ("positive_weight: 1.5", "positive_weight must be negative"),
    ("feat_stride: 0", "feat_stride must be positive"),
])
def test_parameter_errors(extra, match):
    layer = build_layer(spec(extra), dtype=np.float64)
    with pytest.raises(NetDefinitionError, match=f"layer 'rpn-data'.*{match}"):
        setup_layer(layer, inputs())


@pytest.mark.gpu
def test_gpu_matches_cpu():
    compare_devices(spec(), inputs(), backward=False, top_diffs=[None] * 4)
    compare_devices(spec(), inputs(np.zeros((0, 5))), backward=False, top_diffs=[None] * 4)
