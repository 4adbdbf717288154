"""Tests of ``python -m solver.parse_log`` (Caffe's parse_log.py)."""
import csv

from solver import parse_log
from tests.detection.test_caffe_log import CAFFE_LOG


def test_writes_the_train_and_test_csv_files(tmp_path, capsys):
    log = tmp_path / "caffe.log"
    log.write_text(CAFFE_LOG)
    assert parse_log.main([str(log), str(tmp_path / "csv"), "--delimiter", ";",
                           "--verbose"]) == 0
    with open(tmp_path / "csv" / "caffe.log.test", newline="") as handle:
        rows = list(csv.reader(handle, delimiter=";"))
    assert rows[0] == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [r[0] for r in rows[1:]] == ["0", "200"]
    out = capsys.readouterr().out
    assert "caffe.log.train: 3 rows" in out and "caffe.log.test: 2 rows" in out


def test_bad_log_exits_2_with_the_file_named(tmp_path, capsys):
    log = tmp_path / "empty.log"
    log.write_text("")
    assert parse_log.main([str(log), str(tmp_path)]) == 2
    assert "empty.log: no 'Iteration N' line" in capsys.readouterr().err
