"""solver.test and solver.detect on a single-stage net (detection_out), end to
end on the built-in synthetic dataset's generator: the hand-built tiny net of
tests/detection/test_single_stage.py with fixed outputs, its weights saved by
Net.save_weights, as a solver snapshot and as a .caffemodel.

The weights make every image give the same two detections (the InnerProducts'
weights are 0, their biases the outputs), hand-computed for the dataset's
256 x 192 images (width x height):
    prior 0 -> class 1 (circle), score 0.9, normalized [0.25, 0.25, 0.5, 0.75]
        -> pixels [64, 48, 127, 143]   (x2 = 0.5 * 256 - 1, y2 = 0.75 * 192 - 1)
    prior 1 -> class 3, score 0.4, normalized [0.5, 0.5, 1.0, 1.0]
        -> pixels [128, 96, 255, 191]
"""
import json
from pathlib import Path

import numpy as np
import pytest

from detection.datasets import load_dataset
from detection.datasets.synthetic import generate
from detection.detector import load_test_net
from netdef import Net
from solver import detect, test as solver_test, train
from solver.snapshot import SolverState
from tests.detection.test_single_stage import PRIORS, net_text, scores_for, set_outputs

TARGETS = np.array([[0.25, 0.25, 0.5, 0.75], [0.5, 0.5, 1.0, 1.0]])
FIRST = [64, 48, 127, 143]
SECOND = [128, 96, 255, 191]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "shapes", num_train=2, num_test=3, seed=5)


def _weights(folder, num_classes=7, background=0):
    """The net file and its weights in three forms: native, snapshot, caffemodel."""
    path = folder / f"single_{num_classes}_{background}.prototxt"
    path.write_text(net_text(num_classes=num_classes, background=background))
    net = Net(path, "TEST")
    labels = (1, 3) if background == 0 else (0, 2)
    set_outputs(net, TARGETS - PRIORS, scores_for(zip(labels, (0.9, 0.4)), num_classes))
    native = folder / "weights.npz"
    net.save_weights(native)
    snapshot = folder / "single_iter_0.solverstate.npz"
    arrays = {f"{name}/{i}": blob.data.copy() for name, blobs in net.params.items()
              for i, blob in enumerate(blobs)}
    names = ["__background__", "circle", "square", "triangle", "ellipse", "cross", "ring"]
    SolverState(iter=0, weights=arrays, history={}, metadata={"classes": names}).save(snapshot)
    caffemodel = folder / "single.caffemodel"
    net.save(caffemodel)
    return path, {"native": native, "snapshot": snapshot, "caffemodel": caffemodel}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _weights(tmp_path_factory.mktemp("model"))


def test_load_test_net_reads_the_annotated_data_transform(model):
    path, weights = model
    net, info = load_test_net(path, weights["snapshot"])
    assert info.input_transform.mean == (10.0, 20.0, 30.0)
    assert info.input_transform.scale == 0.5
    assert info.classes[1] == "circle"


@pytest.mark.parametrize("background", [0, -1])
def test_solver_test_end_to_end(data, tmp_path, capsys, background):
    """Every weights form gives the hand-computed detections on every test
    image; the metrics table and the dump come out as for two-stage nets."""
    if background == 0:
        path, weights = _weights(tmp_path)
    else:   # a sigmoid net: num_classes 6, labels 0 and 2 are classes 1 and 3
        path, weights = _weights(tmp_path, num_classes=6, background=-1)
    test_set = load_dataset(data, "test")
    metrics = []
    for kind, file in weights.items():
        dump, results = tmp_path / f"{kind}.json", tmp_path / f"{kind}.metrics.json"
        assert solver_test.main([str(path), "--weights", str(file), "--data", data, "--dump",
                                 str(dump), "--results", str(results), "--nms", "0.1"]) == 0
        out = capsys.readouterr().out
        assert "AP07" in out and "circle" in out
        assert "images warped to 24x32 minus mean [10, 20, 30] times 0.5" in out
        assert "(--nms ignored)" in out
        entries = json.loads(dump.read_text())
        assert len(entries) == 2 * len(test_set)
        by_class = {c: [e for e in entries if e["class"] == c] for c in ("circle", "triangle")}
        assert {e["image_id"] for e in by_class["circle"]} == {r.image_id for r in
                                                              test_set.records}
        for name, box, score in (("circle", FIRST, 0.9), ("triangle", SECOND, 0.4)):
            for entry in by_class[name]:
                np.testing.assert_allclose(entry["box"], box, atol=1e-3)
                assert entry["score"] == pytest.approx(score, abs=1e-6)
        metrics.append(json.loads(results.read_text()))
    assert all(m["map_07"] == metrics[0]["map_07"] for m in metrics)


def test_solver_test_class_count_mismatch(data, tmp_path, capsys):
    """A DetectionOutput for 4 classes + background against the dataset's 6."""
    path, weights = _weights(tmp_path, num_classes=5)
    assert solver_test.main([str(path), "--weights", str(weights["native"]), "--data",
                             data]) == 2
    err = capsys.readouterr().err
    assert "the net detects 5 classes, background included (detection_out's num_classes)" in err
    assert "dataset 'shapes_test' has 7 (__background__, circle, square" in err
    assert "a net for this dataset has num_classes 7 in layer 'detection_out'" in err


