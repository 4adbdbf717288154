"""RegionOutput (YOLOv2's detections in DetectionOutput's rows) against a
plainly written decoder and greedy NMS, the host-run NMS kernel, GPU parity
and the errors."""
import math

import numpy as np
import pytest

from netdef import caffe_pb2
from netdef.errors import NetDefinitionError, ShapeError
from netdef.gradcheck import build_layer, setup_layer
from netdef.schema import parse_text
from tests.kernel_harness import compare_devices, requires_cxx, run_gpu_path_on_host

ANCHORS = [1.0, 1.5, 2.5, 1.0]


def sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def iou(a, b):
    """Overlap of normalized corner boxes, no "+1"."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = w * h if w > 0 and h > 0 else 0.0
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def ref_detections(x, classes, num, anchors, softmax, threshold, nms, keep_top_k=-1):
    """Rows [image, label, score, xmin, ymin, xmax, ymax], one box at a time."""
    n_img, _, height, width = x.shape
    rows = []
    for b in range(n_img):
        found = {label: [] for label in range(1, classes + 1)}
        for n in range(num):
            for j in range(height):
                for i in range(width):
                    v = [x[b, n * (5 + classes) + k, j, i] for k in range(5 + classes)]
                    cx, cy = (i + sig(v[0])) / width, (j + sig(v[1])) / height
                    w = math.exp(v[2]) * anchors[2 * n] / width
                    h = math.exp(v[3]) * anchors[2 * n + 1] / height
                    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                    if softmax:
                        exps = [math.exp(s) for s in v[5:]]
                        probs = [e / sum(exps) for e in exps]
                    else:
                        probs = [sig(s) for s in v[5:]]
                    for k, p in enumerate(probs):
                        if sig(v[4]) * p > threshold:
                            found[k + 1].append((sig(v[4]) * p, box))
        image_rows = []
        for label, cands in found.items():
            cands = sorted(cands, key=lambda c: -c[0])  # stable: cell order on ties
            kept = []
            for score, box in cands:
                if all(iou(box, k[1]) <= nms for k in kept):
                    kept.append((score, box))
            image_rows += [[b, label, s] + list(bx) for s, bx in kept]
        if keep_top_k > -1 and len(image_rows) > keep_top_k:
            best = sorted(range(len(image_rows)), key=lambda r: -image_rows[r][2])[:keep_top_k]
            image_rows = [image_rows[r] for r in sorted(best)]
        rows += image_rows
    return np.array(rows).reshape(-1, 7)


def spec(region="softmax: true", output="nms_param { nms_threshold: 0.45 } confidence_threshold: 0.05"):
    return (f'name: "out" type: "RegionOutput" bottom: "pred" top: "detection_out" '
            f'region_param {{ classes: 3 num: 2 anchors: {ANCHORS} {region} }} '
            f'detection_output_param {{ {output} }}')


def run(text, x, dtype=np.float64):
    layer = build_layer(text, phase="TEST", dtype=dtype)
    bottoms, tops = setup_layer(layer, [x])
    layer.forward(bottoms, tops)
    return layer, tops[0].data


@pytest.mark.parametrize("region,output,kw", [
    ("softmax: true", "nms_param { nms_threshold: 0.45 } confidence_threshold: 0.05",
     dict(softmax=True, threshold=0.05, nms=0.45)),
    ("", "nms_param { nms_threshold: 0.3 } confidence_threshold: 0.2",
     dict(softmax=False, threshold=0.2, nms=0.3)),
    ("softmax: true", "nms_param { nms_threshold: 0.5 } confidence_threshold: 0.01 keep_top_k: 7",
     dict(softmax=True, threshold=0.01, nms=0.5, keep_top_k=7)),
])
def test_region_output_matches_reference(region, output, kw):
    x = np.random.default_rng(0).standard_normal((2, 16, 3, 4)) * 1.5
    layer, rows = run(spec(region, output), x)
    expected = ref_detections(x, 3, 2, ANCHORS, **kw)
    assert rows.shape == (1, 1, len(expected), 7) and len(expected) > 5
    np.testing.assert_allclose(rows.reshape(-1, 7), expected, rtol=1e-12, atol=1e-15)
    assert layer.num_classes == 4


def test_region_output_rows_of_minus_one_when_nothing_passes():
    x = np.random.default_rng(1).standard_normal((2, 16, 2, 2))
    _, rows = run(spec(output="confidence_threshold: 0.999"), x)
    expected = -np.ones((2, 7))
    expected[:, 0] = [0, 1]
    np.testing.assert_array_equal(rows.reshape(-1, 7), expected)


@requires_cxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_region_output_host_run_nms_kernel(dtype):
    x = np.random.default_rng(2).standard_normal((2, 16, 4, 5)) * 2
    run_gpu_path_on_host(spec(), [x], dtype=dtype, phase="TEST", backward=False)


@pytest.mark.gpu
def test_region_output_gpu_parity():
    x = np.random.default_rng(3).standard_normal((2, 16, 6, 8)) * 2
    compare_devices(spec(), [x], phase="TEST", backward=False)


def test_region_output_channel_count():
    with pytest.raises(ShapeError, match=r"layer 'out'.*bottom 'pred' expected \(N, num \* "
                                         r"\(coords \+ 1 \+ classes\) = 2 \* \(4 \+ 1 \+ 3\) = 16"):
        run(spec(), np.zeros((1, 18, 2, 2)))


@pytest.mark.parametrize("output,pattern", [
    ("num_classes: 3", r"num_classes must be region_param.classes \+ 1 = 4, found 3"),
    ("background_label_id: -1", "background_label_id must be 0"),
])
def test_region_output_disagreeing_detection_params(output, pattern):
    with pytest.raises(NetDefinitionError, match=rf"layer 'out'.*{pattern}"):
        run(spec(output=output), np.zeros((1, 16, 2, 2)))


def test_region_output_leaves_its_prototxt_message_as_written():
    message = parse_text(spec(), caffe_pb2.LayerParameter())
    layer, _ = run(message, np.zeros((1, 16, 2, 2)))
    assert layer.param.detection_output_param.num_classes == 4
    assert not message.detection_output_param.HasField("num_classes")
