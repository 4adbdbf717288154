"""python -m solver.train on the tiny SSD (an AnnotatedData net) end to end
on a few generated images: the session feeds the dataset and takes the
class count from MultiBoxLoss, snapshots record the warp as test_scale,
the run evaluates, resumes exactly, and refuses what does not fit."""
import json
from pathlib import Path

import numpy as np
import pytest

from detection.datasets.synthetic import generate
from prototxt import ssd
from solver import train
from solver.snapshot import SolverState

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "prototxt" / "ssd_tiny.prototxt")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 trainval + 4 test images of the built-in generator."""
    return generate(tmp_path_factory.mktemp("data") / "shapes", num_train=8, num_test=4, seed=4)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """4 iterations of 8 images, a snapshot every 2, evaluated at the end."""
    out = tmp_path_factory.mktemp("run")
    solver = out / "solver.prototxt"
    solver.write_text(f'net: "{TINY}"\nbase_lr: 0.01\nlr_policy: "fixed"\nmomentum: 0.9\n'
                      f'weight_decay: 0.0005\nmax_iter: 4\ndisplay: 1\nsnapshot: 2\n'
                      f'random_seed: 5\n')
    assert train.main([str(solver), "--data", data, "--out", str(out / "out")]) == 0
    return out / "out"


def test_training_evaluates_and_records_the_warp(trained):
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    messages = " ".join(r.get("message", "") for r in log)
    assert "8 images per batch warped to 192 x 256" in messages
    assert "augmentation: expansion, 7 crop samplers, mirror" in messages
    result = json.loads((trained / "eval_iter_4.json").read_text())
    assert 0.0 <= result["map_07"] <= 1.0
    meta = SolverState.load(trained / "ssd_tiny_iter_4.solverstate.npz").metadata
    assert meta["test_scale"] == [192, 256] and meta["bbox_normalization"] is None
    assert len(meta["classes"]) == 7


def test_resume_continues_exactly(data, trained, tmp_path):
    """The data layer's order and its keyed augmentation draws resume with
    the snapshot: 2 + 2 iterations give the weights of 4 straight."""
    out = tmp_path / "resumed"
    solver = trained.parent / "solver.prototxt"
    assert train.main([str(solver), "--data", data, "--out", str(out), "--no-eval",
                       "--resume", str(trained / "ssd_tiny_iter_2.solverstate.npz")]) == 0
    straight = SolverState.load(trained / "ssd_tiny_iter_4.solverstate.npz")
    resumed = SolverState.load(out / "ssd_tiny_iter_4.solverstate.npz")
    for key, value in straight.weights.items():
        np.testing.assert_array_equal(resumed.weights[key], value, err_msg=key)


def test_class_count_mismatch_names_the_loss(data, tmp_path, capsys):
    net = tmp_path / "five.prototxt"
    net.write_text(ssd.generated_file("tiny", 5, "BOTH"))
    assert train.main([str(net), "--data", data, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "has 7 classes" in err and "built for 5 (the num_classes of mbox_loss)" in err
    assert "python -m prototxt.ssd --tiny --classes 7 --phase BOTH" in err


def test_proposals_are_refused(data, tmp_path, capsys):
    status = train.main([TINY, "--data", data, "--out", str(tmp_path / "out"),
                         "--proposals", str(tmp_path / "none.pkl"), "--no-eval"])
    assert status == 2
    assert "(AnnotatedData, a single-stage net) takes no proposals" in capsys.readouterr().err
