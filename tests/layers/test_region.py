"""Region (YOLOv2's loss) against a plainly written reference that follows
darknet's region layer step by step (every prediction, then every truth
overwriting its slot), float64 gradient checks, the host-run CUDA kernel,
GPU parity and the errors."""
import math

import numpy as np
import pytest

import layers.region
from netdef.errors import DataError, NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, check_layer, setup_layer
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

ANCHORS = [1.0, 1.5, 2.5, 1.0]  # two anchors (w, h) in grid cells
PRIOR_SCALE = float(np.float32(0.01))  # darknet's 0.01, as the float field holds it


# -- reference (plain loops, darknet's order) ------------------------------------------

def sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def box_iou(a, b):
    """darknet's box_iou of centre-size boxes (x, y, w, h)."""
    def overlap(c1, s1, c2, s2):
        return min(c1 + s1 / 2, c2 + s2 / 2) - max(c1 - s1 / 2, c2 - s2 / 2)
    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = w * h if w > 0 and h > 0 else 0.0
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def ref_region(x, labels, classes, num, anchors, softmax=True, thresh=0.5, object_scale=1.0,
               noobject_scale=1.0, class_scale=1.0, coord_scale=1.0, rescore=False,
               bias_match=False, prior_scale=0.0):
    """(loss, d loss / d x) of the Region layer, one element at a time."""
    n_img, _, height, width = x.shape
    loss = np.zeros((n_img, num, height, width))
    grad = np.zeros_like(x, dtype=np.float64)

    def c(b, n, k, j, i):
        return n * (5 + classes) + k

    def pred_box(b, n, j, i):
        return ((i + sig(x[b, c(b, n, 0, j, i), j, i])) / width,
                (j + sig(x[b, c(b, n, 1, j, i), j, i])) / height,
                math.exp(x[b, c(b, n, 2, j, i), j, i]) * anchors[2 * n] / width,
                math.exp(x[b, c(b, n, 3, j, i), j, i]) * anchors[2 * n + 1] / height)

    def coord_terms(b, n, j, i, target, scale):
        """Overwrite the slot's coordinate gradient; return the loss."""
        total = 0.0
        for k in range(4):
            v = x[b, c(b, n, k, j, i), j, i]
            out = sig(v) if k < 2 else v
            total += 0.5 * scale * (target[k] - out) ** 2
            slope = out * (1 - out) if k < 2 else 1.0
            grad[b, c(b, n, k, j, i), j, i] = -scale * (target[k] - out) * slope
        return total

    rows = [r for r in np.asarray(labels).reshape(-1, 8) if r[0] != -1]
    for b in range(n_img):
        truths = [r for r in rows if int(r[0]) == b]
        centre = [((r[3] + r[5]) / 2, (r[4] + r[6]) / 2, r[5] - r[3], r[6] - r[4]) for r in truths]
        for j in range(height):
            for i in range(width):
                for n in range(num):
                    best = max([box_iou(pred_box(b, n, j, i), t) for t in centre], default=0.0)
                    total = 0.0
                    if prior_scale:
                        total += coord_terms(b, n, j, i, (0.5, 0.5, 0.0, 0.0), prior_scale)
                    o = sig(x[b, c(b, n, 4, j, i), j, i])
                    if best <= thresh:
                        total += 0.5 * noobject_scale * o * o
                        grad[b, c(b, n, 4, j, i), j, i] = noobject_scale * o * o * (1 - o)
                    loss[b, n, j, i] = total
        for r, t in zip(truths, centre):
            if r[7]:
                continue  # difficult: no responsible prediction
            i, j = int(t[0] * width), int(t[1] * height)
            best, best_n = 0.0, 0
            for n in range(num):
                p = pred_box(b, n, j, i)
                shape = (anchors[2 * n] / width, anchors[2 * n + 1] / height) if bias_match else p[2:]
                iou = box_iou((0, 0) + tuple(shape), (0, 0) + t[2:])
                if iou > best:
                    best, best_n = iou, n
            n = best_n
            target = (t[0] * width - i, t[1] * height - j,
                      math.log(t[2] * width / anchors[2 * n]), math.log(t[3] * height / anchors[2 * n + 1]))
            total = coord_terms(b, n, j, i, target, coord_scale * (2 - t[2] * t[3]))
            o = sig(x[b, c(b, n, 4, j, i), j, i])
            goal = box_iou(pred_box(b, n, j, i), t) if rescore else 1.0
            total += 0.5 * object_scale * (goal - o) ** 2
            grad[b, c(b, n, 4, j, i), j, i] = -object_scale * (goal - o) * o * (1 - o)
            scores = [x[b, c(b, n, 5 + k, j, i), j, i] for k in range(classes)]
            label = int(r[1]) - 1
            if softmax:
                exps = [math.exp(s - max(scores)) for s in scores]
                probs = [e / sum(exps) for e in exps]
                total += -class_scale * math.log(probs[label])
            else:
                probs = [sig(s) for s in scores]
                total += -class_scale * sum(math.log(p) if k == label else math.log(1 - p)
                                            for k, p in enumerate(probs))
            for k in range(classes):
                grad[b, c(b, n, 5 + k, j, i), j, i] = class_scale * (probs[k] - (k == label))
            loss[b, n, j, i] = total
    return loss.sum() / n_img, grad / n_img


