"""Tests of the ``python -m solver.plot`` command over detection.plot."""
import numpy as np
import pytest
from PIL import Image

from solver import plot
from tests.detection.test_plot import synthetic_entries, write_log


def test_command_line(tmp_path, capsys):
    path = write_log(tmp_path / "run.jsonl", synthetic_entries(n=10))
    assert plot.main([str(path), "--size", "640x480"]) == 0
    with Image.open(tmp_path / "run.png") as image:
        assert image.size == (640, 480)
    assert "10 points" in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text("{\n")
    out = tmp_path / "never.png"
    assert plot.main([str(tmp_path / "bad.jsonl"), "--out", str(out)]) == 2
    assert "bad.jsonl:1: not valid JSON" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        plot.main([str(path), "--size", "big"])


def test_caffe_log_and_overlay_of_ours_with_caffes(tmp_path, capsys):
    from tests.detection.test_caffe_log import CAFFE_LOG
    caffe = tmp_path / "caffe.log"
    caffe.write_text(CAFFE_LOG)
    assert plot.main([str(caffe), "--size", "640x480"]) == 0
    assert (tmp_path / "caffe.png").exists()
    ours = write_log(tmp_path / "ours.jsonl", synthetic_entries(n=10))
    out = tmp_path / "vs.png"
    assert plot.main([str(ours), str(caffe), "--labels", "ours", "caffe",
                      "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (1000, 700)
        pixels = {tuple(p) for p in np.asarray(image).reshape(-1, 3)}
    # both logs' colours (the first two of the palette) are drawn
    assert {(31, 119, 180), (255, 127, 14)} <= pixels
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        plot.main([str(ours), str(caffe), "--labels", "just-one"])
