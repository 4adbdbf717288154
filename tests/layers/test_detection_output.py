"""DetectionOutput (Caffe-SSD): a small case by hand; random cases against a
plain transcription of Caffe-SSD's DecodeBBox / ApplyNMSFast /
keep_top_k (CENTER_SIZE, CORNER, CORNER_SIZE; variances in the target or
not; shared or per-class locations; background 0 or none; top_k,
keep_top_k, confidence threshold); the -1 rows when nothing is detected;
the GPU path (NMS kernels host-run) and on a GPU; the errors."""
import math

import numpy as np
import pytest

from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, setup_layer
from tests.kernel_harness import compare_devices, run_gpu_path_on_host


def spec(num_classes=3, extra="", nms="nms_threshold: 0.45"):
    return (f'name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" '
            f"top: \"out\" detection_output_param {{ num_classes: {num_classes} "
            f"nms_param {{ {nms} }} {extra} }}")


def run(text, loc, conf, prior, dtype=np.float64):
    layer = build_layer(text, dtype=dtype)
    bottoms, tops = setup_layer(layer, [loc, conf, prior])
    layer.forward(bottoms, tops)
    return tops[0].data.copy()


def test_small_case_by_hand():
    # Two priors, one image, classes {background, a, b}, CENTER_SIZE with
    # variances 0.1 / 0.2. Prior 0: (0.1, 0.1, 0.3, 0.3); prior 1 overlaps it.
    prior = np.array([[0.1, 0.1, 0.3, 0.3, 0.15, 0.1, 0.35, 0.3],
                      [0.1, 0.1, 0.2, 0.2, 0.1, 0.1, 0.2, 0.2]])[None]
    # Prior 0's centre moves right by variance 0.1 x offset 1 x its width,
    # and its width doubles (exp(0.2 x log(2) / 0.2) = 2).
    loc = np.array([[1.0, 0.0, math.log(2) / 0.2, 0.0, 0.0, 0.0, 0.0, 0.0]])
    conf = np.array([[0.1, 0.6, 0.3,     # prior 0: a 0.6, b 0.3
                      0.2, 0.5, 0.3]])   # prior 1: a 0.5, b 0.3
    out = run(spec(extra="code_type: CENTER_SIZE"), loc, conf, prior)
    # Decoded prior 0: centre (0.2 + 0.1 * 1 * 0.2, 0.2), size (0.4, 0.2):
    box0 = [0.02, 0.1, 0.42, 0.3]
    box1 = [0.15, 0.1, 0.35, 0.3]
    # IoU(box0, box1) = 0.2 * 0.2 / (0.4 * 0.2) = 0.5 > 0.45: for class a
    # prior 1 (0.5) is suppressed by prior 0 (0.6); for class b the scores
    # tie at 0.3 and the first prior is kept (stable order), the other goes.
    expected = [[0, 1, 0.6] + box0, [0, 2, 0.3] + box0]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-12, atol=1e-15)


def jaccard(a, b):
    """Caffe-SSD's JaccardOverlap of normalized boxes (no +1, empty -> 0)."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = iw * ih
    size = lambda r: 0.0 if r[2] < r[0] or r[3] < r[1] else (r[2] - r[0]) * (r[3] - r[1])  # noqa
    return inter / (size(a) + size(b) - inter)


def decode(p, v, d, code, in_target):
    """Caffe-SSD's DecodeBBox for one prior p, variance v, offsets d."""
    if in_target:
        v = [1.0] * 4
    if code == "CORNER":
        return [p[i] + v[i] * d[i] for i in range(4)]
    pw, ph = p[2] - p[0], p[3] - p[1]
    if code == "CORNER_SIZE":
        return [p[0] + v[0] * d[0] * pw, p[1] + v[1] * d[1] * ph,
                p[2] + v[2] * d[2] * pw, p[3] + v[3] * d[3] * ph]
    cx = v[0] * d[0] * pw + (p[0] + p[2]) / 2
    cy = v[1] * d[1] * ph + (p[1] + p[3]) / 2
    w, h = math.exp(v[2] * d[2]) * pw, math.exp(v[3] * d[3]) * ph
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def reference(loc, conf, prior, num_classes, share, background, code, in_target, threshold,
              nms_threshold, top_k, keep_top_k, eta=1.0):
    """Caffe-SSD's DetectionOutputLayer::Forward_cpu, plainly."""
    num, priors = loc.shape[0], prior.shape[2] // 4
    boxes_p, var_p = prior[0, 0].reshape(-1, 4), prior[0, 1].reshape(-1, 4)
    rows = []
    for i in range(num):
        loc_i = loc[i].reshape(priors, -1, 4)
        conf_i = conf[i].reshape(priors, num_classes)
        found = []
        for c in range(num_classes):
            if c == background:
                continue
            lc = 0 if share else c
            boxes = [decode(boxes_p[j], var_p[j], loc_i[j, lc], code, in_target)
                     for j in range(priors)]
            cands = [(conf_i[j, c], j) for j in range(priors) if conf_i[j, c] > threshold]
            cands.sort(key=lambda t: -t[0])   # Python's sort is stable, as std::stable_sort
            if top_k > -1:
                cands = cands[:top_k]
            kept, adaptive = [], nms_threshold
            for score, j in cands:
                if all(jaccard(boxes[j], boxes[k]) <= adaptive for _, k in kept):
                    kept.append((score, j))
                    if eta < 1 and adaptive > 0.5:
                        adaptive *= eta
            found += [(c, score, boxes[j]) for score, j in kept]
        if -1 < keep_top_k < len(found):
            best = sorted(range(len(found)), key=lambda n: -found[n][1])[:keep_top_k]
            found = [found[n] for n in sorted(best)]
        rows += [[i, c, s] + list(b) for c, s, b in found]
    if not rows:
        return np.array([[i] + [-1] * 6 for i in range(num)], dtype=np.float64)
    return np.array(rows)