# -- inputs -----------------------------------------------------------------------------

def predictions(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def label_rows(rows):
    """[image, class, xmin, ymin, xmax, ymax, difficult] -> (1, 1, G, 8)."""
    full = [[r[0], r[1], k] + list(r[2:6]) + [r[6] if len(r) > 6 else 0] for k, r in enumerate(rows)]
    return np.array(full, dtype=np.float64).reshape(1, 1, -1, 8)


LABELS = label_rows([
    [0, 1, 0.10, 0.20, 0.45, 0.70],
    [0, 3, 0.50, 0.35, 0.95, 0.80],
    [0, 2, 0.55, 0.40, 0.90, 0.75],     # same cell as the one before: the last wins its slot
    [1, 2, 0.05, 0.05, 0.35, 0.95],
    [1, 1, 0.60, 0.10, 0.80, 0.30, 1],  # difficult
    [-1, -1, -1, -1, -1, -1, -1],       # AnnotatedData's filler row
])


def spec(params="", name="region"):
    return (f'name: "{name}" type: "Region" bottom: "pred" bottom: "label" '
            f'region_param {{ classes: 3 num: 2 anchors: {ANCHORS} {params} }}')


def run(spec_text, arrays, top_diff=None, dtype=np.float64, phase="TRAIN"):
    layer = build_layer(spec_text, dtype=dtype, phase=phase)
    bottoms, tops = setup_layer(layer, arrays)
    layer.forward(bottoms, tops)
    if top_diff is not None:
        tops[0].diff[...] = top_diff
        layer.backward(tops, [True, False], bottoms)
    return layer, bottoms, tops


CASES = [
    # region_param text, reference keywords
    ("softmax: true", dict(softmax=True)),
    ("softmax: true rescore: true bias_match: true thresh: 0.3 object_scale: 5 coord_scale: 2",
     dict(softmax=True, rescore=True, bias_match=True, thresh=0.3, object_scale=5,
          coord_scale=2)),
    ("noobject_scale: 0.5 class_scale: 3 thresh: 0.2", dict(softmax=False, noobject_scale=0.5,
                                                          class_scale=3, thresh=0.2)),
    ("softmax: true prior_images: 100 prior_scale: 0.25", dict(softmax=True, prior_scale=0.25)),
]


@pytest.mark.parametrize("params,ref_kw", CASES)
def test_region_forward_and_backward_match_reference(params, ref_kw):
    x = predictions((2, 16, 3, 4), seed=0) * 1.5
    _, bottoms, tops = run(spec(params + " prior_images: 0" * ("prior_images" not in params)),
                           [x, LABELS], top_diff=1.5)
    loss, grad = ref_region(x, LABELS, 3, 2, ANCHORS, **ref_kw)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottoms[0].diff, 1.5 * grad, rtol=1e-10, atol=1e-14)


def test_region_defaults_are_darknets_parser_defaults_and_prior_term_is_on():
    """An empty region_param: one anchor of 0.5 x 0.5 cells, 20 classes,
    sigmoid classes, thresh 0.5, scales 1, and darknet's early prior term
    (0.01) during the first 12800 images."""
    layer = build_layer('type: "Region" region_param { }')
    s = layer.param.region_param
    assert (s.classes, s.coords, s.num, s.softmax, s.rescore, s.bias_match) == (20, 4, 1, False, False, False)
    assert (s.prior_images, s.prior_scale) == (12800, pytest.approx(0.01))
    x = predictions((2, 25, 2, 3), seed=1)
    labels = label_rows([[0, 7, 0.2, 0.2, 0.6, 0.5], [1, 20, 0.5, 0.5, 0.9, 0.9]])
    layer, _, tops = run('type: "Region"', [x, labels])
    assert layer.num_classes == 21
    loss, _ = ref_region(x, labels, 20, 1, [0.5, 0.5], softmax=False, prior_scale=PRIOR_SCALE)
    np.testing.assert_allclose(tops[0].data, loss, rtol=1e-12)


