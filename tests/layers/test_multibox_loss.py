"""MultiBoxLoss (Caffe-SSD): matching and mining against a plain loop
transcription of Caffe-SSD's MatchBBox / MineHardExamples; the loss value
against a plain reference for the supported settings; float64 gradient
checks of loc and conf; the GPU path on the stand-in CuPy and on a GPU;
the errors; a small SSD training net that takes two solver steps."""
import math

import numpy as np
import pytest

from layers.multibox_match import (BIPARTITE, PER_PREDICTION, iou_matrix, match_boxes,
                                   mine_negatives)
from netdef.device import Device
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices

FLT_MIN = float(np.finfo(np.float32).tiny)


def spec(num_classes=3, extra="", loss_param="", top='top: "loss"'):
    return (f'name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf" '
            f'bottom: "mbox_priorbox" bottom: "label" {top} '
            f"multibox_loss_param {{ num_classes: {num_classes} {extra} }} "
            f"loss_param {{ {loss_param} }}")


def random_case(seed, num=2, priors=40, num_classes=3, gt_per_image=(2, 3)):
    """Priors around the image, gt boxes overlapping some of them; the last
    image of a 3-image batch has no gt box; a -1 filler row at the end."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, (priors, 2))
    sizes = rng.uniform(0.1, 0.5, (priors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    prior = np.stack([boxes.reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], priors)])[None]
    rows = []
    for image in range(min(num, 2)):
        for g in range(gt_per_image[image % 2]):
            c, s = rng.uniform(0.25, 0.75, 2), rng.uniform(0.15, 0.45, 2)
            rows.append([image, rng.integers(1, num_classes), g, *(c - s / 2), *(c + s / 2),
                         float(g == 1)])
    rows.append([-1, 0, 0, 0, 0, 0, 0, 0])
    label = np.array(rows, dtype=np.float64)[None, None]
    loc = rng.standard_normal((num, priors * 4)) * 0.5
    conf = rng.standard_normal((num, priors * num_classes)) * 1.5
    return loc, conf, prior, label


# -- a plain transcription of Caffe-SSD ----------------------------------------------

def jaccard(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    size = lambda r: 0.0 if r[2] < r[0] or r[3] < r[1] else (r[2] - r[0]) * (r[3] - r[1])  # noqa
    return iw * ih / (size(a) + size(b) - iw * ih)


def ref_match(preds, gts, match_type, threshold, ignore_cross=False):
    """MatchBBox, as written in bbox_util.cpp (map of stored overlaps)."""
    match, best = [-1] * len(preds), [0.0] * len(preds)
    overlaps = {}
    for i, p in enumerate(preds):
        if ignore_cross and any(v < 0 or v > 1 for v in p):
            match[i] = -2
            continue
        for j, g in enumerate(gts):
            o = jaccard(p, g)
            if o > 1e-6:
                best[i] = max(best[i], o)
                overlaps.setdefault(i, {})[j] = o
    pool = list(range(len(gts)))
    while pool:
        max_i, max_j, max_o = -1, -1, -1.0
        for i in sorted(overlaps):
            if match[i] != -1:
                continue
            for j in pool:
                if j in overlaps[i] and overlaps[i][j] > max_o:
                    max_i, max_j, max_o = i, j, overlaps[i][j]
        if max_i == -1:
            break
        match[max_i], best[max_i] = max_j, max_o
        pool.remove(max_j)
    if match_type == "PER_PREDICTION":
        for i in sorted(overlaps):
            if match[i] != -1:
                continue
            max_j, max_o = -1, -1.0
            for j in range(len(gts)):
                o = overlaps[i].get(j)
                if o is not None and o >= threshold and o > max_o:
                    max_j, max_o = j, o
            if max_j != -1:
                match[i], best[i] = max_j, max_o
    return match, best


def ref_encode(p, v, g, code):
    pw, ph = p[2] - p[0], p[3] - p[1]
    if code == "CORNER":
        return [(g[k] - p[k]) / v[k] for k in range(4)]
    if code == "CORNER_SIZE":
        return [(g[k] - p[k]) / (pw, ph, pw, ph)[k] / v[k] for k in range(4)]
    gw, gh = g[2] - g[0], g[3] - g[1]
    return [((g[0] + g[2]) / 2 - (p[0] + p[2]) / 2) / pw / v[0],
            ((g[1] + g[3]) / 2 - (p[1] + p[3]) / 2) / ph / v[1],
            math.log(gw / pw) / v[2], math.log(gh / ph) / v[3]]


def ref_decode(p, v, d, code):
    pw, ph = p[2] - p[0], p[3] - p[1]
    if code == "CORNER":
        return [p[k] + v[k] * d[k] for k in range(4)]
    if code == "CORNER_SIZE":
        return [p[k] + v[k] * d[k] * (pw, ph, pw, ph)[k] for k in range(4)]
    cx, cy = v[0] * d[0] * pw + (p[0] + p[2]) / 2, v[1] * d[1] * ph + (p[1] + p[3]) / 2
    w, h = math.exp(v[2] * d[2]) * pw, math.exp(v[3] * d[3]) * ph
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def ref_conf_loss(scores, label, logistic):
    if logistic:
        return sum(max(x, 0) - x * (c == label) + math.log1p(math.exp(-abs(x)))
                   for c, x in enumerate(scores))
    m = max(scores)
    prob = math.exp(scores[label] - m) / sum(math.exp(x - m) for x in scores)
    return -math.log(max(prob, FLT_MIN))


def ref_mine(losses, match, best, ratio, neg_overlap):
    """MineHardExamples with MAX_NEGATIVE for one image with gt."""
    pairs = [(losses[m], m) for m in range(len(match))
             if match[m] == -1 and best[m] < neg_overlap]
    num_sel = min(int(sum(1 for m in match if m > -1) * ratio), len(pairs))
    pairs.sort(key=lambda t: -t[0])   # stable: ties lowest prior first
    return sorted(m for _, m in pairs[:num_sel])


def reference(loc, conf, prior, label, o):
    """MultiBoxLossLayer::Forward_cpu, plainly, for settings ``o``."""
    num, priors, c = loc.shape[0], prior.shape[2] // 4, o["num_classes"]
    boxes, var = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    gt = {}
    for row in label.reshape(-1, 8):
        if row[0] == -1 or (not o["difficult"] and row[7]):
            continue
        gt.setdefault(int(row[0]), []).append((int(row[1]), list(row[3:7])))
    loc_sum, conf_sum, matches = 0.0, 0.0, 0
    for i in range(num):
        l_i, c_i = loc[i].reshape(priors, 4), conf[i].reshape(priors, c)
        match, best = [-1] * priors, [0.0] * priors
        if i in gt:
            preds = boxes if o["use_prior"] else [
                ref_decode(boxes[j], var[j], l_i[j], o["code"]) for j in range(priors)]
            match, best = ref_match(preds, [g for _, g in gt[i]], o["match"], 0.5, o["ignore"])
        labels = [gt[i][m][0] if m > -1 else 0 for m in match]
        for j in range(priors):
            if match[j] > -1:
                matches += 1
                t = ref_encode(boxes[j], var[j], gt[i][match[j]][1], o["code"])
                for k in range(4):
                    d = l_i[j, k] - t[k]
                    loc_sum += 0.5 * d * d if o["l2"] or abs(d) < 1 else abs(d) - 0.5
        if o["mining"]:
            chosen = [j for j in range(priors) if match[j] > -1]
            if i in gt:
                losses = [ref_conf_loss(c_i[j], labels[j], o["logistic"]) for j in range(priors)]
                chosen += ref_mine(losses, match, best, 3.0, 0.5)
        else:
            chosen = range(priors)
        conf_sum += sum(ref_conf_loss(c_i[j], labels[j], o["logistic"]) for j in chosen)
    norm = {"VALID": matches, "FULL": num * priors, "BATCH_SIZE": num, "NONE": 1}[o["norm"]]
    return (o["loc_weight"] * loc_sum + conf_sum) / max(norm, 1)


OPTIONS = [  # (prototxt extra, loss_param, reference options)
    ("code_type: CENTER_SIZE", "", {}),  # SSD's settings
    ("code_type: CENTER_SIZE loc_weight: 2.5 use_difficult_gt: false", "normalization: FULL",
     {"loc_weight": 2.5, "difficult": False, "norm": "FULL"}),
    ("code_type: CORNER mining_type: NONE", "normalization: BATCH_SIZE",
     {"code": "CORNER", "mining": False, "norm": "BATCH_SIZE"}),
    ("code_type: CORNER_SIZE loc_loss_type: L2 match_type: BIPARTITE", "normalization: NONE",
     {"code": "CORNER_SIZE", "l2": True, "match": "BIPARTITE", "norm": "NONE"}),
    ("code_type: CENTER_SIZE conf_loss_type: LOGISTIC", "", {"logistic": True}),
    ("code_type: CENTER_SIZE conf_loss_type: LOGISTIC mining_type: NONE", "",
     {"logistic": True, "mining": False}),
    ("code_type: CENTER_SIZE use_prior_for_matching: false", "", {"use_prior": False}),
    ("code_type: CENTER_SIZE ignore_cross_boundary_bbox: true", "", {"ignore": True}),
    ("code_type: CENTER_SIZE ignore_cross_boundary_bbox: true mining_type: NONE", "",
     {"ignore": True, "mining": False}),
]


def options(extra):
    o = {"num_classes": 3, "difficult": True, "use_prior": True, "code": "CENTER_SIZE",
         "match": "PER_PREDICTION", "l2": False, "logistic": False, "mining": True,
         "norm": "VALID", "loc_weight": 1.0, "ignore": False}
    o.update(extra)
    return o


def forward(text, arrays, dtype=np.float64, device=None):
    layer = build_layer(text, dtype=dtype) if device is None else \
        build_layer(text, dtype=dtype, device=device)
    bottoms, tops = setup_layer(layer, arrays)
    layer.forward(bottoms, tops)
    return layer, bottoms, tops


# -- matching and mining ---------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("match_type", ["BIPARTITE", "PER_PREDICTION"])
def test_matching_equals_caffe_ssd_loops(seed, match_type):
    loc, conf, prior, label = random_case(seed, priors=60, gt_per_image=(4, 5))
    boxes = prior[0, 0].reshape(-1, 4)
    gts = [list(r[3:7]) for r in label.reshape(-1, 8) if r[0] == 0]
    code = BIPARTITE if match_type == "BIPARTITE" else PER_PREDICTION
    match, best = match_boxes(iou_matrix(boxes, np.array(gts)), code, 0.5)
    expected_match, expected_best = ref_match(boxes, gts, match_type, 0.5)
    np.testing.assert_array_equal(match, expected_match)
    np.testing.assert_allclose(best, expected_best, rtol=1e-12)
    assert (match > -1).sum() >= len(gts)  # every gt box took a prior


def test_bipartite_ties_go_to_the_lowest_prior_then_gt():
    # Priors 0 and 1 are the same box; gts 0 and 1 are the same box.
    overlaps = np.array([[0.3, 0.3], [0.3, 0.3], [0.1, 0.0]])
    match, best = match_boxes(overlaps, BIPARTITE, 0.5)
    np.testing.assert_array_equal(match, [0, 1, -1])
    np.testing.assert_allclose(best, [0.3, 0.3, 0.1])


def test_mining_equals_caffe_ssd_loops():
    rng = np.random.default_rng(7)
    losses = rng.uniform(0, 3, (3, 50)).round(1)           # ties on purpose
    match = np.where(rng.uniform(size=(3, 50)) < 0.08, 0, -1)
    best = rng.uniform(0, 0.8, (3, 50))
    has_gt = np.array([True, True, False])
    mask = mine_negatives(losses, match, best, has_gt, 3.0, 0.5)
    for i in range(3):
        expected = ref_mine(list(losses[i]), list(match[i]), list(best[i]), 3.0, 0.5) \
            if has_gt[i] else []
        assert sorted(np.flatnonzero(mask[i])) == expected


def test_selection_counts_on_a_small_case_by_hand():
    # Four priors; one gt box equal to prior 0 (IoU 1), prior 1 half of it.
    prior = np.array([[0.0, 0.0, 0.4, 0.4, 0.0, 0.0, 0.4, 0.2,
                       0.6, 0.6, 0.9, 0.9, 0.5, 0.0, 0.9, 0.3],
                      [0.1, 0.1, 0.2, 0.2] * 4])[None]
    label = np.array([[[[0, 1, 0, 0.0, 0.0, 0.4, 0.4, 0]]]])
    loc = np.zeros((1, 16))
    conf = np.array([[0, 0, 0,   0, 0, 0,   0, 5, 0,   0, 0, 2]], dtype=np.float64)
    layer, _, tops = forward(spec(3, "code_type: CENTER_SIZE neg_pos_ratio: 2"),
                             [loc, conf, prior, label])
    sel = layer.selection
    # Prior 0 matched (bipartite); prior 1 (IoU 0.5 >= 0.5) matched per prediction;
    # 4 negatives allowed, 2 eligible (priors 2 and 3): both taken.
    assert sel["num_matches"] == 2 and sel["num_negatives"] == 2
    # loc: prior 0 target 0; prior 1 target (0, 0.1/0.2/0.1, 0, log 2 / 0.2)
    t = [0.0, 0.1 / 0.2 / 0.1, 0.0, math.log(2) / 0.2]
    loc_sum = sum(abs(v) - 0.5 if abs(v) >= 1 else 0.5 * v * v for v in t)
    conf_sum = 2 * math.log(3) + (math.log(2 + math.exp(5)) - 0) \
        + (math.log(2 + math.exp(2)) - 0)
    assert float(tops[0].data) == pytest.approx((loc_sum + conf_sum) / 2, rel=1e-12)


# -- the loss --------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("extra,loss_param,opts", OPTIONS)
def test_loss_matches_reference(extra, loss_param, opts, seed):
    arrays = random_case(seed, num=3)
    _, _, tops = forward(spec(3, extra, loss_param), arrays)
    expected = reference(*arrays, options(opts))
    assert float(tops[0].data) == pytest.approx(expected, rel=1e-10)


def test_no_gt_at_all_gives_a_finite_loss():
    loc, conf, prior, label = random_case(0)
    label = np.array([[[[-1, 0, 0, 0, 0, 0, 0, 0]]]], dtype=np.float64)
    _, _, tops = forward(spec(3, "code_type: CENTER_SIZE"), [loc, conf, prior, label])
    assert float(tops[0].data) == 0.0           # mining: no positives, no negatives
    _, _, tops = forward(spec(3, "code_type: CENTER_SIZE mining_type: NONE"),
                         [loc, conf, prior, label])
    assert float(tops[0].data) == pytest.approx(reference(
        loc, conf, prior, label, options({"mining": False})), rel=1e-12)


def test_propagate_down_false_leaves_that_term_out():
    arrays = random_case(2)
    down = " propagate_down: {} propagate_down: {} propagate_down: false propagate_down: false"
    conf_only = float(forward(spec(3, "code_type: CENTER_SIZE") + down.format("false", "true"),
                              arrays)[2][0].data)
    loc_only = float(forward(spec(3, "code_type: CENTER_SIZE") + down.format("true", "false"),
                             arrays)[2][0].data)
    assert conf_only == pytest.approx(reference(*arrays, options({"loc_weight": 0.0})), rel=1e-12)
    assert conf_only > 0 and loc_only > 0
    assert conf_only + loc_only == pytest.approx(reference(*arrays, options({})), rel=1e-12)


@pytest.mark.parametrize("extra,loss_param", [(e, lp) for e, lp, o in OPTIONS
                                              if "use_prior_for_matching" not in e])
def test_gradient_check(extra, loss_param):
    arrays = random_case(5, num=3, priors=20)
    result = check_layer(spec(3, extra, loss_param), arrays, check_bottoms=[0, 1])
    assert result.passed, result.report()
    assert result.checked > 300


def test_backward_to_labels_or_priors_is_refused():
    layer, bottoms, tops = forward(spec(3), random_case(0))
    assert [layer.allow_force_backward(i) for i in range(4)] == [True, True, False, False]
    for index, role in ((2, "prior box"), (3, "label")):
        down = [True, True, False, False]
        down[index] = True
        with pytest.raises(NetDefinitionError, match=f"layer 'mbox_loss'.*cannot back-propagate "
                                                     f"to the {role} bottom"):
            layer.backward(tops, down, bottoms)


# -- devices ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extra", [OPTIONS[0][0], OPTIONS[4][0], OPTIONS[2][0]])
def test_gpu_path_on_the_standin(extra, dtype):
    """Device arrays (bench.standin_cupy) give the CPU's loss and diffs, and
    no host array reaches a device operation."""
    from bench.standin_cupy import COUNTS, installed
    arrays = [np.asarray(a, dtype=dtype) if a.dtype.kind == "f" else a
              for a in random_case(3, num=3)]
    results = []
    for device in (None, "gpu"):
        with installed():
            COUNTS.reset()
            layer, bottoms, tops = forward(spec(3, extra), arrays, dtype=dtype,
                                           device=Device("gpu", 0) if device else None)
            tops[0].diff[...] = 1.5
            layer.backward(tops, [True, True, False, False], bottoms)
            results.append([np.asarray(x) for x in (tops[0].data, bottoms[0].diff,
                                                    bottoms[1].diff)])
            if device:
                assert type(tops[0].data).__module__.startswith("cupy")
                assert COUNTS.totals()["host_mix"] == 0
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for cpu, gpu in zip(*results):
        np.testing.assert_allclose(gpu, cpu, rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extra", [o[0] for o in OPTIONS])
def test_gpu_matches_cpu(extra, dtype):
    compare_devices(spec(3, extra), random_case(4, num=3, priors=300),
                    dtype=dtype, propagate=[True, True, False, False], top_diffs=[1.0])


# -- errors ----------------------------------------------------------------------------

def test_label_of_the_wrong_shape_is_refused():
    loc, conf, prior, label = random_case(0)
    with pytest.raises(ShapeError, match=r"layer 'mbox_loss' \(type MultiBoxLoss\): bottom "
                                         r"'label' expected \(1, 1, G, 8\).*found shape "
                                         r"\(1, 1, 6, 7\)"):
        forward(spec(3), [loc, conf, prior, label[..., :7]])


def test_prior_count_disagreeing_with_loc_is_refused():
    loc, conf, prior, label = random_case(0)
    with pytest.raises(ShapeError, match=r"layer 'mbox_loss'.*bottom 'mbox_loc' expected "
                                         r"\(N, P \* 4\) = \(N, 156\) for the 39 priors"):
        forward(spec(3), [loc, conf, prior[:, :, :-4], label])


def test_num_classes_disagreeing_with_conf_is_refused():
    with pytest.raises(ShapeError, match=r"layer 'mbox_loss'.*bottom 'mbox_conf' expected "
                                         r"\(2, P \* num_classes\) = \(2, 160\).*num_classes 4 "
                                         r"\(found 3 scores per prior\)"):
        forward(spec(4), random_case(0))


def test_prior_blob_of_the_wrong_shape_is_refused():
    loc, conf, prior, label = random_case(0)
    with pytest.raises(ShapeError, match=r"bottom 'mbox_priorbox' expected \(1, 2, P \* 4\)"):
        forward(spec(3), [loc, conf, prior[:, :1], label])


@pytest.mark.parametrize("row,message", [
    ([0, 0, 0, 0.1, 0.1, 0.5, 0.5, 0], r"a label other than the background 0 \(found background in the dataset\)"),
    ([0, 3, 0, 0.1, 0.1, 0.5, 0.5, 0], r"a class label in \[0, 3\)"),
    ([2, 1, 0, 0.1, 0.1, 0.5, 0.5, 0], r"an image index in \[0, 2\) or -1"),
    ([1, 1, 0, 0.1, np.nan, 0.5, 0.5, 0], "finite box coordinates"),
])
def test_bad_ground_truth_rows_are_named_data_errors(row, message):
    loc, conf, prior, _ = random_case(0)
    label = np.array([[[row]]], dtype=np.float64)
    with pytest.raises(DataError, match=f"layer 'mbox_loss'.*bottom 'label': expected "
                                        f"{message}, found row"):
        forward(spec(3), [loc, conf, prior, label])


@pytest.mark.parametrize("extra,message", [
    ("share_location: false", r"share_location false \(one box per class\)"),
    ("mining_type: HARD_EXAMPLE", "mining_type HARD_EXAMPLE"),
    ("nms_param { nms_threshold: 0.5 }", r"NMS in mining \(nms_param\)"),
    ("encode_variance_in_target: true", "encode_variance_in_target true"),
    ("map_object_to_agnostic: true", "map_object_to_agnostic true"),
    ("bp_inside: true", "bp_inside true"),
    ("conf_loss_type: LOGISTIC background_label_id: 1",
     "conf_loss_type LOGISTIC with background_label_id other than 0"),
])
def test_unsupported_settings_are_named_errors(extra, message):
    with pytest.raises(NetDefinitionError, match=f"layer 'mbox_loss'.*multibox_loss_param: "
                                                 f"{message} is not supported"):
        forward(spec(3, extra), random_case(0))


@pytest.mark.parametrize("text,message", [
    ('name: "mbox_loss" type: "MultiBoxLoss"', "num_classes is required"),
    (spec(3, "background_label_id: 3"), "background_label_id 3 is not a class of num_classes 3"),
    (spec(3, "do_neg_mining: false"), "do_neg_mining false disagrees with mining_type "
                                      "MAX_NEGATIVE"),
])
def test_bad_parameters_are_named_errors(text, message):
    with pytest.raises(NetDefinitionError, match=f"layer 'mbox_loss'.*{message}"):
        forward(text, random_case(0))


# -- in a training net -------------------------------------------------------------------

def tiny_ssd_net(num_classes=3):
    """A two-conv trunk, one SSD head (loc, conf, PriorBox) and MultiBoxLoss."""
    from netdef.net_spec import NetSpec, layers as L
    n = NetSpec()
    n.data = L.Input(input_param=dict(shape=dict(dim=[2, 3, 16, 16])))
    n.label = L.Input(input_param=dict(shape=dict(dim=[1, 1, 3, 8])))
    conv = dict(kernel_size=3, pad=1, weight_filler=dict(type="gaussian", std=0.1))
    n.conv1 = L.Convolution(n.data, num_output=8, stride=2, **conv)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.conv2 = L.Convolution(n.relu1, num_output=8, stride=2, **conv)
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    per_cell = 4                       # ratio 1, sqrt(min x max), 2 and 1/2
    n.loc = L.Convolution(n.relu2, num_output=per_cell * 4, **conv)
    n.loc_perm = L.Permute(n.loc, order=[0, 2, 3, 1])
    n.mbox_loc = L.Flatten(n.loc_perm, axis=1)
    n.conf = L.Convolution(n.relu2, num_output=per_cell * num_classes, **conv)
    n.conf_perm = L.Permute(n.conf, order=[0, 2, 3, 1])
    n.mbox_conf = L.Flatten(n.conf_perm, axis=1)
    n.mbox_priorbox = L.PriorBox(n.relu2, n.data, min_size=5, max_size=10, aspect_ratio=2,
                                 flip=True, clip=False, variance=[0.1, 0.1, 0.2, 0.2])
    n.mbox_loss = L.MultiBoxLoss(n.mbox_loc, n.mbox_conf, n.mbox_priorbox, n.label,
                                 num_classes=num_classes, code_type="CENTER_SIZE",
                                 propagate_down=[True, True, False, False],
                                 loss_param=dict(normalization="VALID"))
    return n.to_prototxt()


def test_a_tiny_ssd_net_trains_two_iterations():
    from netdef.net import Net
    from solver.sgd import SGDSolver
    net = Net(tiny_ssd_net(), "TRAIN", dtype=np.float32, seed=1)
    assert net.blobs["mbox_priorbox"].shape == (1, 2, 4 * 4 * 4 * 4)
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.standard_normal((2, 3, 16, 16))
    net.blobs["label"].data[...] = [[[[0, 1, 0, 0.1, 0.1, 0.5, 0.6, 0],
                                      [0, 2, 1, 0.5, 0.4, 0.9, 0.9, 0],
                                      [1, 1, 0, 0.2, 0.2, 0.7, 0.8, 0]]]]
    solver = SGDSolver('base_lr: 0.01 lr_policy: "fixed" momentum: 0.9 max_iter: 2\n',
                       net=net, stream=None, seed=0)
    losses = []
    for _ in range(2):
        solver.step(1)
        losses.append(float(net.blobs["mbox_loss"].data))
    assert solver.iter == 2
    assert all(np.isfinite(losses)) and all(v > 0 for v in losses)
    assert np.abs(net.params["conf"][0].diff).sum() > 0   # gradients reached the head
    assert np.abs(net.params["conv1"][0].diff).sum() > 0  # and the trunk


CAFFE_SSD_LOSS = """name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf"
  bottom: "mbox_priorbox" bottom: "label" top: "mbox_loss"
  include { phase: TRAIN } propagate_down: true propagate_down: true
  propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0
    num_classes: 21 share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
    use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true
    neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE ignore_cross_boundary_bbox: false
    mining_type: MAX_NEGATIVE do_neg_mining: true }"""


def test_caffe_ssd_training_layer_text_builds_and_equals_the_reference():
    """The mbox_loss layer as Caffe-SSD's SSD300 VOC0712 train net writes it
    (fields of ssd_pascal.py, plus the deprecated do_neg_mining older files
    carry) builds and gives the reference loss with 21 classes."""
    arrays = random_case(6, num=2, priors=50, num_classes=21)
    _, _, tops = forward(CAFFE_SSD_LOSS, arrays)
    expected = reference(*arrays, options({"num_classes": 21}))
    assert float(tops[0].data) == pytest.approx(expected, rel=1e-10)


def test_ignore_cross_boundary_bbox_leaves_priors_out():
    arrays = random_case(0)
    prior = arrays[2][0, 0].reshape(-1, 4)
    crossing = ((prior < 0) | (prior > 1)).any(axis=1)
    assert 0 < crossing.sum() < len(prior)
    layer, _, tops = forward(spec(3, "code_type: CENTER_SIZE ignore_cross_boundary_bbox: true"),
                             arrays)
    _, chosen_prior = (np.asarray(a) for a in layer.selection["conf"])
    assert not crossing[chosen_prior].any()       # neither matched nor mined
    plain = forward(spec(3, "code_type: CENTER_SIZE"), arrays)[2]
    assert float(tops[0].data) != pytest.approx(float(plain[0].data))


def test_an_empty_gt_box_is_never_matched():
    loc, conf, prior, label = random_case(0)
    empty = np.array([[[[1, 2, 5, 0.5, 0.1, 0.5, 0.6, 0], [1, 1, 6, 0.6, 0.6, 0.4, 0.4, 0]]]])
    _, _, tops = forward(spec(3, "code_type: CENTER_SIZE"),
                             [loc, conf, prior, np.concatenate([label, empty], axis=2)])
    expected = reference(loc, conf, prior, label, options({}))
    assert float(tops[0].data) == pytest.approx(expected, rel=1e-12)
