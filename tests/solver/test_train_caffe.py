"""solver.train on a plain Caffe net (no RoIData layer): Caffe's own loop
with the solver file's test nets, as ``caffe train --solver`` runs it."""
import io
import json

import numpy as np
import pytest

from netdef import Net
from solver import train

#: A net fed by DummyData layers alone: Gaussian features plus a constant
#: (zero) signal, every label 0, so a working loop drives the loss down.
NET = """
name: "plain"
layer { name: "data" type: "DummyData" top: "noise" top: "label"
  dummy_data_param { shape { dim: 6 dim: 3 } shape { dim: 6 }
    data_filler { type: "gaussian" std: 0.1 } data_filler { type: "constant" value: 0 } } }
layer { name: "onehot" type: "DummyData" top: "signal"
  dummy_data_param { shape { dim: 6 dim: 3 } data_filler { type: "constant" value: 0 } } }
layer { name: "sum" type: "Eltwise" bottom: "noise" bottom: "signal" top: "features" }
layer { name: "ip" type: "InnerProduct" bottom: "features" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
  include { phase: TEST } }
"""

SOLVER = """net: "plain.prototxt"
base_lr: 0.5 lr_policy: "fixed" momentum: 0.9 max_iter: 30 display: 10
test_iter: 2 test_interval: 15 random_seed: 3
"""


@pytest.fixture
def plain(tmp_path):
    (tmp_path / "plain.prototxt").write_text(NET)
    (tmp_path / "plain_solver.prototxt").write_text(SOLVER)
    return tmp_path


def records(out):
    with open(out / "train_log.jsonl") as handle:
        return [json.loads(line) for line in handle]


def test_trains_with_the_solver_files_test_nets(plain):
    out = plain / "out"
    stream = io.StringIO()
    status = train.main([str(plain / "plain_solver.prototxt"), "--out", str(out)],
                        stream=stream)
    assert status == 0, stream.getvalue()
    log = records(out)
    tests = [r for r in log if r["event"] == "test"]
    assert [r["iter"] for r in tests] == [0, 15, 30]     # test_interval, and at the end
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert losses[-1] < losses[0]
    assert (out / "plain_iter_30.solverstate.npz").is_file()
    assert (out / "plain_iter_30.caffemodel").is_file()
    assert "trained as `caffe train` does" in stream.getvalue()


def test_net_file_uses_the_solver_beside_it_and_resumes(plain):
    out = plain / "out"
    assert train.main([str(plain / "plain.prototxt"), "--out", str(out), "--iters", "10",
                       "--eval-interval", "5"], stream=io.StringIO()) == 0
    assert [r["iter"] for r in records(out) if r["event"] == "test"] == [0, 5, 10]
    snapshot = out / "plain_iter_10.solverstate.npz"
    assert train.main([str(plain / "plain.prototxt"), "--out", str(out), "--iters", "12",
                       "--resume", str(snapshot)], stream=io.StringIO()) == 0
    assert (out / "plain_iter_12.caffemodel").is_file()


def test_plain_net_without_a_solver_file_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "alone.prototxt").write_text(NET)
    assert train.main([str(tmp_path / "alone.prototxt"), "--out", str(tmp_path / "o")],
                      stream=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert "alone.prototxt: the net has no detection data layer (RoIData)" in err
    assert "give --solver FILE or put one at" in err


def test_lean_plan_keeps_data_layer_tops(plain):
    """A constant DummyData top is written once, at setup: the lean memory
    plan must not give its storage away between passes."""
    net = Net(str(plain / "plain.prototxt"), "TRAIN", keep=[])
    for _ in range(3):
        net.forward()
        net.backward()
        np.testing.assert_array_equal(net.blobs["label"].data, 0)