def test_region_prior_term_stops_after_prior_images_and_the_count_is_saved():
    x = predictions((2, 16, 3, 4), seed=2)
    layer = build_layer(spec("prior_images: 5"))
    bottoms, tops = setup_layer(layer, [x, LABELS])
    with_prior, _ = ref_region(x, LABELS, 3, 2, ANCHORS, softmax=False, prior_scale=PRIOR_SCALE)
    without, _ = ref_region(x, LABELS, 3, 2, ANCHORS, softmax=False)
    seen = []
    for _ in range(3):  # darknet counts the batch before the pass: 2, 4, then 6 >= 5
        layer.forward(bottoms, tops)
        seen.append(float(tops[0].data))
    np.testing.assert_allclose(seen, [with_prior, with_prior, without], rtol=1e-12)
    assert layer.random_state() == {"images_seen": 6}
    fresh = build_layer(spec("prior_images: 5"))
    b2, t2 = setup_layer(fresh, [x, LABELS])
    fresh.set_random_state(layer.random_state())
    fresh.forward(b2, t2)
    np.testing.assert_allclose(t2[0].data, without, rtol=1e-12)
    # A TEST-phase pass does not count as training images.
    test_layer = build_layer(spec("prior_images: 5"), phase="TEST")
    b3, t3 = setup_layer(test_layer, [x, LABELS])
    for _ in range(3):
        test_layer.forward(b3, t3)
    assert test_layer.images_seen == 0
    np.testing.assert_allclose(t3[0].data, with_prior, rtol=1e-12)


def test_region_no_box_in_batch_gives_only_no_object_terms():
    x = predictions((2, 16, 2, 2), seed=3)
    filler = -np.ones((1, 1, 1, 8))
    _, bottoms, tops = run(spec("prior_images: 0"), [x, filler], top_diff=1.0)
    o = 1 / (1 + np.exp(-x.reshape(2, 2, 8, 2, 2)[:, :, 4]))
    np.testing.assert_allclose(tops[0].data, 0.5 * (o * o).sum() / 2, rtol=1e-12)
    grad = bottoms[0].diff.reshape(2, 2, 8, 2, 2)
    np.testing.assert_allclose(grad[:, :, 4], o * o * (1 - o) / 2, rtol=1e-12)
    assert np.all(grad[:, :, :4] == 0) and np.all(grad[:, :, 5:] == 0)


def test_region_is_stable_for_large_scores():
    x = predictions((2, 16, 3, 4), seed=4) * 300
    x[:, 2:4] = x[:, 10:12] = 0.5  # tw, th: exp of these stays finite
    _, bottoms, tops = run(spec("softmax: true prior_images: 0"), [x, LABELS], top_diff=1.0)
    assert np.isfinite(tops[0].data) and np.all(np.isfinite(bottoms[0].diff))


# -- gradient checks --------------------------------------------------------------------

@pytest.mark.parametrize("params", ["softmax: true prior_images: 1000000000",
                                    "thresh: 0.2 class_scale: 2 prior_images: 0"])
def test_region_gradient(params):
    x = predictions((2, 16, 3, 4), seed=5)
    result = check_layer(spec(params), [x, LABELS])
    assert result.passed, result.report()
    assert result.checked == x.size


def test_region_gradient_with_rescore_holds_darknets_targets_fixed(monkeypatch):
    """With rescore the objectness target is the predicted box's IoU, a
    constant of the pass for darknet: the loss whose exact gradient the
    layer returns is the one with the targets of the unperturbed pass, so
    the check freezes them."""
    x = predictions((2, 16, 3, 4), seed=6)
    frozen = []

    def first_targets(*args):
        if not frozen:
            frozen.append(layers.region_targets.region_targets(*args))
        return frozen[0]
    monkeypatch.setattr(layers.region, "region_targets", first_targets)
    result = check_layer(spec("softmax: true rescore: true object_scale: 5 prior_images: 0"),
                         [x, LABELS])
    assert result.passed, result.report()
    assert frozen[0][6][frozen[0][0] == 1].max() < 1  # the IoU targets really are used


# -- kernels ----------------------------------------------------------------------------

@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("params", ["softmax: true rescore: true prior_images: 1000",
                                    "thresh: 0.3 bias_match: true prior_images: 0"])
