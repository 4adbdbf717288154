"""solver.test and solver.detect on what solver.train writes (the native
snapshot and the .caffemodel export), and the shared inference code."""
import json
from pathlib import Path

import numpy as np
import pytest

from netdef import Net
from netdef.device import gpu_available
from netdef.errors import NetDefinitionError
from prototxt import rfcn
from solver import detect, test as solver_test, train
from detection.datasets import load_dataset
from detection.datasets.synthetic import generate
from detection.detector import (BoxNormalization, Detector, bbox_export_transform,
                             bbox_param_layer, im_detect, load_test_net, postprocess,
                             read_class_names, resolve_test_net)
from layers.input_pipeline.preprocess import load_image_bgr

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "prototxt" / "rfcn_tiny.prototxt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_test=4, seed=4)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """3 iterations of the tiny net: (output folder, snapshot, caffemodel)."""
    out = tmp_path_factory.mktemp("run")
    assert train.main([TINY, "--data", data, "--iters", "3", "--out", str(out), "--no-eval",
                       "--seed", "2"]) == 0
    return out, out / "rfcn_tiny_iter_3.solverstate.npz", out / "rfcn_tiny_iter_3.caffemodel"


def _randomize_box_layer(net, rng):
    """Box weights large enough for the normalization to matter, and a
    bias with nonzero means in mind."""
    weight, bias = net.params["rfcn_bbox"]
    weight.data[...] = rng.normal(0, 0.05, weight.shape)
    bias.data[...] = rng.normal(0, 0.5, bias.shape)


def test_unnormalized_export_detects_as_the_normalized_weights(data, run):
    """The .caffemodel export (stds and means folded into rfcn_bbox) gives
    the detections of the snapshot with the deltas mapped back."""
    _, snapshot, caffemodel = run
    image = load_image_bgr(load_dataset(data, "test").records[0].path)
    from_snapshot, info_s = load_test_net(TINY, snapshot)
    from_export, info_e = load_test_net(TINY, caffemodel)
    assert info_s.bbox_normalization == BoxNormalization() and info_e.bbox_normalization is None
    assert (info_s.scale, info_s.max_size) == (info_e.scale, info_e.max_size) == (192, 256)
    assert info_e.classes == info_s.classes and len(info_s.classes) == 7
    scores_s, boxes_s = im_detect(from_snapshot, image, 192, 256, info_s.bbox_normalization)
    scores_e, boxes_e = im_detect(from_export, image, 192, 256, None)
    np.testing.assert_array_equal(scores_e, scores_s)
    np.testing.assert_allclose(boxes_e, boxes_s, rtol=0, atol=1e-3)
    # Now with box weights far from their initial values and nonzero means.
    rng = np.random.default_rng(0)
    _randomize_box_layer(from_snapshot, rng)
    norm = BoxNormalization(means=(0.01, -0.02, 0.03, 0.05), stds=(0.1, 0.1, 0.2, 0.2))
    layer, repeat = bbox_param_layer(from_snapshot, "bbox_pred")
    assert (layer, repeat) == ("rfcn_bbox", 9)
    transform = bbox_export_transform(layer, repeat, norm)
    exported = transform(layer, [b.data.copy() for b in from_snapshot.params[layer]])
    for blob, array in zip(from_export.params[layer], exported):
        blob.data[...] = array
    scores_s, boxes_s = im_detect(from_snapshot, image, 192, 256, norm)
    scores_e, boxes_e = im_detect(from_export, image, 192, 256, None)
    np.testing.assert_array_equal(scores_e, scores_s)
    np.testing.assert_allclose(boxes_e, boxes_s, rtol=1e-5, atol=2e-3)
    assert np.ptp(boxes_s) > 10  # the deltas moved the boxes
    dets_s, dets_e = postprocess(scores_s, boxes_s), postprocess(scores_e, boxes_e)
    for a, b in zip(dets_s, dets_e):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-3)


def test_solver_test_on_snapshot_and_caffemodel(data, run, tmp_path, capsys):
    _, snapshot, caffemodel = run
    reports = []
    for weights in (snapshot, caffemodel):
        dump = tmp_path / f"{weights.name}.json"
        results = tmp_path / f"{weights.name}.metrics.json"
        assert solver_test.main([TINY, "--weights", str(weights), "--data", data, "--dump",
                                 str(dump), "--results", str(results)]) == 0
        out = capsys.readouterr().out
        assert "AP07" in out and "AParea" in out and "circle" in out
        entries = json.loads(dump.read_text())
        assert all(set(e) == {"image_id", "class", "score", "box"} for e in entries)
        reports.append(json.loads(results.read_text()))
    assert reports[0]["map_07"] == pytest.approx(reports[1]["map_07"], abs=1e-6)
    assert reports[0]["map_area"] == pytest.approx(reports[1]["map_area"], abs=1e-6)


def test_solver_detect_writes_json_and_drawings(data, run, tmp_path, capsys):
    _, snapshot, caffemodel = run
    images = [r.path for r in load_dataset(data, "test").records[:2]]
    for weights in (snapshot, caffemodel):
        out = tmp_path / weights.suffix.strip(".")
        assert detect.main([TINY, "--weights", str(weights), *images, "--out", str(out),
                            "--threshold", "0.0"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert [r["image"] for r in result] == images
        for entry in result:
            assert (entry["width"], entry["height"]) == (256, 192)
            scores = [d["score"] for d in entry["detections"]]
            assert scores == sorted(scores, reverse=True) and len(scores) <= 100
            for d in entry["detections"]:
                assert d["class"] in ("circle", "square", "triangle", "ellipse", "cross", "ring")
                x1, y1, x2, y2 = d["box"]
                assert 0 <= x1 <= x2 <= 255 and 0 <= y1 <= y2 <= 191
        assert sorted(p.name for p in out.iterdir()) == sorted(Path(i).stem + ".png"
                                                               for i in images)
    json_file = tmp_path / "dets.json"
    assert detect.main([TINY, "--weights", str(caffemodel), images[0], "--no-draw", "--json",
                        str(json_file), "--classes", str(Path(data) / "classes.txt")]) == 0
    assert json.loads(json_file.read_text())[0]["image"] == images[0]


@pytest.mark.skipif(gpu_available(), reason="a GPU is visible")
def test_test_and_detect_refuse_a_missing_gpu(run, data, capsys):
    _, snapshot, _ = run
    assert solver_test.main([TINY, "--weights", str(snapshot), "--data", data,
                             "--gpu", "0"]) == 2
    assert detect.main([TINY, "--weights", str(snapshot), "x.jpg", "--gpu", "1"]) == 2
    err = capsys.readouterr().err
    assert "--gpu 0: no CUDA GPU" in err and "--gpu 1: no CUDA GPU" in err


def test_postprocess_nms_threshold_and_cap():
    """Per-class NMS at 0.3, scores above the threshold, at most N per image."""
    boxes = np.array([[0, 0, 9, 9], [1, 0, 10, 9], [50, 50, 59, 59], [0, 0, 9, 9]], np.float32)
    per_class = np.tile(boxes, (1, 3))                      # 3 classes incl. background
    scores = np.array([[0.1, 0.9, 0.0], [0.1, 0.8, 0.6], [0.1, 0.04, 0.7], [0.1, 0.0, 0.5]],
                      np.float32)
    dets = postprocess(scores, per_class)
    assert dets[0].shape == (0, 5)
    # class 1: box 1 overlaps box 0 (IoU 0.82 > 0.3) and goes; box 2 scores 0.04 <= 0.05.
    np.testing.assert_array_equal(dets[1], np.float32([[0, 0, 9, 9, 0.9]]))
    # class 2: box 2 (0.7), box 1 (0.6); box 3 overlaps box 1 (IoU 0.82) and goes.
    np.testing.assert_array_equal(dets[2][:, 4], np.float32([0.7, 0.6]))
    capped = postprocess(scores, per_class, max_per_image=2)
    assert sorted(np.concatenate([d[:, 4] for d in capped[1:]]).tolist()) == \
        pytest.approx([0.7, 0.9])


def test_im_detect_decodes_class_agnostic_boxes_for_every_class():
    """rois (R, 5) at the image scale, (R, 8) deltas: class c's box is the
    foreground box, divided by the scale and clipped."""
    net = Net(rfcn.rfcn_net("tiny", 4, 3, phase="TEST", test_input="layer"), "TEST")
    rng = np.random.default_rng(1)
    for name, blobs in net.params.items():
        for blob in blobs:
            blob.data[...] = rng.normal(0, 0.05, blob.shape)
    image = rng.uniform(0, 255, (96, 128, 3)).astype(np.float32)
    norm = BoxNormalization()
    scores, boxes = im_detect(net, image, 192, 256, norm)
    rois = net.blobs["rois"].data[:, 1:] / 2.0               # the image was scaled by 2
    deltas = net.blobs["bbox_pred"].data[:, 4:8] * np.float32([0.1, 0.1, 0.2, 0.2])
    w, h = rois[:, 2] - rois[:, 0] + 1, rois[:, 3] - rois[:, 1] + 1
    cx, cy = rois[:, 0] + 0.5 * w + deltas[:, 0] * w, rois[:, 1] + 0.5 * h + deltas[:, 1] * h
    pw, ph = np.exp(deltas[:, 2]) * w, np.exp(deltas[:, 3]) * h
    expected = np.stack([np.clip(cx - 0.5 * pw, 0, 127), np.clip(cy - 0.5 * ph, 0, 95),
                         np.clip(cx + 0.5 * pw, 0, 127), np.clip(cy + 0.5 * ph, 0, 95)], 1)
    assert scores.shape == (len(rois), 4) and boxes.shape == (len(rois), 16)
    for c in range(1, 4):
        np.testing.assert_allclose(boxes[:, 4 * c:4 * c + 4], expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(scores.sum(1), 1, rtol=1e-5)


def test_detect_dataset_matches_one_image_at_a_time(data, run):
    _, snapshot, _ = run
    net, info = load_test_net(TINY, snapshot)
    detector = Detector(net, scale=info.scale, max_size=info.max_size,
                        bbox_normalization=info.bbox_normalization)
    dataset = load_dataset(data, "test")
    all_boxes = detector.detect_dataset(dataset)
    for i, record in enumerate(dataset.records):
        one = detector.detect(load_image_bgr(record.path))
        for c in range(1, 7):
            np.testing.assert_array_equal(all_boxes[c][i], one[c])


def test_resolve_test_net_by_name_beside_the_train_file(tmp_path):
    train_file = tmp_path / "train_agnostic_ohem.prototxt"
    train_file.write_text(rfcn.rfcn_net(50, python_layers=True, ohem=True))
    with pytest.raises(NetDefinitionError, match="test_agnostic.prototxt"):
        resolve_test_net(train_file)
    (tmp_path / "test_agnostic.prototxt").write_text(
        rfcn.rfcn_net(50, python_layers=True, phase="TEST"))
    assert resolve_test_net(train_file) == (str(tmp_path / "test_agnostic.prototxt"), False)
    assert resolve_test_net(TINY) == (TINY, True)


def test_read_class_names(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# shapes\ncircle\n\nsquare\n")
    assert read_class_names(path) == ("__background__", "circle", "square")