def test_a_net_that_finds_the_ground_truth_scores_ap_1(tmp_path, capsys):
    """One test image with at most 2 objects: weights that put the 2 priors
    on its ground-truth boxes (normalized by hand: x1 / W, y1 / H, (x2 + 1) /
    W, (y2 + 1) / H) give those boxes back exactly and AP 1 for each class
    with an object; a missing second object: the second prior scores 0."""
    data = generate(tmp_path / "one", num_train=1, num_test=1, seed=5, max_objects=2)
    record = load_dataset(data, "test").records[0]
    boxes, labels = record.boxes.astype(np.float64), record.labels
    targets = np.zeros((2, 4))
    targets[:len(boxes)] = (boxes + [0, 0, 1, 1]) / [256, 192, 256, 192]
    path = tmp_path / "net.prototxt"
    path.write_text(net_text())
    net = Net(path, "TEST")
    pairs = [(int(c), 0.9) for c in labels] + [(0, 0.0)] * (2 - len(labels))
    set_outputs(net, targets - PRIORS, scores_for(pairs, 7))
    net.save_weights(tmp_path / "w.npz")
    dump, results = tmp_path / "dump.json", tmp_path / "results.json"
    assert solver_test.main([str(path), "--weights", str(tmp_path / "w.npz"), "--data", data,
                             "--dump", str(dump), "--results", str(results)]) == 0
    capsys.readouterr()
    found = sorted(e["box"] for e in json.loads(dump.read_text()))
    np.testing.assert_allclose(found, sorted(boxes.tolist()), atol=1e-3)
    summary = json.loads(results.read_text())
    assert summary["map_07"] == pytest.approx(1.0) and summary["map_area"] == pytest.approx(1.0)


def test_solver_detect_end_to_end(data, model, tmp_path, capsys):
    """JSON with the hand-computed boxes above the threshold, and drawings."""
    path, weights = model
    images = [r.path for r in load_dataset(data, "test").records[:2]]
    out = tmp_path / "drawn"
    assert detect.main([str(path), "--weights", str(weights["caffemodel"]), *images,
                        "--out", str(out), "--threshold", "0.3",
                        "--classes", str(Path(data) / "classes.txt")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in result] == images
    for entry in result:
        assert (entry["width"], entry["height"]) == (256, 192)
        assert [(d["class"], d["score"]) for d in entry["detections"]] == [("circle", 0.9),
                                                                           ("triangle", 0.4)]
        np.testing.assert_allclose(entry["detections"][0]["box"], FIRST, atol=0.01)
        np.testing.assert_allclose(entry["detections"][1]["box"], SECOND, atol=0.01)
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(i).stem + ".png" for i in images)
    assert detect.main([str(path), "--weights", str(weights["native"]), images[0], "--no-draw",
                        "--threshold", "0.5"]) == 0
    captured = capsys.readouterr()
    only = json.loads(captured.out)[0]["detections"]
    assert [d["class"] for d in only] == ["class1"] and "using class1, class2" in captured.err


def test_solver_detect_names_against_the_net_classes(model, data, tmp_path, capsys):
    path, weights = model
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    image = load_dataset(data, "test").records[0].path
    assert detect.main([str(path), "--weights", str(weights["native"]), image, "--no-draw",
                        "--classes", str(names)]) == 2
    assert "3 class names (__background__, a, b) for a net that scores 7 classes" in \
        capsys.readouterr().err


def test_after_solver_train(data, tmp_path, capsys):
    """solver.train on the tiny net (TRAIN phase AnnotatedData + MultiBoxLoss)
    evaluates it in training through the same Detector; solver.test then
    gives the same mAP from the snapshot and from the .caffemodel, and the
    same detections from both."""
    path = tmp_path / "ssd_t.prototxt"
    path.write_text(net_text())
    out = tmp_path / "run"
    assert train.main([str(path), "--data", data, "--iters", "2", "--out", str(out),
                       "--seed", "1"]) == 0
    in_training = json.loads((out / "eval_iter_2.json").read_text())
    dumps = []
    for weights in ("ssd_t_iter_2.solverstate.npz", "ssd_t_iter_2.caffemodel"):
        dump, results = tmp_path / f"{weights}.json", tmp_path / f"{weights}.metrics.json"
        assert solver_test.main([str(path), "--weights", str(out / weights), "--data", data,
                                 "--dump", str(dump), "--results", str(results)]) == 0
        assert json.loads(results.read_text())["map_07"] == in_training["map_07"]
        dumps.append(json.loads(dump.read_text()))
    capsys.readouterr()
    assert dumps[0] and len(dumps[0]) == len(dumps[1])
    for a, b in zip(*dumps):
        assert (a["image_id"], a["class"]) == (b["image_id"], b["class"])
        np.testing.assert_allclose(a["box"] + [a["score"]], b["box"] + [b["score"]], atol=1e-4)
