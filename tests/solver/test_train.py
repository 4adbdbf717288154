"""python -m solver.train end to end on a tiny synthetic dataset: training,
snapshots, the .caffemodel export, resume, the evaluation, and the errors a
user meets (class count, no GPU, a file that is no net)."""
import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

from netdef import caffe_pb2
from netdef.device import gpu_available
from netdef.schema import read_net
from prototxt import rfcn
from solver import test as test_cli
from solver import train
from detection.datasets.synthetic import generate
from solver.snapshot import SolverState

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "prototxt" / "rfcn_tiny.prototxt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 trainval + 4 test images of the built-in generator."""
    return generate(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_test=4, seed=3)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """The tiny net trained 4 iterations (snapshot every 2) and evaluated
    (at iteration 2: the solver's test_interval, and at the end)."""
    out = tmp_path_factory.mktemp("run")
    solver = out / "solver.prototxt"
    solver.write_text(f'net: "{TINY}"\nbase_lr: 0.005\nlr_policy: "fixed"\nmomentum: 0.9\n'
                      f'weight_decay: 0.0005\nmax_iter: 4\ndisplay: 1\nsnapshot: 2\n'
                      f'random_seed: 5\ntest_interval: 2\ntest_iter: 10\n')
    status = train.main([str(solver), "--data", data, "--out", str(out / "out")])
    assert status == 0
    return out / "out"


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_training_writes_log_snapshots_export_and_evaluation(trained, capsys):
    names = sorted(p.name for p in trained.iterdir())
    for name in ("rfcn_tiny_iter_2.solverstate.npz", "rfcn_tiny_iter_2.caffemodel",
                 "rfcn_tiny_iter_4.solverstate.npz", "rfcn_tiny_iter_4.caffemodel",
                 "train_log.jsonl", "train_log.png", "eval_iter_2.json", "eval_iter_4.json"):
        assert name in names
    log = read_log(trained / "train_log.jsonl")
    events = [r["event"] for r in log]
    assert events.count("train") == 4 and events.count("eval") == 2 and "snapshot" in events
    assert all(np.isfinite(r["loss"]) for r in log if r["event"] == "train")
    messages = " ".join(r.get("message", "") for r in log)
    assert "random initialization" in messages
    result = json.loads((trained / "eval_iter_4.json").read_text())
    assert result["metric"] == "voc" and 0.0 <= result["map_07"] <= 1.0
    assert "AP07" in result["table"] and "AParea" in result["table"]
    state = SolverState.load(trained / "rfcn_tiny_iter_4.solverstate.npz")
    meta = state.metadata
    assert meta["classes"][0] == "__background__" and len(meta["classes"]) == 7
    assert meta["bbox_normalization"] == {"means": [0, 0, 0, 0], "stds": [0.1, 0.1, 0.2, 0.2]}
    assert meta["bbox_layer"] == ["rfcn_bbox", 9] and meta["test_scale"] == [192, 256]


def test_the_evaluation_is_that_of_the_saved_weights_on_the_test_split(trained, data, tmp_path,
                                                                       capsys):
    """The run's evaluation at iteration 4 is what solver.test gives for the
    .caffemodel exported at iteration 4 (the same detections per class, the
    same mAP), and its gt column counts the objects of the test split."""
    during = json.loads((trained / "eval_iter_4.json").read_text())
    results = tmp_path / "results.json"
    capsys.readouterr()
    assert test_cli.main([TINY, "--weights", str(trained / "rfcn_tiny_iter_4.caffemodel"),
                          "--data", data, "--results", str(results)]) == 0
    assert during["table"] in capsys.readouterr().out
    after = json.loads(results.read_text())
    assert during["map_07"] == pytest.approx(after["map_07"], abs=1e-12)
    assert during["map_area"] == pytest.approx(after["map_area"], abs=1e-12)
    # the other iteration's weights detect otherwise, so the table tells them apart
    assert json.loads((trained / "eval_iter_2.json").read_text())["table"] != during["table"]
    root = Path(data)
    objects = {}
    for name in (root / "ImageSets" / "Main" / "test.txt").read_text().split():
        for item in ElementTree.parse(root / "Annotations" / f"{name}.xml").iter("object"):
            if item.findtext("difficult") != "1":
                objects[item.findtext("name")] = objects.get(item.findtext("name"), 0) + 1
    rows = [line.split() for line in during["table"].splitlines()[3:-2]]
    assert {row[0]: int(row[1]) for row in rows if row[1] != "0"} == objects


