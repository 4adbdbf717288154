"""The tiny R-CNN: generator (phases, options, committed files), two training
iterations, the region detector against region_crops and plain decoding,
the window-file writer over a dataset, solver.rcnn_eval end to end."""
import io
import json

import numpy as np
import pytest

from detection.datasets import load_dataset
from detection.datasets.synthetic import ensure_dataset
from detection.proposals import Proposals
from detection.region_detector import RegionDetector, crop_settings
from detection.window_file import dataset_windows, jittered_boxes
from layers.boxes import bbox_transform_inv, clip_boxes
from layers.window_data import BBOX_STDS, read_window_file, region_crops, write_window_file
from netdef.errors import DataError, NetDefinitionError
from netdef.net import Net
from prototxt.generator_cli import HERE
from prototxt import rcnn
from solver import rcnn_eval


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = ensure_dataset(str(tmp_path_factory.mktemp("synthetic") / "set"), num_train=4,
                          num_test=2)
    return root, load_dataset(root, "trainval"), load_dataset(root, "test")


def net_file(tmp_path, windows, **options):
    path = tmp_path / "rcnn.prototxt"
    path.write_text(rcnn.net_text(window_file=str(windows), **options))
    return str(path)


def test_committed_files_are_what_the_generator_writes():
    for name, text in rcnn.committed_files().items():
        assert (HERE / name).read_text() == text, f"regenerate {name}"


def test_phases_and_options(tmp_path):
    both = rcnn.net_text(5, "BOTH", crop=16, context_pad=1, batch=8)
    assert "WindowData" in both and "Input" in both and "phase: TRAIN" in both
    test = rcnn.net_text(5, "TEST", crop=16)
    assert "WindowData" not in test and "include" not in test
    (tmp_path / "t.prototxt").write_text(test)
    net = Net(str(tmp_path / "t.prototxt"), "TEST")
    assert net.blobs["data"].shape == (32, 3, 16, 16)
    assert net.blobs["cls_prob"].shape == (32, 5) and net.blobs["bbox_pred"].shape == (32, 20)
    train = rcnn.net_text(5, "TRAIN")
    assert "Input" not in train and "SmoothL1Loss" in train and "cls_prob" not in train
    with pytest.raises(ValueError, match="--classes counts the background too"):
        rcnn.net_text(1)
    with pytest.raises(ValueError, match="multiple of 8"):
        rcnn.net_text(3, crop=20)
    assert rcnn.main(["--classes", "4", "--phase", "test"]) == 0


def test_two_training_iterations_have_finite_losses(tmp_path, tiny_set):
    _, trainval, _ = tiny_set
    windows = tmp_path / "w.txt"
    write_window_file(windows, trainval.records, jittered_boxes(trainval.records, 20))
    from solver.sgd import SGDSolver
    from netdef.schema import parse_text
    from netdef import caffe_pb2
    param = parse_text(f'net: "{net_file(tmp_path, windows, batch=8, crop=16)}" base_lr: 0.01 '
                       'lr_policy: "fixed" max_iter: 2 momentum: 0.9 display: 0 snapshot: 0',
                       caffe_pb2.SolverParameter())
    solver = SGDSolver(param, test_nets=[], seed=0, snapshot_prefix=str(tmp_path / "s"))
    solver.step(2)
    outputs = {k: float(np.asarray(v.data)) for k, v in solver.net.blobs.items()
               if k.startswith("loss")}
    assert set(outputs) == {"loss_cls", "loss_bbox"}
    assert all(np.isfinite(v) for v in outputs.values())


def _detector(tmp_path, windows, classes=7, **options):
    path = net_file(tmp_path, windows, crop=16, context_pad=1, batch=8, classes=classes)
    net = Net(path, "TEST", seed=0)
    return RegionDetector(net, crop_settings(path), **options), net, path


