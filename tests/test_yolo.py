"""The tiny YOLOv2 generator (prototxt/yolo.py): counts from the options,
the committed files, the anchors' k-means, a net that learns a batch by
heart, and solver.train / solver.test / solver.detect on a small dataset."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from detection.datasets import DataWarning, load_dataset
from detection.datasets.synthetic import ensure_dataset
from netdef import Net
from netdef.device import CPU
from netdef.schema import read_net
from prototxt import yolo
from solver import detect as detect_cli
from solver import test as test_cli
from solver import train
from solver.session import net_class_count

HERE = Path(__file__).resolve().parents[1] / "prototxt"
TINY = str(HERE / "yolo_tiny.prototxt")


def layers(text):
    return {layer.name: layer for layer in read_net(text).layer}


@pytest.mark.parametrize("classes,outputs", [(7, 5 * (5 + 6)), (21, 125), (2, 30)])
def test_prediction_channels_and_region_params_follow_the_classes(classes, outputs):
    """21 classes (VOC) give YOLOv2's 125 = 5 x (5 + 20) outputs."""
    for phase, last in (("TRAIN", "region_loss"), ("TEST", "detection_out")):
        net = layers(yolo.yolo_net(classes, phase=phase))
        assert net["region_pred"].convolution_param.num_output == outputs
        p = net[last].region_param
        assert (p.classes, p.num, p.coords, p.softmax, p.rescore, p.bias_match) == \
            (classes - 1, 5, 4, True, True, True)
        assert list(p.anchors) == pytest.approx([v for a in yolo.TINY_ANCHORS for v in a])
        assert (p.thresh, p.object_scale) == (pytest.approx(0.6), 5)
    test = layers(yolo.yolo_net(classes, phase="TEST"))
    assert test["detection_out"].type == "RegionOutput"
    assert test["detection_out"].detection_output_param.nms_param.nms_threshold == pytest.approx(0.45)
    train_net = layers(yolo.yolo_net(classes))
    assert train_net["data"].type == "AnnotatedData"
    assert train_net["data"].transform_param.resize_param.height == 192
    assert train_net["region_loss"].type == "Region"


def test_bad_options():
    with pytest.raises(ValueError, match="classes counts the background"):
        yolo.yolo_net(1)
    with pytest.raises(ValueError, match="multiple of the stride 32"):
        yolo.yolo_net(7, image=(100, 128))
    with pytest.raises(SystemExit):
        yolo.main(["--phase", "DEV"])


def test_committed_files_are_the_generators_output():
    for name, text in yolo.committed_files().items():
        assert (HERE / name).read_text() == text, f"prototxt/{name}: run python -m " \
                                                  "prototxt.yolo --regenerate"
    assert yolo.TINY_SOLVER["net"] == "yolo_tiny.prototxt"


def test_both_phases_build_and_the_session_counts_seven_classes():
    train_net, test_net = Net(TINY, "TRAIN"), Net(TINY, "TEST")
    assert net_class_count(train_net, TINY) == (7, ["region_loss"])
    assert net_class_count(test_net, TINY) == (7, ["detection_out"])
    assert test_net.blobs["data"].shape == (1, 3, 192, 256)
    assert test_net.blobs["region_pred"].shape == (1, 55, 6, 8)


# -- anchors ---------------------------------------------------------------------------

def test_kmeans_finds_two_clusters_of_shapes():
    rng = np.random.default_rng(0)
    small = rng.normal([1.0, 1.0], 0.05, (40, 2))
    wide = rng.normal([3.0, 1.5], 0.05, (60, 2))
    anchors, score = yolo.kmeans_anchors(np.concatenate([wide, small]), 2)
    np.testing.assert_allclose(anchors, [small.mean(axis=0), wide.mean(axis=0)], rtol=1e-12)
    assert score > 0.9


def test_shape_iou_by_hand():
    # a 2 x 1 box and a 1 x 2 box on one centre share 1 x 1: IoU 1 / 3
    np.testing.assert_allclose(yolo.shape_iou(np.array([[2.0, 1.0]]), np.array([[1.0, 2.0], [2.0, 1.0]])),
                               [[1 / 3, 1.0]])


def test_tiny_anchors_are_the_built_in_datasets_clusters():
    anchors, score = yolo.fit_anchors()
    np.testing.assert_allclose(anchors, yolo.TINY_ANCHORS, atol=0.005)
    assert score > 0.75


# -- learning --------------------------------------------------------------------------

def test_the_net_learns_one_batch_by_heart(tmp_path):
    """Plain SGD on one batch of two 64 x 96 images (a 2 x 3 grid) with
    Input stand-ins: the Region loss falls to a small part of its start."""
    path = tmp_path / "yolo.prototxt"
    path.write_text(yolo.yolo_net(3, data="input", image=(64, 96), batch_size=2)
                    .replace("dim: 4\n", "dim: 2\n", 1))
    net = Net(str(path), "TRAIN", device=CPU, seed=0)
    assert net.blobs["label"].shape == (1, 1, 2, 8)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((2, 3, 64, 96))
    labels = np.array([[0, 1, 0, 0.1, 0.2, 0.4, 0.9, 0], [1, 2, 0, 0.5, 0.1, 0.9, 0.6, 0]])
    losses = []
    history = {name: [np.zeros_like(b.data) for b in blobs] for name, blobs in net.params.items()}
    for _ in range(60):
        for blobs in net.params.values():
            for blob in blobs:
                blob.diff[...] = 0  # a Net accumulates parameter gradients (Caffe's contract)
        losses.append(float(net.forward(data=data, label=labels.reshape(1, 1, 2, 8))["region_loss"]))
        net.backward()
        for name, blobs in net.params.items():
            for blob, velocity in zip(blobs, history[name]):
                velocity *= 0.9
                velocity -= 0.001 * blob.diff
                blob.data += velocity
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.05 * losses[0], losses[::10]


# -- the commands ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 8 training images: one batch of the tiny net's solver
    return ensure_dataset(str(tmp_path_factory.mktemp("synthetic") / "set"), num_train=8,
                          num_test=2)


def test_train_test_and_detect_run_the_tiny_net(data, tmp_path, capsys):
    out = tmp_path / "run"
    status = train.main([TINY, "--data", data, "--iters", "2", "--out", str(out), "--seed", "1"])
    printed, errors = capsys.readouterr()
    assert status == 0, printed + errors
    result = json.loads((out / "eval_iter_2.json").read_text())
    assert result["iter"] == 2 and 0 <= result["map_07"] <= 1
    model = str(next(out.glob("*_iter_2.caffemodel")))
    assert test_cli.main([TINY, "--weights", model, "--data", data]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        image = load_dataset(data, "test", cache=False).records[0].path
    assert detect_cli.main([TINY, "--weights", model, image, "--no-draw", "--data", data,
                            "--threshold", "0"]) == 0
    assert '"detections"' in capsys.readouterr().out