def random_case(seed, num=2, priors=40, num_classes=4, share=True):
    """Priors clustered so that NMS has work; softmax scores."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.2, 0.8, (priors, 2)) * 0.3 + rng.integers(0, 3, (priors, 1)) * 0.3
    sizes = rng.uniform(0.05, 0.3, (priors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    prior = np.stack([boxes.reshape(-1), np.tile([0.1, 0.1, 0.2, 0.2], priors)])[None]
    loc_classes = 1 if share else num_classes
    loc = rng.standard_normal((num, priors * loc_classes * 4)) * 0.5
    logits = rng.standard_normal((num, priors, num_classes)) * 2
    conf = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    return loc, conf.reshape(num, -1), prior


CONFIGS = [  # share, background, code, in_target, threshold, nms, top_k, keep_top_k[, eta]
    (True, 0, "CENTER_SIZE", False, 0.01, 0.45, 400, 200),      # SSD300's
    (True, 0, "CENTER_SIZE", False, 0.01, 0.9, 400, -1, 0.8),   # adaptive NMS
    (False, -1, "CORNER", False, 0.05, 0.7, -1, 20, 0.95),
    (True, 0, "CENTER_SIZE", False, 0.2, 0.3, 5, 6),
    (False, 0, "CENTER_SIZE", False, None, 0.5, -1, -1),
    (True, -1, "CORNER", False, 0.1, 0.45, -1, 10),
    (True, 1, "CORNER", True, 0.1, 0.6, 8, -1),
    (False, -1, "CORNER_SIZE", False, 0.05, 0.4, 7, 12),
    (True, 0, "CENTER_SIZE", True, 0.1, 0.45, -1, 3),
]


def config_spec(num_classes, share, background, code, in_target, threshold, nms, top_k,
                keep_top_k, eta=1.0):
    extra = (f"share_location: {str(share).lower()} background_label_id: {background} "
             f"code_type: {code} variance_encoded_in_target: {str(in_target).lower()} "
             f"keep_top_k: {keep_top_k}")
    if threshold is not None:
        extra += f" confidence_threshold: {threshold}"
    nms_fields = f"nms_threshold: {nms}" + (f" top_k: {top_k}" if top_k > -1 else "")
    nms_fields += f" eta: {eta}" if eta != 1 else ""
    return spec(num_classes, extra, nms_fields)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("config", CONFIGS)
def test_matches_caffe_ssd_reference(config, seed):
    share, background, code, in_target, threshold, nms, top_k, keep_top_k = config[:8]
    eta = config[8] if len(config) > 8 else 1.0
    loc, conf, prior = random_case(seed, share=share)
    out = run(config_spec(4, *config), loc, conf, prior)
    f32 = lambda v: float(np.float32(v))  # noqa: E731 (the proto's float fields)
    expected = reference(loc, conf, prior, 4, share, background, code, in_target,
                         -np.inf if threshold is None else f32(threshold), f32(nms), top_k,
                         keep_top_k, f32(eta))
    assert out.shape == (1, 1, len(expected), 7)
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-12, atol=1e-14)


def test_nothing_detected_gives_minus_one_rows():
    loc, conf, prior = random_case(0, num=3)
    out = run(spec(4, "confidence_threshold: 0.999"), loc, conf, prior)
    expected = np.full((3, 7), -1.0)
    expected[:, 0] = [0, 1, 2]
    np.testing.assert_array_equal(out[0, 0], expected)


def test_one_image_without_detections_has_no_rows():
    loc, conf, prior = random_case(0, num=2)
    conf[1] = conf[1] * 0.0          # image 1: every score 0
    out = run(spec(4, "confidence_threshold: 0.01"), loc, conf, prior)
    assert out.shape[2] > 0 and np.all(out[0, 0, :, 0] == 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS[:3])
def test_gpu_path_on_host(config, dtype):
    loc, conf, prior = random_case(3, share=config[0])
    run_gpu_path_on_host(config_spec(4, *config), [loc, conf, prior], dtype=dtype,
                         backward=False, top_diffs=[None], rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", CONFIGS)
def test_gpu_matches_cpu(config, dtype):
    loc, conf, prior = random_case(4, num=3, priors=300, share=config[0])
    compare_devices(config_spec(4, *config), [loc, conf, prior], dtype=dtype, backward=False,
                    top_diffs=[None])


def test_num_classes_disagreeing_with_conf_is_refused():
    loc, conf, prior = random_case(0, num_classes=4)
    with pytest.raises(ShapeError, match=r"layer 'det' \(type DetectionOutput\): bottom 'conf' "
                                         r"expected .*num_classes 5.*num_classes disagrees with "
                                         r"the inputs: 4 scores per prior"):
        run(spec(5), loc, conf, prior)


def test_loc_of_the_wrong_size_is_refused():
    # share_location false wants one box per class and prior; this loc has one per prior.
    loc, conf, prior = random_case(0, num_classes=4)
    with pytest.raises(ShapeError, match=r"layer 'det'.*bottom 'loc' expected P \* 4 \* 4 = 640 "
                                         r"values per image \(40 priors\); num_classes 4 "
                                         r"disagrees with loc: 1 boxes per prior"):
        run(spec(4, "share_location: false"), loc, conf, prior)


def test_num_classes_disagreeing_with_unshared_loc_and_conf_is_refused():
    # Both inputs were made for 3 classes, the layer says 4: loc is checked
    # first, and its 3 boxes per prior (or 30 priors at 4 classes) are named.
    loc, conf, prior = random_case(0, num_classes=3, share=False)
    with pytest.raises(ShapeError, match=r"layer 'det'.*bottom 'loc' expected P \* 4 \* 4 = 640 .*"
                                         r"num_classes 4 disagrees with loc: 3 boxes per prior "
                                         r"\(share_location false: one box per class\), or the "
                                         r"prior count disagrees: loc 'loc' holds 30 priors' "
                                         r"offsets, conf 'conf' 30 priors' scores"):
        run(spec(4, "share_location: false"), loc, conf, prior)


def test_prior_count_of_loc_and_conf_disagreeing_with_prior_is_refused():
    # loc and conf come from a head with 30 priors, prior has 40.
    loc, conf, _ = random_case(0, priors=30)
    _, _, prior = random_case(0, priors=40)
    with pytest.raises(ShapeError, match=r"layer 'det'.*bottom 'loc' expected P \* 1 \* 4 = 160 "
                                         r"values per image \(40 priors\); the prior count "
                                         r"disagrees: loc 'loc' holds 30 priors' offsets, conf "
                                         r"'conf' 30 priors' scores \(num_classes 4\), prior "
                                         r"'prior' 40 priors, found shape \(2, 120\)"):
        run(spec(4), loc, conf, prior)


def test_prior_count_of_conf_alone_disagreeing_is_refused():
    # loc matches the 40 priors, conf holds 35 priors' scores (140 values,
    # 3.5 per prior: not a class count).
    loc, _, prior = random_case(0, priors=40)
    _, conf, _ = random_case(0, priors=35)
    with pytest.raises(ShapeError, match=r"layer 'det'.*bottom 'conf' expected 2 images x 40 "
                                         r"priors x num_classes 4 = 160 scores per image \(the "
                                         r"prior count disagrees: loc 'loc' holds 40 priors' "
                                         r"offsets, conf 'conf' 35 priors' scores"):
        run(spec(4), loc, conf, prior)


def test_conf_of_another_batch_size_is_refused():
    loc, conf, prior = random_case(0, num=2)
    with pytest.raises(ShapeError, match=r"layer 'det'.*bottom 'conf' expected 2 images, as loc "
                                         r"'loc' has, found shape \(1, 160\)"):
        run(spec(4), loc, conf[:1], prior)


def test_loc_without_a_batch_axis_is_refused():
    loc, conf, prior = random_case(0, num=1)
    with pytest.raises(ShapeError, match=r"layer 'det'.*bottom 'loc' expected \(N, \.\.\.\) box "
                                         r"offsets: at least 2 axes, found shape \(160,\)"):
        run(spec(4), loc[0], conf, prior)


@pytest.mark.parametrize("cut", [lambda p: p[:, :1], lambda p: p[:, :, :6], lambda p: p[:, :, :0]])
def test_prior_of_the_wrong_shape_is_refused(cut):
    loc, conf, prior = random_case(0)
    with pytest.raises(ShapeError, match=r"layer 'det'.*bottom 'prior' expected \(1, 2, P \* 4\), "
                                         r"P >= 1"):
        run(spec(4), loc, conf, cut(prior))


@pytest.mark.parametrize("text,message", [
    ('name: "det" type: "DetectionOutput"', "num_classes is required"),
    (spec(3, "background_label_id: 3"), "background_label_id 3 is not a class of num_classes 3"),
    (spec(3, nms="eta: 0"), r"nms_param.eta must lie in \(0, 1\] \(1: plain NMS\), found 0"),
    (spec(3, nms="eta: 1.5"), r"nms_param.eta must lie in \(0, 1\] .*found 1.5"),
])
def test_bad_parameters_are_named_errors(text, message):
    loc, conf, prior = random_case(0, num_classes=3)
    with pytest.raises(NetDefinitionError, match=f"layer 'det'.*{message}"):
        run(text, loc, conf, prior)