def test_region_host_run_kernel(dtype, params):
    x = predictions((2, 16, 3, 4), seed=7) * 2
    run_gpu_path_on_host(spec(params), [x, LABELS], dtype=dtype, propagate=[True, False],
                         rtol=1e-5 if dtype == np.float32 else 1e-12,
                         atol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.gpu
def test_region_gpu_parity():
    x = predictions((2, 5 * 11, 6, 8), seed=8)
    labels = label_rows([[0, 1, 0.1, 0.1, 0.4, 0.5], [0, 6, 0.5, 0.2, 0.9, 0.9],
                         [1, 3, 0.2, 0.3, 0.7, 0.6]])
    anchors = [0.6, 0.8, 1.2, 1.5, 2.0, 1.0, 1.0, 2.2, 3.0, 2.5]
    compare_devices(f'type: "Region" region_param {{ classes: 6 num: 5 anchors: {anchors} '
                    'softmax: true rescore: true bias_match: true thresh: 0.6 }',
                    [x, labels], propagate=[True, False])


# -- errors -----------------------------------------------------------------------------

def test_region_channel_count_must_match_num_anchors_and_classes():
    with pytest.raises(ShapeError, match=r"layer 'region'.*bottom 'pred' expected \(N, num \* "
                                         r"\(coords \+ 1 \+ classes\) = 2 \* \(4 \+ 1 \+ 3\) = 16, "
                                         r"H, W\).*found shape \(2, 15, 3, 4\)"):
        run(spec(), [np.zeros((2, 15, 3, 4)), LABELS])


def test_region_anchor_list_must_hold_two_values_per_anchor():
    text = 'name: "region" type: "Region" region_param { classes: 3 num: 2 anchors: [1, 1, 2] }'
    with pytest.raises(NetDefinitionError, match=r"layer 'region'.*anchors must hold 2 x num = 4 "
                                                 r"values.*found 3"):
        run(text, [np.zeros((2, 16, 3, 4)), LABELS])


@pytest.mark.parametrize("params,pattern", [
    ("coords: 5", r"only 4 \(x, y, w, h\) is supported, found 5"),
    ("classes: 0", "classes and num must be >= 1"),
    ("anchors: [1, -1, 1, 1]", "anchors must be positive"),
    ("object_scale: -1", r"object_scale must be >= 0, found -1"),
])
def test_region_bad_params(params, pattern):
    defaults = {"classes": "classes: 3", "num": "num: 2"}
    fixed = " ".join(v for k, v in defaults.items() if not params.startswith(k))
    text = f'name: "region" type: "Region" region_param {{ {fixed} {params} }}'
    with pytest.raises(NetDefinitionError, match=rf"layer 'region'.*{pattern}"):
        run(text, [np.zeros((2, 16, 3, 4)), LABELS])


@pytest.mark.parametrize("row,expected", [
    ([0, 4, 0, 0.1, 0.1, 0.5, 0.5, 0], r"a class in 1\.\.3"),
    ([0, 0, 0, 0.1, 0.1, 0.5, 0.5, 0], r"a class in 1\.\.3"),
    ([2, 1, 0, 0.1, 0.1, 0.5, 0.5, 0], r"an image index in \[0, 2\) or -1"),
    ([0, 1, 0, 0.5, 0.1, 0.5, 0.5, 0], "a finite box with xmax > xmin"),
])
@pytest.mark.parametrize("device_path", ["cpu", "gpu"])
def test_region_bad_labels_name_the_layer(row, expected, device_path):
    labels = np.array([[0, 1, 0, 0.2, 0.2, 0.4, 0.4, 0], row], dtype=np.float64).reshape(1, 1, 2, 8)
    layer = build_layer(spec())
    bottoms, tops = setup_layer(layer, [np.zeros((2, 16, 3, 4)), labels])
    forward = layer.forward_cpu if device_path == "cpu" else layer.forward_gpu
    with pytest.raises(DataError, match=rf"layer 'region'.*bottom 'label': expected {expected}.*found row"):
        forward(bottoms, tops)


def test_region_label_shape():
    with pytest.raises(ShapeError, match=r"layer 'region'.*bottom 'label' expected \(1, 1, G, 8\)"):
        run(spec(), [np.zeros((2, 16, 3, 4)), np.zeros((1, 1, 2, 7))])


def test_region_refuses_label_gradient():
    layer = build_layer(spec())
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    bottoms, tops = setup_layer(layer, [np.zeros((2, 16, 3, 4)), LABELS])
    layer.forward(bottoms, tops)
    with pytest.raises(NetDefinitionError, match="labels bottom 'label'.*propagate_down: false"):
        layer.backward(tops, [True, True], bottoms)