def test_detector_feeds_region_crops_and_decodes_per_class(tmp_path, tiny_set):
    _, trainval, _ = tiny_set
    windows = tmp_path / "w.txt"
    write_window_file(windows, trainval.records, jittered_boxes(trainval.records, 5))
    detector, net, path = _detector(tmp_path, windows, batch=4, max_proposals=6)
    weight, bias = net.params["bbox_pred"]
    weight.data[...] = 0
    bias.data[...] = np.tile([0.1, -0.2, 0.05, 0.0], 7)          # known deltas
    record = trainval.records[0]
    from layers.input_pipeline.preprocess import load_image_bgr
    image = load_image_bgr(record.path)
    boxes = np.concatenate([record.boxes, jittered_boxes([record], 8, seed=1)[0]])
    scores, decoded = detector.im_detect(image, boxes)
    assert scores.shape == (6, 7) and decoded.shape == (6, 28)
    np.testing.assert_allclose(scores.sum(1), 1, rtol=1e-5)
    deltas = np.tile(np.array([0.1, -0.2, 0.05, 0.0]) * BBOX_STDS, (6, 7))
    want = clip_boxes(bbox_transform_inv(boxes[:6].astype(np.float64), deltas), 192, 256)
    np.testing.assert_allclose(decoded, want, rtol=1e-5, atol=1e-3)
    # The last batch the net saw: proposals 4 and 5, warped as WindowData warps.
    s = crop_settings(path)
    crops = region_crops([image], [0, 0], boxes[4:6], 16, 1, False, None, s["mean"], s["scale"])
    np.testing.assert_allclose(np.asarray(net.blobs["data"].data), crops, rtol=1e-5, atol=1e-5)
    dets = detector.detect(image, boxes)
    assert len(dets) == 7 and all(d.shape[1] == 5 for d in dets)


def test_crop_settings_and_detector_errors(tmp_path):
    test_only = tmp_path / "t.prototxt"
    test_only.write_text(rcnn.net_text(3, "TEST", crop=16))
    with pytest.raises(NetDefinitionError, match="t.prototxt: no WindowData layer"):
        crop_settings(str(test_only))
    net = Net(str(test_only), "TEST")
    other = tmp_path / "o.prototxt"
    other.write_text('name: "x" layer { name: "data" type: "Input" top: "data" '
                     'input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }')
    with pytest.raises(NetDefinitionError, match="needs blobs data, cls_prob and bbox_pred; "
                                                 "found no 'cls_prob'"):
        RegionDetector(Net(str(other), "TEST"), {})
    detector = RegionDetector(net, dict(crop_size=16, context_pad=0, square=False, mean=None,
                                        scale=1.0))
    record = type("R", (), {"image_id": "a", "path": "a.png"})()
    with pytest.raises(DataError, match="no proposals for 1 of the 1 images of dataset 'd', "
                                        "e.g. 'a'"):
        detector.detect_dataset(type("D", (), {"records": [record], "name": "d",
                                               "classes": ()})())


def test_window_file_from_a_dataset_and_proposals(tmp_path, tiny_set):
    _, trainval, _ = tiny_set
    proposals = Proposals([r.image_id for r in trainval.records[::-1]],
                          [np.array([[0, 0, 9, 9], [1, 1, 30, 30]], np.float32)] * 4, None, {})
    boxes = dataset_windows(trainval, proposals, max_proposals=1)
    assert [len(b) for b in boxes] == [1] * 4
    count = write_window_file(tmp_path / "w.txt", trainval.records, boxes)
    parsed = read_window_file(str(tmp_path / "w.txt"))
    assert count == len(parsed.windows) == trainval.num_objects() + 4
    with pytest.raises(DataError, match="--proposals FILE"):
        dataset_windows(trainval)


def test_rcnn_eval_end_to_end(tmp_path, tiny_set):
    root, trainval, test = tiny_set
    windows = tmp_path / "w.txt"
    write_window_file(windows, trainval.records, jittered_boxes(trainval.records, 5))
    path = net_file(tmp_path, windows, crop=16, batch=8)
    Net(path, "TEST", seed=0).save(str(tmp_path / "w.caffemodel"))
    Proposals([r.image_id for r in test.records], jittered_boxes(test.records, 6), None,
              {}).save(str(tmp_path / "p.npz"))
    out = io.StringIO()
    status = rcnn_eval.main([path, "--weights", str(tmp_path / "w.caffemodel"), "--proposals",
                             str(tmp_path / "p.npz"), "--data", root, "--results",
                             str(tmp_path / "r.json")], stream=out)
    assert status == 0, out.getvalue()
    assert "mAP" in out.getvalue() and "s per image" in out.getvalue()
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["images"] == 2 and 0 <= result["map_07"] <= 1


def test_window_file_command(tmp_path, tiny_set, capsys):
    from detection import window_file
    root, trainval, _ = tiny_set
    out = tmp_path / "w.txt"
    assert window_file.main(["--data", root, "--jitter", "3", "--images", "2", "--out",
                             str(out)]) == 0
    parsed = read_window_file(str(out))
    assert len(parsed.images) == 2
    assert (parsed.windows[:, 2] == 1).sum() == sum(r.num_objects for r in trainval.records[:2])
    assert window_file.main(["--data", root, "--out", str(out)]) == 2
    assert "give proposals (--proposals FILE) or --jitter N" in capsys.readouterr().err