def test_caffemodel_export_unnormalizes_the_box_layer_only(trained):
    from netdef.weights import read_layer_arrays
    state = SolverState.load(trained / "rfcn_tiny_iter_4.solverstate.npz")
    exported = read_layer_arrays(str(trained / "rfcn_tiny_iter_4.caffemodel"))
    stds = np.repeat(np.tile([0.1, 0.1, 0.2, 0.2], 2), 9)   # channel o: value (o // 9) % 4
    weight, bias = state.weights["rfcn_bbox/0"], state.weights["rfcn_bbox/1"]
    np.testing.assert_allclose(exported["rfcn_bbox"][0].reshape(weight.shape),
                               weight * stds[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(exported["rfcn_bbox"][1].reshape(bias.shape), bias * stds,
                               rtol=1e-6, atol=1e-12)
    for name in ("rfcn_cls", "conv1", "rpn_bbox_pred"):
        np.testing.assert_array_equal(exported[name][0].reshape(state.weights[f"{name}/0"].shape),
                                      state.weights[f"{name}/0"])


def test_resume_continues_exactly(data, trained, tmp_path):
    """2 iterations, then --resume from the iteration-2 snapshot to 4: the
    same weights as the run that went straight to 4."""
    out = tmp_path / "resumed"
    solver = trained.parent / "solver.prototxt"
    status = train.main([str(solver), "--data", data, "--out", str(out), "--no-eval",
                         "--resume", str(trained / "rfcn_tiny_iter_2.solverstate.npz")])
    assert status == 0
    straight = SolverState.load(trained / "rfcn_tiny_iter_4.solverstate.npz")
    resumed = SolverState.load(out / "rfcn_tiny_iter_4.solverstate.npz")
    assert resumed.iter == 4
    assert set(straight.weights) == set(resumed.weights)
    for key, value in straight.weights.items():
        np.testing.assert_array_equal(resumed.weights[key], value, err_msg=key)
    records = read_log(out / "train_log.jsonl")
    assert [r["iter"] for r in records if r["event"] == "train"] == [2, 3]


def test_class_count_mismatch_says_how_to_regenerate(data, tmp_path, capsys):
    net = tmp_path / "five.prototxt"
    net.write_text(rfcn.generated_file("tiny", 5, 3, phase="BOTH"))
    status = train.main([str(net), "--data", data, "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err
    assert "has 7 classes" in err and "built for 5" in err
    assert "python -m prototxt.rfcn --depth tiny --classes 7 --k 3 --phase BOTH" in err


@pytest.mark.skipif(gpu_available(), reason="a GPU is visible: --gpu 0 is valid here")
def test_gpu_without_a_gpu_is_a_clear_error(data, tmp_path, capsys):
    status = train.main([TINY, "--data", data, "--gpu", "0", "--out", str(tmp_path)])
    assert status == 2
    assert "--gpu 0: no CUDA GPU is visible to CuPy" in capsys.readouterr().err


def test_help_and_bad_files(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0
    assert "--resume" in capsys.readouterr().out
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { nmae: 'x' }\n")
    assert train.main([str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "bad.prototxt:1" in capsys.readouterr().err


def test_classify_file_and_the_schedule_dispatch_point(tmp_path):
    net, solver, schedule = (tmp_path / n for n in ("n.prototxt", "s.prototxt", "x.prototxt"))
    net.write_text('name: "n"\nlayer { name: "a" type: "Input" top: "a" }\n')
    solver.write_text('net: "n.prototxt"\nbase_lr: 0.1\n')
    schedule.write_text('name: "staged"\nstage {\n  name: "rpn1"\n}\n')
    assert [train.classify_file(p) for p in (net, solver, schedule)] == \
        ["net", "solver", "schedule"]


def test_reference_config_for_py_rfcn_python_layers():
    """py-R-FCN's training files keep these settings in its YAML config:
    they are added where param_str leaves them out, and only there."""
    plain = read_net(rfcn.rfcn_net(50, python_layers=True))
    applied = train.apply_reference_config(plain)
    layers = {lp.name: lp for lp in plain.layer}
    assert layers["proposal"].python_param.param_str == (
        "'feat_stride': 16, 'train_pre_nms_top_n': 6000, 'train_post_nms_top_n': 300")
    assert layers["roi-data"].python_param.param_str == (
        "'num_classes': 2, 'batch_size': 128, 'bg_thresh_lo': 0.1")
    assert ("proposal", "train_pre_nms_top_n", 6000) in applied
    ohem = read_net(rfcn.rfcn_net(50, ohem=True, python_layers=True))
    ohem.layer[[lp.name for lp in ohem.layer].index("roi-data")].python_param.param_str = \
        "{'num_classes': 2, 'bg_thresh_lo': 0.05}"
    train.apply_reference_config(ohem)
    target = {lp.name: lp for lp in ohem.layer}["roi-data"].python_param.param_str
    assert target == "{'num_classes': 2, 'bg_thresh_lo': 0.05, 'batch_size': -1}"
    native = read_net(rfcn.rfcn_net(50))
    before = native.SerializeToString()
    assert train.apply_reference_config(native) == [] and native.SerializeToString() == before


def test_py_rfcn_python_layer_files_train_unchanged_beside_their_test_file(data, tmp_path):
    """py-R-FCN's layout: train_agnostic.prototxt with Python layers and its
    test_agnostic.prototxt beside it (ResNet-50 here, at a small scale for
    speed: the data layer's param_str carries the scale)."""
    folder = tmp_path / "rfcn_end2end"
    folder.mkdir()
    text = rfcn.rfcn_net(50, 7, python_layers=True).replace(
        "'num_classes': 7", "'num_classes': 7, 'scales': (224,), 'max_size': 320")
    (folder / "train_agnostic.prototxt").write_text(text)
    (folder / "test_agnostic.prototxt").write_text(
        rfcn.rfcn_net(50, 7, python_layers=True, phase="TEST"))
    out = tmp_path / "out"
    status = train.main([str(folder / "train_agnostic.prototxt"), "--data", data, "--iters",
                         "1", "--out", str(out)])
    assert status == 0
    messages = " ".join(r.get("message", "") for r in read_log(out / "train_log.jsonl"))
    assert "reference R-FCN settings" in messages and "iter_size 2" in messages
    assert "proposal.train_post_nms_top_n=300" in messages
    assert "eval" in [r["event"] for r in read_log(out / "train_log.jsonl")]
    assert (out / "train_agnostic_iter_1.caffemodel").is_file()


def test_committed_nets_start_with_the_roidata_layer_in_train():
    for name in ("rfcn_resnet101.prototxt", "rfcn_resnet101_ohem.prototxt",
                 "rfcn_tiny.prototxt"):
        net = read_net(str(ROOT / "prototxt" / name))
        first = net.layer[0]
        assert first.type == "RoIData" and [r.phase for r in first.include] == [caffe_pb2.TRAIN]
        assert net.layer[1].type == "Input" and \
            [r.phase for r in net.layer[1].include] == [caffe_pb2.TEST]


def test_pad_classes_lets_a_larger_net_train_on_the_builtin_classes(data):
    from detection.datasets import load_dataset
    dataset = load_dataset(data, "trainval")
    padded = train.pad_classes(dataset, 10)
    assert padded.classes[:7] == dataset.classes
    assert padded.classes[7:] == ("unused7", "unused8", "unused9")
    assert padded.records == dataset.records and padded.num_classes == 10
