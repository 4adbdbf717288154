"""Tests of detection.caffe_log: Caffe's text logs and ours as the tables
Caffe's parse_log.py writes."""
import csv
import json

import numpy as np
import pytest

from detection.caffe_log import (parse_caffe_log, read_log_tables, read_training_log,
                                 training_log, write_csv_tables)
from netdef.errors import DataError

#: A Caffe training log in glog's format, as `caffe train` prints it: the
#: net setup, a test at iteration 0, display every 100 iterations with two
#: train outputs, a test at 200, crossing midnight.
CAFFE_LOG = """\
I1231 23:59:50.000000 25210 caffe.cpp:218] Using GPUs 0
I1231 23:59:50.100000 25210 net.cpp:51] Initializing net from parameters:
I1231 23:59:55.000000 25210 solver.cpp:310] Solving LeNet
I1231 23:59:58.000000 25210 solver.cpp:337] Iteration 0, Testing net (#0)
I1231 23:59:58.500000 25210 solver.cpp:404]     Test net output #0: accuracy = 0.1
I1231 23:59:58.500100 25210 solver.cpp:404]     Test net output #1: loss = 2.30258 (* 1 = 2.30258 loss)
I1231 23:59:58.600000 25210 solver.cpp:228] Iteration 0, loss = 2.3
I1231 23:59:58.600100 25210 solver.cpp:244]     Train net output #0: accuracy = 0.125
I1231 23:59:58.600200 25210 solver.cpp:244]     Train net output #1: loss = 2.3 (* 1 = 2.3 loss)
I1231 23:59:58.600300 25210 sgd_solver.cpp:106] Iteration 0, lr = 0.01
I1231 23:59:59.600000 25210 solver.cpp:228] Iteration 100 (100 iter/s, 1s/100 iters), loss = 0.5
I1231 23:59:59.600100 25210 solver.cpp:244]     Train net output #0: accuracy = 0.75
I1231 23:59:59.600200 25210 solver.cpp:244]     Train net output #1: loss = 0.45 (* 1 = 0.45 loss)
I1231 23:59:59.600300 25210 sgd_solver.cpp:106] Iteration 100, lr = 0.00992565
W0101 00:00:00.100000 25210 data_layer.cpp:73] Restarting data prefetching from start.
I0101 00:00:00.600000 25210 solver.cpp:228] Iteration 200, loss = 0.25
I0101 00:00:00.600100 25210 solver.cpp:244]     Train net output #0: accuracy = 0.875
I0101 00:00:00.600200 25210 solver.cpp:244]     Train net output #1: loss = 2.5e-01 (* 1 = 0.25 loss)
I0101 00:00:00.600300 25210 sgd_solver.cpp:106] Iteration 200, lr = 0.00985258
I0101 00:00:01.000000 25210 solver.cpp:337] Iteration 200, Testing net (#0)
I0101 00:00:01.500000 25210 solver.cpp:404]     Test net output #0: accuracy = 0.9
I0101 00:00:01.500100 25210 solver.cpp:404]     Test net output #1: loss = 0.3 (* 1 = 0.3 loss)
"""


@pytest.fixture
def caffe_log(tmp_path):
    path = tmp_path / "caffe.log"
    path.write_text(CAFFE_LOG)
    return path


def test_caffe_log_tables_hold_parse_logs_columns_and_values(caffe_log):
    tables = parse_caffe_log(caffe_log)
    assert [list(r) for r in tables.train] == [
        ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]] * 3
    assert [(r["NumIters"], r["accuracy"], r["loss"]) for r in tables.train] == [
        (0, 0.125, 2.3), (100, 0.75, 0.45), (200, 0.875, 0.25)]
    # the lr printed after a row's outputs belongs to the next row; the
    # first row takes the second's (parse_log.py's rule)
    assert [r["LearningRate"] for r in tables.train] == [0.01, 0.01, 0.00992565]
    # seconds since "Solving", across midnight and New Year
    np.testing.assert_allclose([r["Seconds"] for r in tables.train], [3.6001, 4.6001, 5.6001])
    assert [(r["NumIters"], r["accuracy"], r["loss"]) for r in tables.test] == [
        (0, 0.1, 2.30258), (200, 0.9, 0.3)]
    assert tables.smoothed == [(0, 2.3), (100, 0.5), (200, 0.25)]


def test_csv_files_are_named_and_laid_out_as_parse_log_writes_them(caffe_log, tmp_path):
    train_path, test_path = write_csv_tables(parse_caffe_log(caffe_log), tmp_path / "out")
    assert train_path.endswith("out/caffe.log.train") and test_path.endswith("caffe.log.test")
    with open(train_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [float(v) for v in rows[2]] == pytest.approx([100, 4.6001, 0.01, 0.75, 0.45])
    with open(test_path, newline="") as handle:
        assert len(list(csv.reader(handle))) == 3


def test_a_second_test_net_at_the_same_iteration_is_its_own_row(tmp_path):
    path = tmp_path / "two_nets.log"
    path.write_text(
        "I0101 00:00:00.000000 1 solver.cpp:310] Solving net\n"
        "I0101 00:00:01.000000 1 solver.cpp:337] Iteration 0, Testing net (#0)\n"
        "I0101 00:00:01.000000 1 solver.cpp:404]     Test net output #0: loss = 1\n"
        "I0101 00:00:02.000000 1 solver.cpp:337] Iteration 0, Testing net (#1)\n"
        "I0101 00:00:02.000000 1 solver.cpp:404]     Test net output #0: loss = 2\n")
    assert [r["loss"] for r in parse_caffe_log(path).test] == [1, 2]


def test_our_json_log_gives_the_same_columns(tmp_path):
    path = tmp_path / "train_log.jsonl"
    records = [
        {"event": "info", "wall_time": 100.0, "message": "start"},
        {"event": "train", "wall_time": 101.0, "iter": 0, "loss": 2.0, "smoothed_loss": 2.0,
         "lr": 0.01, "outputs": {"loss_cls": 1.5, "loss_bbox": 0.5, "per_class": [1, 2]}},
        {"event": "test", "wall_time": 102.5, "iter": 0, "net": 0, "loss": 1.0,
         "outputs": {"accuracy": 0.5}},
        {"event": "train", "wall_time": 103.0, "iter": 20, "loss": 1.0, "smoothed_loss": 1.5,
         "lr": 0.01, "outputs": {"loss_cls": 0.75, "loss_bbox": 0.25}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tables = read_log_tables(path)
    assert tables.train[1] == {"NumIters": 20, "Seconds": 3.0, "LearningRate": 0.01,
                               "loss_cls": 0.75, "loss_bbox": 0.25, "loss": 1.0}
    assert tables.test == [{"NumIters": 0, "Seconds": 2.5, "LearningRate": 0.01,
                            "accuracy": 0.5}]
    log = read_training_log(path)
    np.testing.assert_array_equal(log.iters, [0, 20])


def test_caffe_log_draws_as_a_training_log(caffe_log):
    log = read_training_log(caffe_log)
    np.testing.assert_array_equal(log.iters, [0, 100, 200])
    assert list(log.losses) == ["loss"]
    np.testing.assert_array_equal(log.smoothed, [2.3, 0.5, 0.25])
    np.testing.assert_array_equal(log.lr, [0.01, 0.01, 0.00992565])


def test_not_a_training_log_is_a_named_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\nworld\n")
    with pytest.raises(DataError, match=r"notes.txt: no 'Iteration N' line"):
        read_log_tables(path)
    with pytest.raises(DataError, match=r"missing.log: cannot read"):
        read_log_tables(tmp_path / "missing.log")
    test_only = tmp_path / "test_only.log"
    test_only.write_text("I0101 00:00:01.000000 1 solver.cpp:404] Iteration 0, Testing net\n"
                         "I0101 00:00:01.000000 1 solver.cpp:404] Test net output #0: loss = 1\n")
    with pytest.raises(DataError, match=r"test_only.log: no training outputs to draw"):
        training_log(parse_caffe_log(test_only))


def test_unwritable_output_folder_is_a_named_error(caffe_log, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DataError, match=r"cannot write the CSV tables"):
        write_csv_tables(parse_caffe_log(caffe_log), blocker / "sub")
